using System.Management.Automation;
using Dare.Engine.Merge;
using Dare.Engine.Safetensors;

namespace Dare.PowerShell;

/// <summary>
/// Get-TaskVector: a lazy task vector (fine-tuned − base) per fine-tuned model. Nothing is computed yet.
/// Each of the two model parameters has a literal twin (-LiteralBase, -LiteralFineTuned) that takes paths exactly as
/// typed, as -LiteralPath does for -Path; the four parameter sets are the four combinations.
/// </summary>
[Cmdlet(VerbsCommon.Get, "TaskVector", DefaultParameterSetName = PathSet, HelpUri = DareHelp.Uri + "#the-pipeline")]
[OutputType(typeof(TaskVector))]
public sealed class GetTaskVectorCommand : DareCmdlet
{
    private const string PathSet = "Path";
    private const string LiteralBaseSet = "LiteralBase";
    private const string LiteralFineTunedSet = "LiteralFineTuned";
    private const string LiteralSet = "LiteralPath";

    private Checkpoint _base = null!;

    /// <summary>The base model: a folder, a .safetensors file, or a Checkpoint from Import-Safetensors.</summary>
    [Parameter(Mandatory = true, Position = 0, ParameterSetName = PathSet)]
    [Parameter(Mandatory = true, Position = 0, ParameterSetName = LiteralFineTunedSet)]
    [SupportsWildcards]
    public object Base { get; set; } = null!;

    /// <summary>The base model's path, used exactly as typed.</summary>
    [Parameter(Mandatory = true, ParameterSetName = LiteralBaseSet)]
    [Parameter(Mandatory = true, ParameterSetName = LiteralSet)]
    public string LiteralBase { get; set; } = null!;

    /// <summary>
    /// Fine-tuned models of the same base (paths, wildcards allowed; folders from Get-ChildItem; Checkpoints; the
    /// results of Export-Safetensors). Objects from the pipeline bind here whatever their type.
    /// </summary>
    [Parameter(Mandatory = true, Position = 1, ValueFromPipeline = true, ParameterSetName = PathSet)]
    [Parameter(Mandatory = true, Position = 1, ValueFromPipeline = true, ParameterSetName = LiteralBaseSet)]
    [SupportsWildcards]
    public object[] FineTuned { get; set; } = Array.Empty<object>();

    /// <summary>Fine-tuned models' paths, used exactly as typed.</summary>
    [Parameter(Mandatory = true, ParameterSetName = LiteralFineTunedSet)]
    [Parameter(Mandatory = true, ParameterSetName = LiteralSet)]
    public string[] LiteralFineTuned { get; set; } = Array.Empty<string>();

    private bool BaseIsLiteral => ParameterSetName is LiteralBaseSet or LiteralSet;
    private bool FineTunedIsLiteral => ParameterSetName is LiteralFineTunedSet or LiteralSet;

    protected override void BeginProcessing() => Run(() =>
        _base = CheckpointResolver.Resolve(SessionState, BaseIsLiteral ? LiteralBase : Base, allowMany: false, literal: BaseIsLiteral)[0]);

    protected override void ProcessRecord()
    {
        foreach (var item in FineTunedIsLiteral ? LiteralFineTuned : FineTuned)
        {
            IReadOnlyList<Checkpoint> models = Array.Empty<Checkpoint>();
            RunForItem(() => models = CheckpointResolver.Resolve(SessionState, item, allowMany: true, literal: FineTunedIsLiteral), item);
            foreach (var fineTuned in models) RunForItem(() => Emit(fineTuned), fineTuned);
        }
    }

    private void Emit(Checkpoint fineTuned)
    {
        var vector = TaskVector.FromModels(_base, fineTuned);
        if (vector.MissingTensors.Count > 0)
        {
            WriteWarning($"'{fineTuned.Path}' lacks {vector.MissingTensors.Count} tensor(s) of the base; they contribute a zero delta: " +
                string.Join(", ", vector.MissingTensors.Take(10)) + (vector.MissingTensors.Count > 10 ? ", ..." : ""));
        }
        WriteObject(vector);
    }
}
