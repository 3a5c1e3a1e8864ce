using System.Management.Automation;
using Dare.Engine;
using Dare.Engine.Merge;
using Dare.Engine.Partitions;
using Dare.Engine.Recipes;
using Dare.Engine.Safetensors;

namespace Dare.PowerShell;

/// <summary>
/// Export-Safetensors: runs a task-vector plan and writes base + λ·δ (or δ alone) as a Hugging Face model folder.
/// The write is atomic: a failure or Ctrl+C leaves no partial output, and an existing model is replaced only with -Force.
/// Inputs are collected and exported at the end, so several vectors for one folder fail before anything is written.
/// </summary>
[Cmdlet(VerbsData.Export, "Safetensors", SupportsShouldProcess = true, DefaultParameterSetName = PathSet, HelpUri = DareHelp.Uri + "#the-pipeline")]
[OutputType(typeof(ExportResult))]
public sealed class ExportSafetensorsCommand : OutputFolderCmdlet
{
    /// <summary>The task vector to write, usually the merged vector from Merge-Ties or Merge-Linear.</summary>
    [Parameter(Mandatory = true, ValueFromPipeline = true)]
    public TaskVector InputObject { get; set; } = null!;

    /// <summary>Output dtype of floating-point tensors: bfloat16, float16 or float32 (default: each base tensor's dtype).</summary>
    [Parameter]
    [ValidateSet("bfloat16", "float16", "float32")]
    public string? DType { get; set; }

    /// <summary>Largest shard, e.g. 5GB (default), 500MB, or a byte count.</summary>
    [Parameter]
    public string MaxShardSize { get; set; } = "5GB";

    /// <summary>Write only the (merged, λ-scaled) delta, not base + delta.</summary>
    [Parameter]
    public SwitchParameter DeltaOnly { get; set; }

    /// <summary>Replace an existing output folder that holds only a model export (only once the new model is complete).</summary>
    [Parameter]
    public SwitchParameter Force { get; set; }

    /// <summary>Write each piped task vector to its own folder, &lt;Path&gt;/&lt;vector name&gt;, instead of refusing several inputs for one folder.</summary>
    [Parameter]
    public SwitchParameter FolderPerInput { get; set; }

    /// <summary>Write NaN/Inf values (in an input, or from overflow in the merge or the output dtype) with a warning per tensor instead of failing.</summary>
    [Parameter]
    public SwitchParameter AllowNonFinite { get; set; }

    /// <summary>
    /// Write only partition i of N ("i/N", i from 0 to N-1): whole shards of the same shard plan, into a staging folder
    /// beside the output; the last partition to finish (or Complete-DareExport) verifies them all and publishes the model.
    /// </summary>
    [Parameter]
    public string? Partition { get; set; }

    /// <summary>
    /// Where the merge math runs: cpu (the default: the SIMD kernels), cuda or cuda:N (the TorchSharp tensor backend on
    /// that GPU; needs a module built with ./build.ps1 Build -Cuda), or torch-cpu (the tensor backend on the CPU, to test
    /// and measure it). The merged bytes are the same on every device.
    /// </summary>
    [Parameter]
    [ValidatePattern(ComputeDevice.Pattern)]
    [ArgumentCompleter(typeof(DeviceCompleter))]
    public string? Device { get; set; }

    private readonly List<TaskVector> _inputs = new();

    // Every input is known before anything is written: several vectors piped into one folder would overwrite each other.
    protected override void ProcessRecord() => _inputs.Add(InputObject);

