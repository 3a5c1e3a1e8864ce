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

    /// <summary>
    /// The output vocabulary (mergekit's tokenizer_source): Base (default; the base's tokens, a model's rows for
    /// tokens the base lacks are dropped), Union (the base's tokens plus every model's added tokens; the vectors are
    /// made together at the end of the pipeline), or the path of the base or one of the fine-tuned models.
    /// </summary>
    [Parameter]
    [ArgumentCompleter(typeof(TokenizerSourceCompleter))]
    public string TokenizerSource { get; set; } = "Base";

    private readonly List<Checkpoint> _collected = new();
    private bool Collects => !string.Equals(TokenizerSource, "Base", StringComparison.OrdinalIgnoreCase);

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
            foreach (var fineTuned in models)
            {
                if (Collects) _collected.Add(fineTuned);
                else RunForItem(() => Emit(TaskVector.FromModels(_base, fineTuned)), fineTuned);
            }
        }
    }

    /// <summary>A union (or another model's) vocabulary needs every model: the vectors are made together here.</summary>
    protected override void EndProcessing()
    {
        if (!Collects || _collected.Count == 0) return;
        Run(() =>
        {
            var choice = string.Equals(TokenizerSource, "Union", StringComparison.OrdinalIgnoreCase)
                ? TokenizerChoice.Union
                : new TokenizerChoice(TokenizerSourceKind.Model, SessionState.Path.GetUnresolvedProviderPathFromPSPath(TokenizerSource));
            foreach (var vector in TaskVector.FromModels(_base, _collected, choice)) Emit(vector);
        });
    }

    private void Emit(TaskVector vector)
    {
        if (vector.MissingTensors.Count > 0)
        {
            WriteWarning($"'{vector.FineTuned!.Path}' lacks {vector.MissingTensors.Count} tensor(s) of the base; they contribute a zero delta: " +
                string.Join(", ", vector.MissingTensors.Take(10)) + (vector.MissingTensors.Count > 10 ? ", ..." : ""));
        }
        WriteObject(vector);
    }
}
