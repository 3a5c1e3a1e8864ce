using System.Management.Automation;
using Dare.Engine;
using Dare.Engine.Merge;
using Dare.Engine.Recipes;
using Dare.Engine.Safetensors;

namespace Dare.PowerShell;

/// <summary>
/// Export-Safetensors: runs a task-vector plan and writes base + λ·δ (or δ alone) as a Hugging Face model folder.
/// The write is atomic: a failure or Ctrl+C leaves no partial output, and an existing model is replaced only with -Force.
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

    protected override void ProcessRecord() => Run(() =>
    {
        var destination = ResolveOutputFolder();
        var dtype = DType is null ? (SafetensorsDType?)null : SafetensorsDTypes.ParseOutputDType(DType);
        var shardSize = ByteSize.Parse(MaxShardSize);
        var vector = InputObject;
        var bytes = vector.Base.Tensors.Where(t => !DeltaOnly || t.DType.IsMergeable())
            .Sum(t => t.DType.IsMergeable() && dtype is { } d ? t.ElementCount * d.ElementSize() : t.ByteLength);
        var shards = Math.Max(1, (int)Math.Ceiling(bytes / (double)shardSize));
        // Refused before any work: a destination whose replacement could lose what Dare did not write.
        var currentLocation = SessionState.Path.CurrentFileSystemLocation.ProviderPath;
        OutputFolder.Check(destination, Force, OutputFolder.InputPathsOf(vector.Sources.Prepend(vector.Base)), currentLocation);
        var what = $"Write {(DeltaOnly ? "the delta of" : "the merged model")} '{vector.Name}' ({vector.TensorCount} tensors, ~{ByteSize.Format(bytes)}, ~{shards} shard(s))";
        if (!ShouldProcess(destination, what)) return;

        var options = new ExportOptions
        {
            Destination = destination,
            OutputDType = dtype,
            MaxShardSize = shardSize,
            DeltaOnly = DeltaOnly,
            Force = Force,
            CurrentLocation = currentLocation,
            RecipeYaml = RecipeWriter.ToYaml(vector, dtype, shardSize == CheckpointWriteOptions.DefaultMaxShardSize ? null : shardSize, DeltaOnly),
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
        WriteVerbose($"Wrote '{result.Path}': {result.TensorCount} tensors, {ByteSize.Format(result.BytesWritten)} in {result.Elapsed.TotalSeconds:0.0} s ({result.MegabytesPerSecond:0} MB/s read).");
        WriteObject(result);
    });
}
