using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Dare.Engine.Safetensors;

namespace Dare.Engine.Merge;

/// <summary>
/// How one family of models names its tensors: where the decoder layers are (a pattern whose first group is the
/// layer number), which config.json key counts them, and which tensors hold one row per token (the input embedding
/// and the output head). One row of <see cref="Table"/> per family, matched by config.json's model_type or
/// architectures; no code branches per family.
/// </summary>
public sealed record ModelArchitecture(
    string Name,
    string[] ModelTypes,
    string[] Classes,
    string LayerPattern,
    string[] LayerCountKeys,
    string[] Embeddings,
    string[] Heads)
{
    private Regex? _layers;
    // Interpreted: a few thousand tensor names do not repay the ~10 ms of compiling the pattern at start-up.
    private Regex Layers => _layers ??= new Regex(LayerPattern, RegexOptions.CultureInvariant);

    /// <summary>True for the fallback used when config.json names no family in the table.</summary>
    public bool IsGeneric => Name == Generic.Name;

    private const string Decoder = @"^model\.layers\.(\d+)\.";
    private static readonly string[] HiddenLayers = { "num_hidden_layers" };
    private static readonly string[] ModelEmbed = { "model.embed_tokens.weight" };
    private static readonly string[] LmHead = { "lm_head.weight" };

    /// <summary>The families Dare knows by name (mergekit's architecture files name the same tensors).</summary>
    public static readonly IReadOnlyList<ModelArchitecture> Table = new ModelArchitecture[]
    {
        new("llama", new[] { "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "granite", "olmo2", "cohere" },
            new[] { "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM" },
            Decoder, HiddenLayers, ModelEmbed, LmHead),
        new("moe", new[] { "mixtral", "qwen2_moe", "qwen3_moe" }, new[] { "MixtralForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM" },
            Decoder, HiddenLayers, ModelEmbed, LmHead),
        new("gpt2", new[] { "gpt2" }, new[] { "GPT2LMHeadModel" },
            @"^(?:transformer\.)?h\.(\d+)\.", new[] { "n_layer", "num_hidden_layers" }, new[] { "transformer.wte.weight", "wte.weight" }, LmHead),
        new("gpt_neox", new[] { "gpt_neox" }, new[] { "GPTNeoXForCausalLM" },
            @"^gpt_neox\.layers\.(\d+)\.", HiddenLayers, new[] { "gpt_neox.embed_in.weight" }, new[] { "embed_out.weight" }),
        new("falcon", new[] { "falcon", "RefinedWeb", "RefinedWebModel" }, new[] { "FalconForCausalLM", "RWForCausalLM" },
            @"^transformer\.h\.(\d+)\.", new[] { "num_hidden_layers", "n_layer" }, new[] { "transformer.word_embeddings.weight" }, LmHead),
        // Vision-language models: only the text decoder's layers count; the vision tower's are tensors outside the layers.
        new("vlm", new[] { "gemma3", "llava", "llava_next", "mistral3", "paligemma", "qwen2_vl", "qwen2_5_vl" },
            new[] { "Gemma3ForConditionalGeneration", "LlavaForConditionalGeneration", "Mistral3ForConditionalGeneration", "PaliGemmaForConditionalGeneration" },
            @"^(?:model\.)?language_model\.(?:model\.)?layers\.(\d+)\.", new[] { "text_config.num_hidden_layers", "num_hidden_layers" },
            new[] { "language_model.model.embed_tokens.weight", "model.language_model.embed_tokens.weight", "model.embed_tokens.weight" },
            new[] { "language_model.lm_head.weight", "lm_head.weight" }),
    };

    /// <summary>An architecture not in the table: every tensor merges by name; layers are found by the common naming schemes.</summary>
    public static readonly ModelArchitecture Generic = new("generic", Array.Empty<string>(), Array.Empty<string>(),
        @"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.", new[] { "num_hidden_layers", "n_layer", "text_config.num_hidden_layers" },
        new[] { "model.embed_tokens.weight", "transformer.wte.weight", "gpt_neox.embed_in.weight", "transformer.word_embeddings.weight" },
        new[] { "lm_head.weight", "embed_out.weight" });

    /// <summary>The table row for a model's config.json (model_type first, then architectures[]), else <see cref="Generic"/>.</summary>
    public static ModelArchitecture Of(IReadOnlyDictionary<string, object?>? config)
    {
        if (config is null) return Generic;
        if (config.TryGetValue("model_type", out var type) && type is string modelType
            && Table.FirstOrDefault(a => a.ModelTypes.Contains(modelType, StringComparer.Ordinal)) is { } byType) return byType;
        if (config.TryGetValue("architectures", out var classes) && classes is object?[] list)
        {
            foreach (var name in list.OfType<string>())
            {
                if (Table.FirstOrDefault(a => a.Classes.Contains(name, StringComparer.Ordinal)) is { } byClass) return byClass;
            }
        }
        return Generic;
    }

    /// <summary>The layer number in a tensor name, or null for a tensor outside the decoder layers.</summary>
    public int? LayerOf(string name)
    {
        var match = Layers.Match(name);
        return match.Success ? int.Parse(match.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture) : null;
    }

    /// <summary>Layers in a model: the first config key found (dotted keys look inside nested objects), else the highest layer number + 1.</summary>
    public int LayerCount(Checkpoint model)
    {
        foreach (var key in LayerCountKeys)
        {
            if (ConfigValue(model.Config, key) is long count and > 0) return (int)count;
        }
        return model.Tensors.Select(t => LayerOf(t.Name) ?? -1).DefaultIfEmpty(-1).Max() + 1;
    }

    /// <summary>Whether a tensor holds one row per token: the input embedding or the output head.</summary>
    public bool IsVocabularyTensor(string name) => Embeddings.Contains(name, StringComparer.Ordinal) || Heads.Contains(name, StringComparer.Ordinal);

    /// <summary>The embedding a model without its own head uses as its head (tied embeddings), if <paramref name="head"/> is a head.</summary>
    public TensorInfo? TiedSource(Checkpoint model, string head) =>
        Heads.Contains(head, StringComparer.Ordinal) ? Embeddings.Select(model.Find).FirstOrDefault(t => t is not null) : null;

    /// <summary>Where a tensor sits: its layer (by this family's pattern) of <paramref name="layerCount"/>, and whether it is an input embedding.</summary>
    public TensorPosition Position(string name, int layerCount) =>
        new(name, LayerOf(name), layerCount) { IsEmbedding = Embeddings.Contains(name, StringComparer.Ordinal) || (IsGeneric && TensorPosition.LooksLikeEmbedding(name)) };

    /// <summary>A value of config.json by key; "a.b" reads key b of object a.</summary>
    internal static object? ConfigValue(IReadOnlyDictionary<string, object?>? config, string key)
    {
        object? current = config;
        foreach (var part in key.Split('.'))
        {
            if (current is not IReadOnlyDictionary<string, object?> map || !map.TryGetValue(part, out current)) return null;
        }
        return current;
    }
}
