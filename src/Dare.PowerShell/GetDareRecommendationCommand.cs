using System.Management.Automation;
using Dare.Engine.Adapters;
using Dare.Engine.Merge;
using Dare.Engine.Safetensors;

namespace Dare.PowerShell;

/// <summary>
/// Get-DareRecommendation: measures task vectors (sampled rows and a few matrices' singular values, bounded memory) and applies the DARE
/// guidance: method, drop rate for layers and for embeddings/head, rescale and TIES keep ratio, each with its reason
/// and the measurements behind it. A reducer: inputs are collected, the recommendation comes at the end.
/// </summary>
[Cmdlet(VerbsCommon.Get, "DareRecommendation", DefaultParameterSetName = TaskVectorSet, HelpUri = DareHelp.Uri + "#guidance")]
[OutputType(typeof(DareRecommendation))]
public sealed class GetDareRecommendationCommand : DareCmdlet
{
    private const string TaskVectorSet = "TaskVector";
    private const string ModelSet = "Model";
    private const string AdapterSet = "Adapter";
    private const string LiteralModelSet = "LiteralModel";
    private const string LiteralAdapterSet = "LiteralAdapter";

    private readonly List<TaskVector> _vectors = new();

    /// <summary>Task vectors from Get-TaskVector (any drop step they carry is ignored: the raw deltas are measured).</summary>
    [Parameter(Mandatory = true, ValueFromPipeline = true, ParameterSetName = TaskVectorSet)]
    public TaskVector[] InputObject { get; set; } = Array.Empty<TaskVector>();

    /// <summary>The base model: a folder, a .safetensors file, a Hugging Face id in the local cache, or a Checkpoint.</summary>
    [Parameter(Mandatory = true, Position = 0, ParameterSetName = ModelSet)]
    [Parameter(Mandatory = true, Position = 0, ParameterSetName = AdapterSet)]
    [SupportsWildcards]
    public object Base { get; set; } = null!;

    /// <summary>The base model's path, used exactly as typed.</summary>
    [Parameter(Mandatory = true, ParameterSetName = LiteralModelSet)]
    [Parameter(Mandatory = true, ParameterSetName = LiteralAdapterSet)]
    public string LiteralBase { get; set; } = null!;

    /// <summary>Fine-tuned models of the base (as Get-TaskVector takes them; adapter folders are read as adapters).</summary>
    [Parameter(Mandatory = true, Position = 1, ParameterSetName = ModelSet)]
    [SupportsWildcards]
    public object[] FineTuned { get; set; } = Array.Empty<object>();

    /// <summary>Fine-tuned models' paths, used exactly as typed.</summary>
    [Parameter(Mandatory = true, ParameterSetName = LiteralModelSet)]
    public string[] LiteralFineTuned { get; set; } = Array.Empty<string>();

    /// <summary>PEFT LoRA adapter folders trained on the base.</summary>
    [Parameter(Mandatory = true, ParameterSetName = AdapterSet)]
    [SupportsWildcards]
    public object[] Adapter { get; set; } = Array.Empty<object>();

    /// <summary>Adapter folders' paths, used exactly as typed.</summary>
    [Parameter(Mandatory = true, ParameterSetName = LiteralAdapterSet)]
    public string[] LiteralAdapter { get; set; } = Array.Empty<string>();

    /// <summary>Fine-tuning steps, when known; without it both of the guidance's step ranges are shown.</summary>
    [Parameter]
    [ValidateRange(1, int.MaxValue)]
    public int TrainingSteps { get; set; }

    /// <summary>Rows sampled from each tensor (evenly spaced) for natural sparsity, cosine and sign conflicts.</summary>
    [Parameter]
    [ValidateRange(1, 1_000_000)]
    public int SampleRows { get; set; } = new GuidanceOptions().SampleRows;

    /// <summary>Matrices per full fine-tune whose effective rank is computed (singular values of one whole matrix each) to tell LoRA-like deltas; 0 skips it.</summary>
    [Parameter]
    [ValidateRange(0, 1000)]
    public int RankSamples { get; set; } = new GuidanceOptions().RankSamples;

    protected override void BeginProcessing()
    {
        if (ParameterSetName == TaskVectorSet) return;
        var literal = ParameterSetName is LiteralModelSet or LiteralAdapterSet;
        Run(() =>
        {
            var @base = CheckpointResolver.Resolve(SessionState, literal ? LiteralBase : Base, allowMany: false, literal)[0];
            if (ParameterSetName is AdapterSet or LiteralAdapterSet)
            {
                foreach (var item in literal ? LiteralAdapter : Adapter)
                {
                    foreach (var folder in CheckpointResolver.ResolvePaths(SessionState, item, literal)) _vectors.Add(TaskVector.FromAdapter(@base, LoraAdapter.Open(folder)));
                }
                return;
            }
            foreach (var item in literal ? LiteralFineTuned : FineTuned)
            {
                foreach (var source in CheckpointResolver.ResolveModelsOrAdapters(SessionState, item, literal))
                {
                    _vectors.Add(source is LoraAdapter adapter ? TaskVector.FromAdapter(@base, adapter) : TaskVector.FromModels(@base, (Checkpoint)source));
                }
            }
        });
    }

    protected override void ProcessRecord() => _vectors.AddRange(InputObject);

    protected override void EndProcessing() => Run(() =>
    {
        var options = new GuidanceOptions
        {
            TrainingSteps = MyInvocation.BoundParameters.ContainsKey(nameof(TrainingSteps)) ? TrainingSteps : null,
            SampleRows = SampleRows,
            RankSamples = RankSamples,
        };
        var measurements = DareAdvisor.Measure(_vectors, options, new MergeExecutor(null, Cancellation), Cancellation);
        WriteVerbose($"Measured {measurements.TaskVectors.Count} task vector(s) on {measurements.SampledElements:N0} sampled entries each ({measurements.SampleRows} rows of each of {measurements.SampledTensors} tensors).");
        WriteObject(DareAdvisor.Recommend(measurements), enumerateCollection: true);
    });
}
