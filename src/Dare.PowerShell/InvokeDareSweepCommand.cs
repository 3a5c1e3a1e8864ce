using System.Management.Automation;
using Dare.Engine;
using Dare.Engine.Evaluation;
using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using Dare.Engine.Sweeps;

namespace Dare.PowerShell;

/// <summary>
/// Invoke-DareSweep: merges one variant per drop rate (and keep ratio) through the engine path of Export-Safetensors,
/// each into its own temporary folder, scores it with an evaluator (a script block, or Measure-Perplexity on -TextPath),
/// emits one result per variant, keeps the best (-KeepBest), removes the rest and draws score against drop rate.
/// </summary>
[Cmdlet(VerbsLifecycle.Invoke, "DareSweep", SupportsShouldProcess = true, DefaultParameterSetName = PathSet, HelpUri = DareHelp.Uri + "#sweeps-and-charts")]
[OutputType(typeof(SweepResult))]
public sealed class InvokeDareSweepCommand : DareCmdlet
{
    private const string PathSet = "Path";
    private const string LiteralBaseSet = "LiteralBase";
    private const string LiteralFineTunedSet = "LiteralFineTuned";
    private const string LiteralSet = "LiteralPath";

    /// <summary>The base model: a folder, a .safetensors file, or a Checkpoint from Import-Safetensors.</summary>
    [Parameter(Mandatory = true, Position = 0, ParameterSetName = PathSet)]
    [Parameter(Mandatory = true, Position = 0, ParameterSetName = LiteralFineTunedSet)]
    [SupportsWildcards]
    public object Base { get; set; } = null!;

    /// <summary>The base model's path, used exactly as typed.</summary>
    [Parameter(Mandatory = true, ParameterSetName = LiteralBaseSet)]
    [Parameter(Mandatory = true, ParameterSetName = LiteralSet)]
    public string LiteralBase { get; set; } = null!;

    /// <summary>The fine-tuned models of the base to merge (paths, wildcards allowed, folders from Get-ChildItem, Checkpoints).</summary>
    [Parameter(Mandatory = true, Position = 1, ValueFromPipeline = true, ParameterSetName = PathSet)]
    [Parameter(Mandatory = true, Position = 1, ValueFromPipeline = true, ParameterSetName = LiteralBaseSet)]
    [SupportsWildcards]
    public object[] FineTuned { get; set; } = Array.Empty<object>();

    /// <summary>The fine-tuned models' paths, used exactly as typed.</summary>
    [Parameter(Mandatory = true, ParameterSetName = LiteralFineTunedSet)]
    [Parameter(Mandatory = true, ParameterSetName = LiteralSet)]
    public string[] LiteralFineTuned { get; set; } = Array.Empty<string>();

    private bool BaseIsLiteral => ParameterSetName is LiteralBaseSet or LiteralSet;
    private bool FineTunedIsLiteral => ParameterSetName is LiteralFineTunedSet or LiteralSet;

    /// <summary>The DARE drop rates to try, each 0 &lt;= p &lt; 1, e.g. 0.8,0.85,0.9,0.95.</summary>
    [Parameter(Mandatory = true)]
    public double[] DropRate { get; set; } = Array.Empty<double>();

    /// <summary>TIES keep ratios to try with dare_ties (0 &lt; k &lt;= 1; default 1: sign election without trimming, mergekit's dare_ties). Each drop rate is tried with each.</summary>
    [Parameter]
    public double[]? KeepRatio { get; set; }

    /// <summary>dare_ties (DARE, then TIES sign election; default) or dare_linear (DARE, then the average).</summary>
    [Parameter]
    [ValidateSet("dare_ties", "dare_linear")]
    public string Method { get; set; } = "dare_ties";

    /// <summary>Seed of the DARE masks, the same for every variant (model i uses mask stream i). Without it a seed is drawn and reported.</summary>
    [Parameter]
    public long Seed { get; set; }

    /// <summary>
    /// Scores a merged model: { param($ModelPath) ... } returning a number (or an object with a Score or Perplexity
    /// property). Lower is better unless -Maximize. Without it, the perplexity on -TextPath (Measure-Perplexity).
    /// </summary>
    [Parameter]
    public ScriptBlock? Evaluator { get; set; }

    /// <summary>The held-out text of the default evaluator (the perplexity of each variant on it; lower is better).</summary>
    [Parameter]
    public string? TextPath { get; set; }

    /// <summary>The default evaluator scores at most this many tokens of -TextPath (0: all).</summary>
    [Parameter]
    [ValidateRange(0, long.MaxValue)]
    public long MaxTokens { get; set; }

    /// <summary>The highest score is the best (an accuracy); by default the lowest is (perplexity, loss).</summary>
    [Parameter]
    public SwitchParameter Maximize { get; set; }

    /// <summary>Folder the best variant's model is moved to (atomically, by the rules of Export-Safetensors' output folder); the others are removed.</summary>
    [Parameter]
    public string? KeepBest { get; set; }

    /// <summary>Replace an existing model export at -KeepBest (only once the sweep has its best).</summary>
    [Parameter]
    public SwitchParameter Force { get; set; }

    /// <summary>Where to draw score against drop rate, one line per keep ratio: a .png or .svg file (format by extension).</summary>
    [Parameter]
    public string? ChartPath { get; set; }

    /// <summary>Output dtype of the merged variants' floating-point tensors (default: each base tensor's dtype).</summary>
    [Parameter]
    [ValidateSet("bfloat16", "float16", "float32")]
    public string? DType { get; set; }

