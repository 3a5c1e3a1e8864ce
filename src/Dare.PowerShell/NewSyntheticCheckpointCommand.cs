using System.Management.Automation;
using Dare.Engine.Safetensors;

namespace Dare.PowerShell;

/// <summary>
/// New-SyntheticCheckpoint: writes a small Llama-shaped model folder with random weights, or a "fine-tune" of a
/// given base (base + seeded random delta). For demos, tests and benchmarks.
/// </summary>
[Cmdlet(VerbsCommon.New, "SyntheticCheckpoint", SupportsShouldProcess = true, DefaultParameterSetName = PathSet, HelpUri = DareHelp.Uri + "#building")]
[OutputType(typeof(Checkpoint))]
public sealed class NewSyntheticCheckpointCommand : OutputFolderCmdlet
{
    /// <summary>Make a fine-tune of this base: base + N(0, DeltaScale²) per entry.</summary>
    [Parameter]
    public object? BaseModel { get; set; }

    [Parameter, ValidateRange(1, 1 << 16)] public int HiddenSize { get; set; } = 256;
    [Parameter, ValidateRange(0, 1024)] public int Layers { get; set; } = 2;
    [Parameter, ValidateRange(1, 1 << 24)] public int VocabSize { get; set; } = 1024;
    [Parameter, ValidateRange(0, 1 << 20)] public int IntermediateSize { get; set; }
    [Parameter] public long Seed { get; set; } = 1;
    [Parameter, ValidateRange(0.0, double.MaxValue)] public double DeltaScale { get; set; } = 0.002;

    [Parameter]
    [ValidateSet("bfloat16", "float16", "float32")]
    public string DType { get; set; } = "bfloat16";

    [Parameter] public string MaxShardSize { get; set; } = "5GB";
    [Parameter] public SwitchParameter Force { get; set; }

    protected override void EndProcessing() => Run(() =>
    {
        var destination = ResolveOutputFolder();
        var baseModel = BaseModel is null ? null : CheckpointResolver.Resolve(SessionState, BaseModel, allowMany: false)[0];
        var shape = baseModel is { } b
            ? new LlamaShape((int)(b.ConfigInt("hidden_size") ?? HiddenSize), (int)(b.ConfigInt("num_hidden_layers") ?? Layers),
                (int)(b.ConfigInt("vocab_size") ?? VocabSize), (int?)b.ConfigInt("intermediate_size"))
            : new LlamaShape(HiddenSize, Layers, VocabSize, IntermediateSize > 0 ? IntermediateSize : null);
        var currentLocation = SessionState.Path.CurrentFileSystemLocation.ProviderPath;
        var inputs = baseModel is null ? Array.Empty<string>() : OutputFolder.InputPathsOf(new[] { baseModel });
        OutputFolder.Check(destination, Force, inputs, currentLocation);
        if (!ShouldProcess(destination, $"Write a synthetic {shape.ParameterCount:N0}-parameter Llama-shaped model")) return;
        var result = SyntheticModel.Write(destination, shape, Seed, baseModel, DeltaScale, SafetensorsDTypes.ParseOutputDType(DType), ByteSize.Parse(MaxShardSize), Force,
            new SyntheticWriteOptions { CurrentLocation = currentLocation, Cancellation = Cancellation, Warning = WriteWarning });
        WriteObject(Checkpoint.Open(result.Path));
    });
}
