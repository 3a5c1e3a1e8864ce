using System.Globalization;
using Dare.Engine.Safetensors;

namespace Dare.Engine.Evaluation;

/// <summary>
/// The config.json fields a Llama-family decoder (Llama, Mistral, Qwen2) needs for a forward pass, with Hugging
/// Face's defaults. Unknown architectures and rope scalings other than none and "linear" are refused by name.
/// </summary>
public sealed record LlamaConfig
{
    /// <summary>model_type values whose forward pass this evaluator implements.</summary>
    public static readonly IReadOnlyList<string> SupportedModelTypes = new[] { "llama", "mistral", "qwen2" };

    public string ModelType { get; init; } = "llama";
    public int HiddenSize { get; init; }
    public int IntermediateSize { get; init; }
    public int Heads { get; init; }
    public int KeyValueHeads { get; init; }
    public int HeadDim { get; init; }
    public int Layers { get; init; }
    public int VocabSize { get; init; }
    public double RmsNormEps { get; init; } = 1e-6;
    public double RopeTheta { get; init; } = 10000;

    /// <summary>Positions are divided by this ("linear" rope scaling); 1 without scaling.</summary>
    public double RopeLinearFactor { get; init; } = 1;

    public bool TieWordEmbeddings { get; init; }
    public int? MaxPositionEmbeddings { get; init; }

    /// <summary>Mistral's sliding attention window, when the config enables one.</summary>
    public int? SlidingWindow { get; init; }

    public static LlamaConfig FromCheckpoint(Checkpoint model)
    {
        var configPath = System.IO.Path.Combine(model.Directory, "config.json");
        var config = model.Config ?? throw new DareException(DareErrorId.ConfigInvalid, DareErrorKind.ObjectNotFound,
            $"'{model.Path}' has no config.json; Measure-Perplexity needs it to know the model's shape.") { FilePath = configPath };
        DareException Invalid(string reason) => new(DareErrorId.ConfigInvalid, DareErrorKind.InvalidData, $"'{configPath}': {reason}.") { FilePath = configPath };

        var modelType = config.GetValueOrDefault("model_type") as string;
        if (modelType is null || !SupportedModelTypes.Contains(modelType))
        {
            throw new DareException(DareErrorId.ArchitectureUnsupported, DareErrorKind.NotImplemented,
                $"'{configPath}' has model_type '{modelType ?? "(none)"}'; Measure-Perplexity implements {string.Join(", ", SupportedModelTypes)} (Llama-family decoders).") { FilePath = configPath };
        }
        int Required(string key)
        {
            var value = config.GetValueOrDefault(key);
            return value is long n && n > 0 && n <= int.MaxValue ? (int)n : throw Invalid($"'{key}' must be a positive integer (found {value ?? "nothing"})");
        }
        int? Optional(string key) => config.GetValueOrDefault(key) switch
        {
            null => null,
            long n when n > 0 && n <= int.MaxValue => (int)n,
            var other => throw Invalid($"'{key}' must be a positive integer (found {other})"),
        };
        double Number(string key, double fallback) => config.GetValueOrDefault(key) switch
        {
            null => fallback,
            long n => n,
            double d when d > 0 && double.IsFinite(d) => d,
            var other => throw Invalid($"'{key}' must be a positive number (found {other})"),
        };

        var hidden = Required("hidden_size");
        var heads = Required("num_attention_heads");
        var kvHeads = Optional("num_key_value_heads") ?? heads;
        if (heads % kvHeads != 0) throw Invalid($"num_attention_heads ({heads}) is not a multiple of num_key_value_heads ({kvHeads})");
        var headDim = Optional("head_dim") ?? (hidden % heads == 0 ? hidden / heads : throw Invalid($"hidden_size ({hidden}) is not a multiple of num_attention_heads ({heads})"));
        if (headDim % 2 != 0) throw Invalid($"the head dimension ({headDim}) must be even for rotary embeddings");
        var slidingWindow = modelType == "qwen2" && config.GetValueOrDefault("use_sliding_window") is not true ? null : Optional("sliding_window");
        return new LlamaConfig
        {
            ModelType = modelType,
            HiddenSize = hidden,
            IntermediateSize = Required("intermediate_size"),
            Heads = heads,
            KeyValueHeads = kvHeads,
            HeadDim = headDim,
            Layers = Required("num_hidden_layers"),
            VocabSize = Optional("vocab_size") ?? 0,
            RmsNormEps = Number("rms_norm_eps", 1e-6),
            RopeTheta = Number("rope_theta", 10000),
            RopeLinearFactor = RopeFactor(config.GetValueOrDefault("rope_scaling"), configPath, Invalid),
            TieWordEmbeddings = config.GetValueOrDefault("tie_word_embeddings") is true,
            MaxPositionEmbeddings = Optional("max_position_embeddings"),
            SlidingWindow = slidingWindow,
        };
    }

    private static double RopeFactor(object? scaling, string configPath, Func<string, DareException> invalid)
    {
        if (scaling is null) return 1;
        if (scaling is not IReadOnlyDictionary<string, object?> settings) throw invalid("'rope_scaling' must be an object or null");
        var type = (settings.GetValueOrDefault("rope_type") ?? settings.GetValueOrDefault("type")) as string;
        if (type is null or "default") return 1;
        if (type != "linear")
        {
            throw new DareException(DareErrorId.ArchitectureUnsupported, DareErrorKind.NotImplemented,
                $"'{configPath}' asks for rope_scaling type '{type}'; Measure-Perplexity implements none and 'linear'.") { FilePath = configPath };
        }
        return settings.GetValueOrDefault("factor") switch
        {
            long n when n > 0 => n,
            double d when d > 0 && double.IsFinite(d) => d,
            var other => throw invalid($"rope_scaling 'linear' needs a positive 'factor' (found {Convert.ToString(other, CultureInfo.InvariantCulture) ?? "nothing"})"),
        };
    }
}
