using System.Globalization;
using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using YamlDotNet.Serialization;

namespace Dare.Engine.Recipes;

/// <summary>
/// Writes the recipe that reproduces a task vector, in the mergekit-compatible schema <c>Invoke-DareMerge</c> reads
/// (with Dare's documented extensions: drop_rate, random_seed, mask_stream, match, output). Paths are absolute so the
/// recipe replays from anywhere; <see cref="RecipePlanner"/> rebuilds the identical plan from it.
/// </summary>
public static partial class RecipeWriter
{
    public static string ToYaml(TaskVector vector, SafetensorsDType? outputDType = null, long? maxShardSize = null, bool deltaOnly = false)
    {
        var inputs = vector.IsMerged ? vector.Inputs : new[] { vector };
        var merge = vector.Merge;
        var dareInputs = inputs.Where(i => i.Dare is not null).ToList();
        var sharedSeed = dareInputs.Select(i => i.Dare!.Seed).Distinct().Count() == 1 ? dareInputs[0].Dare!.Seed : (long?)null;
        var sharedRescale = dareInputs.Select(i => i.Dare!.Rescale).Distinct().Count() == 1 ? dareInputs[0].Dare!.Rescale : (DareRescale?)null;

        // A single vector is written as task_arithmetic of one model at weight 1.
        var method = merge?.Method ?? MergeMethod.Linear;
        var recipeName = merge is null ? "task_arithmetic" : method.RecipeName(merge);
        var form = MergeMethods.FindRecipeForm(recipeName)!;
        var recipe = new Dictionary<string, object?>
        {
            ["merge_method"] = recipeName,
            ["base_model"] = vector.Base.Path,
        };
        var models = new List<object>();
        if (method is PassthroughMethod)
        {
            recipe.Remove("base_model");
            models.Add(new Dictionary<string, object?> { ["model"] = vector.Base.Path, ["parameters"] = PassthroughParameters(merge?.Setting(PassthroughMethod.Scale.Key), 0) });
        }
        for (var i = 0; i < inputs.Count && method is not PassthroughMethod; i++)
        {
            var input = inputs[i];
            var parameters = new Dictionary<string, object?>();
            foreach (var spec in method.Parameters.Where(p => p.Scope != ParameterScope.Merge))
            {
                var value = merge is null ? (spec.Key == "weight" ? 1.0 : null) : method.ModelValue(merge, spec.Key, i);
                if (value is not null) parameters[spec.Key] = Value(value);
            }
            if (input.Dare is { } dare)
            {
                parameters["drop_rate"] = Value(dare.DropRate);
                if (sharedSeed is null) parameters["random_seed"] = dare.Seed;
                if (dare.Stream != i) parameters["mask_stream"] = dare.Stream;
                if (sharedRescale is null) parameters["rescale"] = RescaleValue(dare.Rescale);
            }
            models.Add(ModelEntry(input, vector.Base, parameters));
        }
        if (vector.Base.Slices is { } slices)
        {
            if (method is not PassthroughMethod) recipe["base_model"] = slices[0].Model.Path;
            recipe["slices"] = SliceList(vector, slices, models, merge?.Setting(PassthroughMethod.Scale.Key));
        }
        else
        {
            recipe["models"] = models;
        }
        var global = new Dictionary<string, object?>();
        if (method.Parameters.Contains(CommonParameters.Normalize)) global["normalize"] = merge?.Normalize ?? false;
        if (form.HasLambda) global["lambda"] = merge?.Lambda ?? 1.0;
        if (sharedRescale is { } rescale) global["rescale"] = RescaleValue(rescale);
        foreach (var spec in method.Parameters.Where(p => p.Scope == ParameterScope.Merge && p.Key is not ("normalize" or "lambda")))
        {
            if (merge is not null && method.MergeValue(merge, spec.Key) is { } value) global[spec.Key] = value is TensorParameter t ? Value(t) : value;
        }
        recipe["parameters"] = global;
        if (sharedSeed is { } seed) recipe["random_seed"] = seed;
        // Without out_dtype (and dtype) each tensor keeps the base's dtype; mergekit would write dtype's type instead.
        if (outputDType is { } dtype)
        {
            recipe["dtype"] = "float32";
            recipe["out_dtype"] = dtype.TorchDTypeName();
        }
        var output = new Dictionary<string, object?>();
        if (maxShardSize is { } shard) output["max_shard_size"] = shard;
        if (deltaOnly) output["delta_only"] = true;
        if (output.Count > 0) recipe["output"] = output;

        var header = $"# Written by Dare {typeof(RecipeWriter).Assembly.GetName().Version?.ToString(3)}. Replay with: Invoke-DareMerge -ConfigPath <this file> -OutputPath <folder>\n";
        return header + new SerializerBuilder().Build().Serialize(recipe);
    }

    /// <summary>
    /// A fine-tuned model's path; an adapter as mergekit writes it, model: base+adapter (or, when a path holds a '+',
    /// Dare's explicit model: base with lora: adapter).
    /// </summary>
    private static Dictionary<string, object?> ModelEntry(TaskVector input, Checkpoint @base, Dictionary<string, object?> parameters)
    {
        if (input.FineTuned is { } model) return new() { ["model"] = model.Path, ["parameters"] = parameters };
        var adapter = input.LoraAdapters.Single();
        return @base.Path.Contains('+') || adapter.Path.Contains('+')
            ? new() { ["model"] = @base.Path, ["lora"] = adapter.Path, ["parameters"] = parameters }
            : new() { ["model"] = $"{@base.Path}+{adapter.Path}", ["parameters"] = parameters };
    }

    private static object RescaleValue(DareRescale rescale) => rescale switch
    {
        DareRescale.InverseKeep => true,
        DareRescale.L1 => "l1",
        _ => false,
    };

    /// <summary>A constant as a number, rules as a list of {filter, value} (match: wildcard when so), a gradient as a list of numbers.</summary>
    private static object Value(TensorParameter parameter) => parameter switch
    {
        ConstantParameter c => c.Value,
        GradientParameter g => g.Points.ToList(),
        RuleParameter r => r.Rules.Select(rule =>
        {
            var entry = new Dictionary<string, object?> { ["filter"] = rule.Filter, ["value"] = Value(rule.Value) };
            if (rule.Match == FilterMatch.Wildcard) entry["match"] = "wildcard";
            return (object)entry;
        }).Append(new Dictionary<string, object?> { ["value"] = Value(r.Default) }).ToList(),
        _ => throw new ArgumentOutOfRangeException(nameof(parameter), parameter.GetType().Name),
    };
}
