using System.Management.Automation;
using Dare.Engine.Adapters;
using Dare.Engine.Merge;
using Dare.Engine.Safetensors;

namespace Dare.PowerShell;

/// <summary>
/// Get-TaskVector: a lazy task vector per fine-tuned model (fine-tuned − base) or per PEFT LoRA adapter (s·B·A per
/// module). Nothing is computed yet. Each path parameter has a literal twin (-LiteralBase, -LiteralFineTuned,
/// -LiteralAdapter) that takes paths exactly as typed; the parameter sets are the combinations. A folder holding
/// adapter_config.json given as -FineTuned is read as an adapter too, so folders of both kinds can be piped in.
/// </summary>
[Cmdlet(VerbsCommon.Get, "TaskVector", DefaultParameterSetName = PathSet, HelpUri = DareHelp.Uri + "#the-pipeline")]
[OutputType(typeof(TaskVector))]
public sealed class GetTaskVectorCommand : DareCmdlet
{
    private const string PathSet = "Path";
    private const string LiteralBaseSet = "LiteralBase";
    private const string LiteralFineTunedSet = "LiteralFineTuned";
    private const string LiteralSet = "LiteralPath";
    private const string AdapterSet = "Adapter";
    private const string LiteralAdapterSet = "LiteralAdapter";
    private const string LiteralBaseAdapterSet = "LiteralBaseAdapter";
    private const string LiteralBaseLiteralAdapterSet = "LiteralBaseLiteralAdapter";

    private Checkpoint _base = null!;

    /// <summary>The base model: a folder, a .safetensors file, or a Checkpoint from Import-Safetensors.</summary>
    [Parameter(Mandatory = true, Position = 0, ParameterSetName = PathSet)]
    [Parameter(Mandatory = true, Position = 0, ParameterSetName = LiteralFineTunedSet)]
    [Parameter(Mandatory = true, Position = 0, ParameterSetName = AdapterSet)]
    [Parameter(Mandatory = true, Position = 0, ParameterSetName = LiteralAdapterSet)]
    [SupportsWildcards]
    public object Base { get; set; } = null!;

    /// <summary>The base model's path, used exactly as typed.</summary>
    [Parameter(Mandatory = true, ParameterSetName = LiteralBaseSet)]
    [Parameter(Mandatory = true, ParameterSetName = LiteralSet)]
    [Parameter(Mandatory = true, ParameterSetName = LiteralBaseAdapterSet)]
    [Parameter(Mandatory = true, ParameterSetName = LiteralBaseLiteralAdapterSet)]
    public string LiteralBase { get; set; } = null!;

    /// <summary>
    /// Fine-tuned models of the same base (paths, wildcards allowed; folders from Get-ChildItem; Checkpoints; the
    /// results of Export-Safetensors). Objects from the pipeline bind here whatever their type. A PEFT adapter folder
    /// here is read as an adapter (as -Adapter does). A model that is the base itself, or one given twice (the same
    /// files by any path), is taken as given, with a warning.
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
    /// PEFT LoRA adapter folders trained on the base (adapter_config.json + adapter_model.safetensors; wildcards
    /// allowed; folders from Get-ChildItem; the results of Export-LoraAdapter). Each becomes δ = s·B·A per module.
    /// </summary>
    [Parameter(Mandatory = true, ParameterSetName = AdapterSet)]
    [Parameter(Mandatory = true, ParameterSetName = LiteralBaseAdapterSet)]
    [SupportsWildcards]
    public object[] Adapter { get; set; } = Array.Empty<object>();

    /// <summary>Adapter folders' paths, used exactly as typed.</summary>
    [Parameter(Mandatory = true, ParameterSetName = LiteralAdapterSet)]
    [Parameter(Mandatory = true, ParameterSetName = LiteralBaseLiteralAdapterSet)]
    public string[] LiteralAdapter { get; set; } = Array.Empty<string>();

    private bool BaseIsLiteral => ParameterSetName is LiteralBaseSet or LiteralSet or LiteralBaseAdapterSet or LiteralBaseLiteralAdapterSet;
    /// <summary>
    /// The output vocabulary (mergekit's tokenizer_source): Base (default; the base's tokens, a model's rows for
    /// tokens the base lacks are dropped), Union (the base's tokens plus every model's added tokens; the vectors are
    /// made together at the end of the pipeline), or the path of the base or one of the fine-tuned models.
    /// </summary>
    [Parameter]
    [ArgumentCompleter(typeof(TokenizerSourceCompleter))]
    public string TokenizerSource { get; set; } = "Base";

