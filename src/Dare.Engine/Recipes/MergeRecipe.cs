using Dare.Engine.Merge;
using Dare.Engine.Safetensors;

namespace Dare.Engine.Recipes;

/// <summary>Where something was written in a recipe: the source, 1-based line and column (0 when unknown) and the key path.</summary>
public sealed record RecipeLocation(string Source, int Line, int Column, string KeyPath)
{
    public override string ToString()
    {
        var at = Line > 0 ? $"{Source}, line {Line}, column {Column}" : Source;
        return KeyPath.Length > 0 ? $"{at} ({KeyPath})" : at;
    }
}

/// <summary>
/// A per-tensor parameter as written: a scalar or gradient (<see cref="Fallback"/> only), or filter rules with an
/// optional fallback. Without a fallback, tensors no rule matches take the global value (then the method default).
/// </summary>
public sealed record RecipeSetting(IReadOnlyList<ParameterRule> Rules, TensorParameter? Fallback, RecipeLocation Location)
{
    /// <summary>The engine parameter, with <paramref name="outer"/> used for tensors no rule matches (null when none is needed).</summary>
    public TensorParameter? ToParameter(TensorParameter? outer)
    {
        if (Rules.Count == 0) return Fallback;
        var fallback = Fallback ?? outer;
        return fallback is null ? null : new RuleParameter(Rules, fallback);
    }

    /// <summary>The same setting with every value mapped (e.g. density d to drop rate 1 − d).</summary>
    public RecipeSetting Map(Func<double, double> map) =>
        new(Rules.Select(r => r with { Value = MapParameter(r.Value, map) }).ToList(), Fallback is null ? null : MapParameter(Fallback, map), Location);

    internal static TensorParameter MapParameter(TensorParameter parameter, Func<double, double> map) => parameter switch
    {
        ConstantParameter c => new ConstantParameter(map(c.Value)),
        GradientParameter g => g with { Points = g.Points.Select(map).ToList() },
        RuleParameter r => new RuleParameter(r.Rules.Select(rule => rule with { Value = MapParameter(rule.Value, map) }).ToList(), MapParameter(r.Default, map)),
        _ => throw new ArgumentOutOfRangeException(nameof(parameter), parameter.GetType().Name),
    };
}

/// <summary>
/// The <c>parameters:</c> block of a model or of the whole recipe, by key as the methods and transforms declare them
/// (<see cref="MergeMethods.AllParameters"/>). Null means "not given".
/// </summary>
public sealed class RecipeParameters
{
    /// <summary>Values that may vary by tensor (a number, a gradient or filter rules), by key.</summary>
    public IReadOnlyDictionary<string, RecipeSetting> Settings { get; init; } = new Dictionary<string, RecipeSetting>();

    /// <summary>Single values by key: double, bool, long, or a choice's value (e.g. <see cref="DareRescale"/>).</summary>
    public IReadOnlyDictionary<string, object> Values { get; init; } = new Dictionary<string, object>();

    public RecipeSetting? Setting(string key) => Settings.TryGetValue(key, out var setting) ? setting : null;
    public T? Value<T>(string key) where T : struct => Values.TryGetValue(key, out var value) ? (T)value : null;

    public RecipeSetting? Weight => Setting("weight");
    public RecipeSetting? Density => Setting("density");

    /// <summary>Dare extension: DARE drop rate p (instead of density = 1 − p).</summary>
    public RecipeSetting? DropRate => Setting("drop_rate");

    public bool? Normalize => Value<bool>("normalize");
    public double? Lambda => Value<double>("lambda");

    /// <summary>Accepted for mergekit compatibility and ignored (see README, "mergekit compatibility").</summary>
    public bool? Int8Mask => Value<bool>("int8_mask");

    public DareRescale? Rescale => Value<DareRescale>("rescale");

    /// <summary>Dare extension: DAREx-q's q with rescale: q.</summary>
    public double? RescaleQ => Value<double>("rescale_q");

    /// <summary>Dare extension: sum (default) or count.</summary>
    public SignMethod? SignMethod => Value<SignMethod>("sign_method");

    /// <summary>Dare extension (per model): this model's DARE seed.</summary>
    public long? RandomSeed => Value<long>("random_seed");

    /// <summary>Dare extension (per model): this model's DARE mask stream (default: its index among the merged models).</summary>
    public int? MaskStream => Value<int>("mask_stream");

    /// <summary>Where each given key was written, by key name.</summary>
    public IReadOnlyDictionary<string, RecipeLocation> Locations { get; init; } = new Dictionary<string, RecipeLocation>();

    public static RecipeParameters Empty { get; } = new();

    public bool Has(string key) => Locations.ContainsKey(key);
}

/// <summary>One entry of <c>models:</c>.</summary>
public sealed class RecipeModelEntry
{
    /// <summary>The path (or the name of an earlier recipe in the batch) as written.</summary>
    public required string Model { get; init; }
    public required RecipeLocation Location { get; init; }
    public RecipeParameters Parameters { get; init; } = RecipeParameters.Empty;

