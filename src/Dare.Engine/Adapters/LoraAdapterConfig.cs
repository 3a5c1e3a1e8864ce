using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace Dare.Engine.Adapters;

/// <summary>
/// The parts of a PEFT adapter_config.json that decide δ: r, lora_alpha, use_rslora, fan_in_fan_out, the per-module
/// rank_pattern / alpha_pattern, modules_to_save. Settings that change what δ means and that Dare does not compute
/// (DoRA, LoRA biases, other adapter types) are refused with an error naming the key.
/// </summary>
public sealed class LoraAdapterConfig
{
    public const string FileName = "adapter_config.json";

    public required int Rank { get; init; }
    public required double Alpha { get; init; }
    public bool UseRsLora { get; init; }
    public bool FanInFanOut { get; init; }
    public IReadOnlyDictionary<string, int> RankPattern { get; init; } = new Dictionary<string, int>();
    public IReadOnlyDictionary<string, double> AlphaPattern { get; init; } = new Dictionary<string, double>();
    public IReadOnlyList<string> ModulesToSave { get; init; } = Array.Empty<string>();
    public IReadOnlyList<string> TargetModules { get; init; } = Array.Empty<string>();
    public string? BaseModelNameOrPath { get; init; }

    /// <summary>The rank of <paramref name="module"/> (rank_pattern, else r).</summary>
    public int RankOf(string module) => Lookup(RankPattern, module) is { } r ? r : Rank;

    /// <summary>s = α / r, or α / √r with use_rslora, with α and r from the patterns where one matches the module.</summary>
    public double ScaleOf(string module)
    {
        var rank = RankOf(module);
        var alpha = Lookup(AlphaPattern, module) is { } a ? a : Alpha;
        return UseRsLora ? alpha / Math.Sqrt(rank) : alpha / rank;
    }

    // PEFT's rule: the first pattern key k for which the module name matches the regular expression (.*\.)?(k)$.
    private static T? Lookup<T>(IReadOnlyDictionary<string, T> pattern, string module) where T : struct
    {
        foreach (var (key, value) in pattern)
        {
            if (Regex.IsMatch(module, $"^(.*\\.)?({key})$", RegexOptions.CultureInvariant)) return value;
        }
        return null;
    }

    /// <summary>Reads and checks <paramref name="path"/> (an adapter_config.json).</summary>
    public static LoraAdapterConfig Read(string path)
    {
        JsonObject json;
        try
        {
            json = JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw Invalid(path, "it is not a JSON object");
        }
        catch (JsonException e)
        {
            throw Invalid(path, $"it is not valid JSON ({e.Message})");
        }
        var type = Text(json, "peft_type", path);
        if (type is not null && !string.Equals(type, "LORA", StringComparison.OrdinalIgnoreCase))
        {
            throw Unsupported(path, "peft_type", $"the adapter type is {type}; only LORA adapters are read");
        }
        if (Flag(json, "use_dora", path)) throw Unsupported(path, "use_dora", "DoRA adapters (use_dora: true) scale each column by a learned magnitude, which Dare does not compute");
        if (Flag(json, "lora_bias", path)) throw Unsupported(path, "lora_bias", "LoRA biases (lora_bias: true) are not read");
        if (json["target_parameters"] is JsonArray { Count: > 0 }) throw Unsupported(path, "target_parameters", "adapters on parameters (target_parameters) are not read");
        if (json["trainable_token_indices"] is { } tokens && tokens.GetValueKind() is not JsonValueKind.Null) throw Unsupported(path, "trainable_token_indices", "adapters that train single token rows are not read");
        if (json["layer_replication"] is JsonArray { Count: > 0 }) throw Unsupported(path, "layer_replication", "adapters that replicate layers are not read");
        var rank = Number(json, "r", path) ?? throw Invalid(path, "it has no 'r' (the LoRA rank)");
        if (rank < 1 || rank != Math.Floor(rank)) throw Invalid(path, $"'r' is {rank}; the rank must be a positive whole number");
        return new LoraAdapterConfig
        {
            Rank = (int)rank,
            Alpha = Number(json, "lora_alpha", path) ?? 8, // PEFT's default
            UseRsLora = Flag(json, "use_rslora", path),
            FanInFanOut = Flag(json, "fan_in_fan_out", path),
            RankPattern = Pattern(json, "rank_pattern", path).ToDictionary(p => p.Key, p => (int)p.Value, StringComparer.Ordinal),
            AlphaPattern = Pattern(json, "alpha_pattern", path),
            ModulesToSave = Names(json, "modules_to_save", path),
            TargetModules = Names(json, "target_modules", path),
            BaseModelNameOrPath = Text(json, "base_model_name_or_path", path),
        };
    }

    private static string? Text(JsonObject json, string key, string path) => json[key] switch
    {
        null => null,
        JsonValue v when v.TryGetValue<string>(out var s) => s,
        _ => throw Invalid(path, $"'{key}' is not a string"),
    };

    private static bool Flag(JsonObject json, string key, string path) => json[key] switch
    {
        null => false,
        JsonValue v when v.TryGetValue<bool>(out var b) => b,
        _ => throw Invalid(path, $"'{key}' is not true or false"),
    };

    private static double? Number(JsonObject json, string key, string path) => json[key] switch
    {
        null => null,
        JsonValue v when v.TryGetValue<double>(out var d) && double.IsFinite(d) => d,
        _ => throw Invalid(path, $"'{key}' is not a number"),
    };

    private static Dictionary<string, double> Pattern(JsonObject json, string key, string path)
    {
        var result = new Dictionary<string, double>(StringComparer.Ordinal);
        if (json[key] is null) return result;
        if (json[key] is not JsonObject map) throw Invalid(path, $"'{key}' is not an object of module patterns");
        foreach (var (name, value) in map)
        {
            if (value is not JsonValue v || !v.TryGetValue<double>(out var d) || !double.IsFinite(d) || d <= 0)
            {
                throw Invalid(path, $"'{key}' gives '{name}' a value that is not a positive number");
            }
            if (key == "rank_pattern" && d != Math.Floor(d)) throw Invalid(path, $"'{key}' gives '{name}' the rank {d}, not a whole number");
            result[name] = d;
        }
        return result;
    }

    // A list of names, or one string (PEFT allows a regular expression for target_modules; it is kept as the one entry).
    private static IReadOnlyList<string> Names(JsonObject json, string key, string path) => json[key] switch
    {
        null => Array.Empty<string>(),
        JsonValue v when v.TryGetValue<string>(out var s) => new[] { s },
        JsonArray a => a.Select(n => n is JsonValue e && e.TryGetValue<string>(out var s) ? s : throw Invalid(path, $"'{key}' holds something other than a name")).ToList(),
        _ => throw Invalid(path, $"'{key}' is not a list of names"),
    };

    private static DareException Invalid(string path, string reason) =>
        new(DareErrorId.AdapterInvalid, DareErrorKind.InvalidData, $"The adapter config '{path}' cannot be used: {reason}.") { FilePath = path };

    private static DareException Unsupported(string path, string key, string reason) =>
        new(DareErrorId.AdapterUnsupported, DareErrorKind.NotImplemented, $"The adapter config '{path}' sets '{key}': {reason}.") { FilePath = path };
}