    /// <summary>Models and adapters kept, in order, until every model is known (a vocabulary other than the base's).</summary>
    private readonly List<object> _collected = new();
    private bool Collects => !string.Equals(TokenizerSource, "Base", StringComparison.OrdinalIgnoreCase);

    private bool FineTunedIsLiteral => ParameterSetName is LiteralFineTunedSet or LiteralSet;
    private bool IsAdapterSet => ParameterSetName is AdapterSet or LiteralAdapterSet or LiteralBaseAdapterSet or LiteralBaseLiteralAdapterSet;
    private bool AdapterIsLiteral => ParameterSetName is LiteralAdapterSet or LiteralBaseLiteralAdapterSet;

    protected override void BeginProcessing() => Run(() =>
        _base = CheckpointResolver.Resolve(SessionState, BaseIsLiteral ? LiteralBase : Base, allowMany: false, literal: BaseIsLiteral)[0]);

    protected override void ProcessRecord()
    {
        if (IsAdapterSet)
        {
            foreach (var item in AdapterIsLiteral ? LiteralAdapter : Adapter)
            {
                IReadOnlyList<string> folders = Array.Empty<string>();
                RunForItem(() => folders = CheckpointResolver.ResolvePaths(SessionState, item, AdapterIsLiteral), item);
                foreach (var folder in folders)
                {
                    RunForItem(() =>
                    {
                        var adapter = LoraAdapter.Open(folder);
                        if (Collects) _collected.Add(adapter);
                        else WriteObject(TaskVector.FromAdapter(_base, adapter));
                    }, folder);
                }
            }
            return;
        }
        foreach (var item in FineTunedIsLiteral ? LiteralFineTuned : FineTuned)
        {
            IReadOnlyList<object> sources = Array.Empty<object>();
            RunForItem(() => sources = CheckpointResolver.ResolveModelsOrAdapters(SessionState, item, FineTunedIsLiteral), item);
            foreach (var source in sources)
            {
                if (Collects) _collected.Add(source);
                else RunForItem(() =>
                {
                    if (source is LoraAdapter adapter) WriteObject(TaskVector.FromAdapter(_base, adapter));
                    else Emit(TaskVector.FromModels(_base, (Checkpoint)source));
                }, source);
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
            // Adapters are against the base, re-rowed like the models' (only the base takes part when there are no models).
            var models = _collected.OfType<Checkpoint>().ToList();
            var vectors = TaskVector.FromModels(_base, models.Count > 0 ? models : new[] { _base }, choice);
            var next = 0;
            foreach (var source in _collected)
            {
                if (source is LoraAdapter adapter) RunForItem(() => WriteObject(TaskVector.FromAdapter(_base, adapter, vectors[0])), adapter.Path);
                else Emit(vectors[next++]);
            }
        });
    }

    /// <summary>The fine-tuned models emitted so far, to name a model given twice.</summary>
    private readonly List<Checkpoint> _emitted = new();

    private void Emit(TaskVector vector)
    {
        // Both are allowed (a zero task vector; a model weighted twice) but are usually a mistyped path.
        var model = vector.FineTuned!;
        if (model.HasSameFilesAs(_base))
        {
            WriteWarning($"'{model.Path}' is the base model itself (the same files): its task vector is zero and adds nothing to the merge.");
        }
        else if (_emitted.FirstOrDefault(model.HasSameFilesAs) is { } earlier)
        {
            WriteWarning($"'{model.Path}' is given more than once (the same files as '{earlier.Path}'): each becomes a task vector of its own, so the model weighs that much more in the merge.");
        }
        _emitted.Add(model);
        if (vector.MissingTensors.Count > 0)
        {
            WriteWarning($"'{model.Path}' lacks {vector.MissingTensors.Count} tensor(s) of the base; they contribute a zero delta: " +
                string.Join(", ", vector.MissingTensors.Take(10)) + (vector.MissingTensors.Count > 10 ? ", ..." : ""));
        }
        WriteObject(vector);
    }
}