    /// <summary>
    /// Where each variant's merge math runs: cpu (the default: the SIMD kernels), cuda or cuda:N (the TorchSharp tensor
    /// backend on that GPU, which the default evaluator's perplexity then also uses), or torch-cpu. The same bytes on every device.
    /// </summary>
    [Parameter]
    [ValidatePattern(ComputeDevice.Pattern)]
    [ArgumentCompleter(typeof(DeviceCompleter))]
    public string? Device { get; set; }

    private Checkpoint _base = null!;
    private readonly List<Checkpoint> _models = new();
    private string? _text;

    protected override void BeginProcessing() => Run(() =>
    {
        if (Evaluator is null && TextPath is null)
        {
            throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument,
                "Give -Evaluator { param($ModelPath) ... } to score each variant, or -TextPath for the default evaluator (perplexity on that text).");
        }
        if (TextPath is not null)
        {
            var matches = PathResolver.ResolveExisting(SessionState, TextPath, literal: false);
            if (matches.Count != 1 || !File.Exists(matches[0]))
            {
                throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument, $"-TextPath '{TextPath}' must name one file (it matches {matches.Count} item(s)).") { FilePath = TextPath };
            }
            _text = matches[0];
        }
        _base = CheckpointResolver.Resolve(SessionState, BaseIsLiteral ? LiteralBase : Base, allowMany: false, literal: BaseIsLiteral)[0];
    });

    protected override void ProcessRecord()
    {
        foreach (var item in FineTunedIsLiteral ? LiteralFineTuned : FineTuned)
        {
            RunForItem(() => _models.AddRange(CheckpointResolver.Resolve(SessionState, item, allowMany: true, literal: FineTunedIsLiteral)), item);
        }
    }

    protected override void EndProcessing() => Run(() =>
    {
        var seed = Seed;
        if (!MyInvocation.BoundParameters.ContainsKey(nameof(Seed)))
        {
            seed = System.Security.Cryptography.RandomNumberGenerator.GetInt32(int.MaxValue);
            WriteVerbose($"No -Seed given; every variant uses seed {seed}.");
        }
        var options = new SweepOptions
        {
            Base = _base,
            Models = _models,
            DropRates = DropRate,
            KeepRatios = KeepRatio,
            Method = Method,
            Seed = seed,
            Maximize = Maximize,
            KeepBest = KeepBest is null ? null : PathResolver.ResolveOutput(SessionState, KeepBest, literal: false),
            Force = Force,
            CurrentLocation = SessionState.Path.CurrentFileSystemLocation.ProviderPath,
            OutputDType = DType is null ? null : SafetensorsDTypes.ParseOutputDType(DType),
            ChartPath = ChartPath is null ? null : SessionState.Path.GetUnresolvedProviderPathFromPSPath(ChartPath),
            Device = Device is null ? null : ComputeDevice.Parse(Device),
        };
        var observer = new CmdletObserver(this, activityId: 2);
        using var sweep = new DareSweep(options, observer, Cancellation);
        var count = sweep.Variants.Count;
        bool Confirm(SweepVariant variant)
        {
            var progress = new ProgressRecord(1, "Invoke-DareSweep", $"variant {variant.Index + 1} of {count}: {variant.Label}") { PercentComplete = 100 * variant.Index / count };
            WriteProgress(progress);
            observer.Subject = variant.Label;
            return ShouldProcess(variant.Label, $"Merge and score the variant {variant.Label} of '{_base.Name}' + {string.Join(", ", _models.Select(m => $"'{m.Name}'"))}");
        }
        try
        {
            foreach (var result in sweep.Run(Confirm, Evaluate, Evaluator is null ? "perplexity" : "score"))
            {
                observer.Complete();
                if (result.Succeeded) WriteVerbose($"{result}: merged in {result.MergeTime.TotalSeconds:0.0} s, scored in {result.EvaluationTime.TotalSeconds:0.0} s; realised drop rate {result.RealisedDropRate:0.####}.");
                else WriteWarning($"Variant {result.Variant.Label} failed: {result.Error}");
                WriteObject(result);
            }
            if (sweep.Results.Count == 0) return; // -WhatIf, or every variant declined
            var best = sweep.Finish();
            if (best is not null) WriteVerbose($"Best: {best}{(best.KeptPath is { } kept ? $", kept at '{kept}'" : "")}.");
            if (options.ChartPath is { } chart && sweep.Results.Any(r => r.Succeeded)) WriteVerbose($"Drew '{chart}'.");
        }
        finally
        {
            WriteProgress(new ProgressRecord(1, "Invoke-DareSweep", "Done") { RecordType = ProgressRecordType.Completed });
        }
    });

    /// <summary>The score of one merged model: the script block's last output, or the perplexity on -TextPath.</summary>
    private double Evaluate(string modelPath)
    {
        if (Evaluator is null)
        {
            var options = new PerplexityOptions { MaxTokens = MaxTokens > 0 ? MaxTokens : null, Device = Device ?? "cpu" };
            return PerplexityEvaluator.Measure(Checkpoint.Open(modelPath), _text!, options, null, Cancellation).Perplexity;
        }
        var output = Evaluator.Invoke(modelPath).Where(o => o is not null).LastOrDefault()
            ?? throw new InvalidOperationException("the evaluator returned nothing; it must return a number");
        var value = output.BaseObject;
        if (value is PerplexityResult perplexity) return perplexity.Perplexity;
        var property = output.Properties["Score"] ?? output.Properties["Perplexity"];
        if (value is not IConvertible && property is not null) value = property.Value;
        try
        {
            return LanguagePrimitives.ConvertTo<double>(value);
        }
        catch (PSInvalidCastException)
        {
            throw new InvalidOperationException($"the evaluator returned '{value}' ({value?.GetType().Name}), not a number or an object with a Score property");
        }
    }
}