    protected override void EndProcessing() => Run(() =>
    {
        if (_inputs.Count == 0) return;
        var destination = ResolveOutputFolder();
        var targets = Targets(destination);
        var dtype = DType is null ? (SafetensorsDType?)null : SafetensorsDTypes.ParseOutputDType(DType);
        var shardSize = ByteSize.Parse(MaxShardSize);
        var partition = Partition is null ? (ExportPartition?)null : ExportPartition.Parse(Partition);
        var device = Device is null ? null : ComputeDevice.Parse(Device);
        if (partition is not null && targets.Count > 1)
        {
            throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument,
                $"-Partition writes a part of one output, but {targets.Count} task vectors were piped in (-FolderPerInput); export them one at a time.") { FilePath = destination };
        }
        // Refused before any work: a destination whose replacement could lose what Dare did not write.
        var currentLocation = SessionState.Path.CurrentFileSystemLocation.ProviderPath;
        foreach (var (vector, folder) in targets) OutputFolder.Check(folder, Force, OutputFolder.InputPathsOf(vector), currentLocation);
        foreach (var (vector, folder) in targets)
        {
            Cancellation.ThrowIfCancellationRequested();
            if (MergeMistakes.OfExport(vector) is { } single) WriteGuidance(new[] { single.Message });
            Export(vector, folder, dtype, shardSize, currentLocation, partition, device);
        }
    });

    /// <summary>Where each input goes; refuses several inputs for one folder before anything is written.</summary>
    private List<(TaskVector Vector, string Folder)> Targets(string destination)
    {
        if (FolderPerInput)
        {
            var clash = _inputs.GroupBy(v => v.Name, StringComparer.OrdinalIgnoreCase).FirstOrDefault(g => g.Count() > 1);
            if (clash is not null)
            {
                throw new DareException(DareErrorId.SeveralInputsOneFolder, DareErrorKind.InvalidArgument,
                    $"-FolderPerInput would write {clash.Count()} task vectors named '{clash.Key}' to the same folder '{System.IO.Path.Combine(destination, clash.Key)}'.") { FilePath = destination };
            }
            return _inputs.Select(v => (v, System.IO.Path.Combine(destination, SafeFolderName(v.Name, destination)))).ToList();
        }
        if (_inputs.Count == 1) return new() { (_inputs[0], destination) };
        var names = string.Join(", ", _inputs.Select(v => $"'{v.Name}'"));
        if (_inputs.Any(v => !v.IsMerged))
        {
            throw new DareException(DareErrorId.MergeStepMissing, DareErrorKind.InvalidArgument,
                $"{_inputs.Count} task vectors ({names}) were piped into one Export-Safetensors for '{destination}'; each would replace the one before. " +
                "Merge them first (… | Merge-Ties | Export-Safetensors, or Merge-Linear), or pass -FolderPerInput to write each to its own folder under it. Nothing was written.")
            { FilePath = destination };
        }
        throw new DareException(DareErrorId.SeveralInputsOneFolder, DareErrorKind.InvalidArgument,
            $"{_inputs.Count} merged task vectors ({names}) were piped into one Export-Safetensors for '{destination}'; each would replace the one before. " +
            "Export them one at a time, or pass -FolderPerInput to write each to <Path>/<name>. Nothing was written.") { FilePath = destination };
    }

    /// <summary>A vector name used as one folder name: no separators, no '.' or '..'.</summary>
    private static string SafeFolderName(string name, string destination)
    {
        if (string.IsNullOrWhiteSpace(name) || name is "." or ".." || name.IndexOfAny(new[] { '/', '\\', '\0' }) >= 0)
        {
            throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument,
                $"-FolderPerInput needs a plain folder name for every task vector, but one is named '{name}' (writing under '{destination}').") { FilePath = destination };
        }
        return name;
    }

    private void Export(TaskVector vector, string destination, SafetensorsDType? dtype, long shardSize, string currentLocation, ExportPartition? partition, ComputeDevice? device)
    {
        var bytes = vector.Base.Tensors.Where(t => !DeltaOnly || t.DType.IsMergeable())
            .Sum(t => t.DType.IsMergeable() && dtype is { } d ? t.ElementCount * d.ElementSize() : t.ByteLength);
        var shards = Math.Max(1, (int)Math.Ceiling(bytes / (double)shardSize));
        var what = $"Write {(partition is { } p ? $"partition {p} of " : "")}{(DeltaOnly ? "the delta of" : "the merged model")} '{vector.Name}' ({vector.TensorCount} tensors, ~{ByteSize.Format(bytes)}, ~{shards} shard(s))";
        if (!ShouldProcess(destination, what)) return;

        var options = new ExportOptions
        {
            Destination = destination,
            OutputDType = dtype,
            MaxShardSize = shardSize,
            DeltaOnly = DeltaOnly,
            Force = Force,
            CurrentLocation = currentLocation,
            AllowNonFinite = AllowNonFinite,
            RecipeYaml = RecipeWriter.ToYaml(vector, dtype, shardSize == CheckpointWriteOptions.DefaultMaxShardSize ? null : shardSize, DeltaOnly, device),
            Partition = partition,
            Device = device,
        };
        var observer = new CmdletObserver(this);
        ExportResult result;
        try
        {
            result = new MergeExecutor(observer, Cancellation).Export(vector, options);
        }
        finally
        {
            if (!Cancellation.IsCancellationRequested) observer.Complete();
        }
        WriteVerbose($"Wrote {(result.Partition is { } part ? $"partition {part}: " : "")}'{result.Path}': {result.TensorCount} tensors, {ByteSize.Format(result.BytesWritten)} in {result.Elapsed.TotalSeconds:0.0} s ({result.MegabytesPerSecond:0} MB/s read).");
        WriteObject(result);
    }
}
