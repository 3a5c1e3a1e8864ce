using System.Management.Automation;
using Dare.Engine;
using Dare.Engine.Evaluation;
using Dare.Engine.Merge;
using Dare.Engine.Safetensors;

namespace Dare.PowerShell;

/// <summary>
/// Measure-Perplexity: the perplexity of a Llama-family causal LM (Llama, Mistral, Qwen2) on a text file, tokenised
/// with the model's own tokenizer, over non-overlapping windows of -ContextLength tokens. Models and the text each
/// have a literal twin (-LiteralModel, -LiteralPath), so the four parameter sets are the four combinations.
/// </summary>
[Cmdlet(VerbsDiagnostic.Measure, "Perplexity", DefaultParameterSetName = PathSet, HelpUri = DareHelp.Uri + "#evaluating-a-merge")]
[OutputType(typeof(PerplexityResult))]
public sealed class MeasurePerplexityCommand : DareCmdlet
{
    private const string PathSet = "Path";
    private const string LiteralModelSet = "LiteralModel";
    private const string LiteralTextSet = "LiteralPath";
    private const string LiteralSet = "LiteralModelLiteralPath";

    private string _text = null!;

    /// <summary>Models to measure: folders (wildcards allowed), Checkpoints, Export-Safetensors results; pipeline input.</summary>
    [Parameter(Mandatory = true, Position = 0, ValueFromPipeline = true, ParameterSetName = PathSet)]
    [Parameter(Mandatory = true, Position = 0, ValueFromPipeline = true, ParameterSetName = LiteralTextSet)]
    [SupportsWildcards]
    public object[] Model { get; set; } = Array.Empty<object>();

    /// <summary>Model folders used exactly as typed.</summary>
    [Parameter(Mandatory = true, ParameterSetName = LiteralModelSet)]
    [Parameter(Mandatory = true, ParameterSetName = LiteralSet)]
    public string[] LiteralModel { get; set; } = Array.Empty<string>();

    /// <summary>The held-out text (UTF-8); a wildcard must match one file.</summary>
    [Parameter(Mandatory = true, Position = 1, ParameterSetName = PathSet)]
    [Parameter(Mandatory = true, Position = 1, ParameterSetName = LiteralModelSet)]
    [SupportsWildcards]
    public string TextPath { get; set; } = null!;

    /// <summary>The text file's path used exactly as typed.</summary>
    [Parameter(Mandatory = true, ParameterSetName = LiteralTextSet)]
    [Parameter(Mandatory = true, ParameterSetName = LiteralSet)]
    public string LiteralPath { get; set; } = null!;

    /// <summary>Measure only the first this many tokens of the text.</summary>
    [Parameter, ValidateRange(2, long.MaxValue)]
    public long MaxTokens { get; set; }

    /// <summary>Window length in tokens (default: the config's max_position_embeddings or sliding_window, at most 2048).</summary>
    [Parameter, ValidateRange(2, int.MaxValue)]
    public int ContextLength { get; set; }

    /// <summary>Compute type.</summary>
    [Parameter, ValidateSet("float32", "bfloat16")]
    public string DType { get; set; } = "float32";

    /// <summary>Where the forward passes run: cpu (the default), or cuda / cuda:N (that GPU; a module built with ./build.ps1 Build -Cuda).</summary>
    [Parameter, ValidatePattern(ComputeDevice.Pattern), ArgumentCompleter(typeof(DeviceCompleter))]
    public string Device { get; set; } = "cpu";

    private bool ModelIsLiteral => ParameterSetName is LiteralModelSet or LiteralSet;
    private bool TextIsLiteral => ParameterSetName is LiteralTextSet or LiteralSet;

    protected override void BeginProcessing() => Run(() =>
    {
        var text = TextIsLiteral ? LiteralPath : TextPath;
        var matches = PathResolver.ResolveExisting(SessionState, text, TextIsLiteral);
        if (matches.Count != 1 || !File.Exists(matches[0]))
        {
            throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument,
                $"The text path '{text}' must name one file (it matches {matches.Count} item(s){(matches.Count == 1 ? ", a folder" : "")}).") { FilePath = text };
        }
        _text = matches[0];
    });

    protected override void ProcessRecord()
    {
        foreach (var item in ModelIsLiteral ? LiteralModel : Model)
        {
            IReadOnlyList<Checkpoint> models = Array.Empty<Checkpoint>();
            RunForItem(() => models = CheckpointResolver.Resolve(SessionState, item, allowMany: true, literal: ModelIsLiteral), item);
            foreach (var model in models) RunForItem(() => WriteObject(Measure(model)), model);
        }
    }

    private PerplexityResult Measure(Checkpoint model)
    {
        var options = new PerplexityOptions
        {
            ContextLength = ContextLength > 0 ? ContextLength : null,
            MaxTokens = MaxTokens > 0 ? MaxTokens : null,
            DType = SafetensorsDTypes.ParseOutputDType(DType),
            Device = Device,
        };
        var progress = new ProgressReporter(this, model.Name);
        try
        {
            return PerplexityEvaluator.Measure(model, _text, options, progress, Cancellation);
        }
        finally
        {
            progress.Complete();
        }
    }

    /// <summary>Writes progress synchronously: the engine reports on this (the pipeline) thread.</summary>
    private sealed class ProgressReporter : IProgress<PerplexityProgress>
    {
        private readonly Cmdlet _cmdlet;
        private readonly string _activity;
        private DateTime _last = DateTime.MinValue;
        private bool _open;

        public ProgressReporter(Cmdlet cmdlet, string model)
        {
            _cmdlet = cmdlet;
            _activity = $"Measuring the perplexity of {model}";
        }

        public void Report(PerplexityProgress value)
        {
            if ((DateTime.UtcNow - _last).TotalMilliseconds < 200) return;
            _last = DateTime.UtcNow;
            _open = true;
            _cmdlet.WriteProgress(new ProgressRecord(2, _activity, $"windows {value.WindowsDone}/{value.Windows}, layer {Math.Min(value.Layer + 1, value.Layers)}/{value.Layers}")
            {
                PercentComplete = value.Percent,
            });
        }

        public void Complete()
        {
            if (_open) _cmdlet.WriteProgress(new ProgressRecord(2, _activity, "Done") { RecordType = ProgressRecordType.Completed });
        }
    }
}
