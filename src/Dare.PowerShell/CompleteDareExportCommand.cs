using System.Management.Automation;
using Dare.Engine;
using Dare.Engine.Merge;
using Dare.Engine.Partitions;
using Dare.Engine.Safetensors;

namespace Dare.PowerShell;

/// <summary>
/// Complete-DareExport: publishes a partitioned export (Export-Safetensors or Invoke-DareMerge with -Partition) once
/// every partition has finished: verifies each partition's shards (sizes, SHA-256, plan fingerprint), writes the index,
/// side files and recipe, and moves the model into place atomically, as a single-process export does. The last
/// partition to finish does this by itself; run this cmdlet when that failed (e.g. the output existed without -Force)
/// or as the dependent job of a scheduler. Nothing staged and a model already there: a warning, nothing to do.
/// </summary>
[Cmdlet(VerbsLifecycle.Complete, "DareExport", SupportsShouldProcess = true, DefaultParameterSetName = PathSet, HelpUri = DareHelp.Uri + "#merging-on-a-cluster")]
[OutputType(typeof(ExportResult))]
public sealed class CompleteDareExportCommand : OutputFolderCmdlet
{
    /// <summary>Replace an existing non-empty output folder (only once the new model is complete).</summary>
    [Parameter]
    public SwitchParameter Force { get; set; }

    protected override void EndProcessing() => Run(() =>
    {
        var destination = ResolveOutputFolder();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var staging = PartitionStaging.Open(destination);
        if (staging is null)
        {
            if (Directory.Exists(destination) && Directory.EnumerateFileSystemEntries(destination).Any())
            {
                WriteWarning($"No partitions are staged for '{destination}' and it already holds a model (the last partition to finish published it?). Nothing to do.");
                return;
            }
            throw new DareException(DareErrorId.PartitionIncomplete, DareErrorKind.ObjectNotFound,
                $"No partitions are staged for '{destination}' (no '{PartitionStaging.FolderFor(destination)}'). Run Export-Safetensors or Invoke-DareMerge with -Partition i/N first.")
            { FilePath = destination };
        }
        if (!ShouldProcess(destination, $"Publish the {staging.Count} partition(s) staged in '{staging.Folder}' ({staging.Plan.Tensors.Count} tensors, {staging.Plan.Shards.Count} shard(s))")) return;
        var result = staging.Complete(new CheckpointWriteOptions
        {
            Force = Force, CurrentLocation = SessionState.Path.CurrentFileSystemLocation.ProviderPath, Warning = WriteWarning,
        });
        WriteVerbose($"Verified {staging.Count} partition(s) and published '{result.Path}': {result.TensorCount} tensors, {ByteSize.Format(result.TensorBytes)}.");
        WriteObject(new ExportResult(result.Path, result.Files, result.TensorCount, result.TensorBytes, 0, clock.Elapsed));
    });
}