    /// <summary>A PEFT LoRA adapter applied to <see cref="Model"/> (mergekit's model: base+adapter, or Dare's lora: key).</summary>
    public string? Lora { get; init; }
    public RecipeLocation? LoraLocation { get; init; }
}

/// <summary>One source of a slice: layers [LayerStart, LayerEnd) of a model (mergekit's <c>layer_range</c>).</summary>
public sealed class RecipeSliceSource
{
    public required string Model { get; init; }
    public required RecipeLocation Location { get; init; }
    public required int LayerStart { get; init; }
    public required int LayerEnd { get; init; }
    public required RecipeLocation RangeLocation { get; init; }
    public RecipeParameters Parameters { get; init; } = RecipeParameters.Empty;
}

/// <summary>One entry of <c>slices:</c>: output layers taken from (or merged across) its sources' layer ranges.</summary>
public sealed class RecipeSlice
{
    public required IReadOnlyList<RecipeSliceSource> Sources { get; init; }
    public required RecipeLocation Location { get; init; }
}

/// <summary>One YAML document of a recipe file: a single merge.</summary>
public sealed class MergeRecipe
{
    /// <summary>0-based position in its file.</summary>
    public required int Index { get; init; }

    /// <summary>Dare extension: the name later recipes of a batch use to refer to this one's output.</summary>
    public string? Name { get; init; }

    /// <summary>The merge_method as written, resolved in the registry (<see cref="MergeMethods.RecipeForms"/>).</summary>
    public required RecipeForm Method { get; init; }
    public required RecipeLocation Location { get; init; }
    public required RecipeLocation MethodLocation { get; init; }

    public string? BaseModel { get; init; }
    public RecipeLocation? BaseModelLocation { get; init; }

    public required IReadOnlyList<RecipeModelEntry> Models { get; init; }

    /// <summary>The <c>slices:</c> given instead of <c>models:</c> (null when models are given).</summary>
    public IReadOnlyList<RecipeSlice>? Slices { get; init; }
    public RecipeParameters Parameters { get; init; } = RecipeParameters.Empty;

    /// <summary>mergekit's compute dtype; Dare always computes in float32, so it only sets the output dtype when out_dtype is absent.</summary>
    public SafetensorsDType? DType { get; init; }
    public SafetensorsDType? OutDType { get; init; }

    /// <summary>Dare extension (mergekit takes it as a command-line flag): the seed of every DARE mask.</summary>
    public long? RandomSeed { get; init; }

    /// <summary>Dare extension: <c>output.path</c>, resolved to a full path.</summary>
    public string? OutputPath { get; init; }
    public RecipeLocation? OutputPathLocation { get; init; }

    /// <summary>Dare extension: <c>output.max_shard_size</c> in bytes.</summary>
    public long? MaxShardSize { get; init; }

    /// <summary>Dare extension: <c>output.delta_only</c>, write λ·merged δ instead of base + λ·merged δ.</summary>
    public bool DeltaOnly { get; init; }

    /// <summary>tokenizer_source or tokenizer: as written (null: the base's vocabulary).</summary>
    public RecipeTokenizer? Tokenizer { get; init; }

    /// <summary>Dare extension gradient_outside_layers: where gradients put tensors outside the layers (default: t = 0, as mergekit 0.1.4).</summary>
    public GradientOutsideLayers GradientOutsideLayers { get; init; }

    /// <summary>dare_inputs: the inputs' files as a written dare_recipe.yml recorded them; a replay checks them first.</summary>
    public IReadOnlyList<RecordedInput>? RecordedInputs { get; init; }

    /// <summary>Dare extension <c>device:</c>: where the merge math runs (null: cpu, the SIMD kernels); mergekit_config.yml leaves it out.</summary>
    public ComputeDevice? Device { get; init; }

    /// <summary>The dtype floating-point tensors are written in: out_dtype, else dtype, else each base tensor's own.</summary>
    public SafetensorsDType? OutputDType => OutDType ?? DType;

    /// <summary>"name" or "recipe 2" for messages.</summary>
    public string DisplayName => Name ?? $"recipe {Index + 1}";
}

/// <summary>A parsed recipe file or text: one or more recipes, run in order (a batch).</summary>
public sealed class RecipeBatch
{
    /// <summary>The file path, or a description such as "YAML text".</summary>
    public required string Source { get; init; }

    /// <summary>The folder relative model and output paths resolve against.</summary>
    public required string BaseDirectory { get; init; }

    public required IReadOnlyList<MergeRecipe> Recipes { get; init; }

    /// <summary>Things that are allowed but probably not meant (e.g. filter entries after a fallback).</summary>
    public IReadOnlyList<string> Warnings { get; init; } = Array.Empty<string>();

    public override string ToString() => $"{Source} ({Recipes.Count} recipe(s))";
}
