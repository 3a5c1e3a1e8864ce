using System.Text;
using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using YamlDotNet.Serialization;

namespace Dare.Engine.Recipes;

/// <summary>
/// What a published merge carries beside its weights: mergekit_config.yml, the merge in mergekit's own terms (a DARE
/// + TIES merge is dare_ties with its density, a DARE + weighted sum dare_linear, DELLA or breadcrumbs steps della(_linear) or
/// breadcrumbs(_ties) with density, epsilon and gamma; Dare's own keys such as drop_rate,
/// random_seed and mask_stream left out), with the model references as the user gave them; and README.md, a model
/// card whose front matter names the base and the merged models and whose body holds that configuration.
/// </summary>
public static class ModelCardWriter
{
    public const string MergekitConfigFileName = "mergekit_config.yml";
    public const string ModelCardFileName = "README.md";

    /// <summary>mergekit_config.yml; <paramref name="references"/> maps a model's full path to the reference the user wrote.</summary>
    public static string MergekitConfig(TaskVector vector, IReadOnlyDictionary<string, string>? references = null, SafetensorsDType? outputDType = null)
    {
        string Name(Checkpoint model) => references is not null && references.TryGetValue(model.Path, out var written) ? written : model.Path;
        var leaves = vector.IsMerged ? vector.Inputs : new[] { vector };
        var merge = vector.Merge;
        var method = merge?.Method ?? MergeMethod.Linear;
        var allDare = leaves.All(l => l.Dare is not null);
        var keepAll = merge?.KeepRatios is null || merge.KeepRatios.All(k => k is ConstantParameter { Value: 1.0 });
        var della = leaves.Any(l => l.Della is not null);
        var breadcrumbs = leaves.Any(l => l.Breadcrumbs is not null);
        var name = della ? RecipeWriter.PruneRecipeName("della", method, merge)
            : breadcrumbs ? RecipeWriter.PruneRecipeName("breadcrumbs", method, merge)
            : merge is null ? "task_arithmetic"
            : method == MergeMethod.Ties && allDare && keepAll ? "dare_ties"
            : method == MergeMethod.Linear && allDare ? "dare_linear"
            : method.RecipeName(merge);
        var config = new Dictionary<string, object?> { ["merge_method"] = name, ["base_model"] = Name(vector.Base) };
        var models = new List<object>();
        for (var i = 0; i < leaves.Count; i++)
        {
            var parameters = new Dictionary<string, object?> { ["weight"] = Value(merge?.Weights[i] ?? 1.0) };
            if (della)
            {
                parameters["density"] = leaves[i].Della is { } step ? Value(step.Density) : 1.0;
                if (leaves[i].Della is { } withEpsilon) parameters["epsilon"] = Value(withEpsilon.Epsilon);
            }
            else if (breadcrumbs)
            {
                parameters["density"] = leaves[i].Breadcrumbs is { } step ? Value(step.Density) : 1.0;
                if (leaves[i].Breadcrumbs is { } withGamma) parameters["gamma"] = Value(withGamma.Gamma);
            }
            else if (name.StartsWith("dare_", StringComparison.Ordinal)) parameters["density"] = Value(MergeRecipeMaps.Complement(leaves[i].Dare!.DropRate));
            else if (merge?.KeepRatios is { } keep && method == MergeMethod.Ties) parameters["density"] = Value(keep[i]);
            // An adapter as mergekit spells it: base+adapter.
            var entry = leaves[i].FineTuned is { } model ? Name(model)
                : leaves[i].LoraAdapters is [var adapter] ? $"{Name(vector.Base)}+{adapter.Path}" : leaves[i].Name;
            models.Add(new Dictionary<string, object?> { ["model"] = entry, ["parameters"] = parameters });
        }
        if (method is PassthroughMethod) PassthroughInMergekitTerms(vector, config, Name);
        else if (vector.Base.Slices is { } slices)
        {
            // A slice merge as the user wrote it: slices of sources with their layer ranges, the first slice's model as base.
            config["base_model"] = Name(slices[0].Model);
            config["slices"] = RecipeWriter.SliceList(vector, slices, models, null, Name);
        }
        else config["models"] = models;
        var global = new Dictionary<string, object?>();
        if (merge is not null && method.Parameters.Contains(CommonParameters.Normalize)) global["normalize"] = merge.Normalize;
        if (merge is not null && name != "linear") global["lambda"] = merge.Lambda;
        // mergekit's rescale: true matches the L1 norm; Dare's 1/(1 − p) rescale has no mergekit spelling (see dare_recipe.yml).
        if (allDare && leaves.All(l => l.Dare!.Rescale == DareRescale.L1)) global["rescale"] = true;
        // The method's own global settings (slerp's t, ram's epsilon, ...) under mergekit's keys; sign_method is Dare's.
        foreach (var spec in method.Parameters.Where(p => p.Scope == ParameterScope.Merge && p.Key is not ("normalize" or "lambda" or "sign_method")))
        {
            if (merge is not null && method.MergeValue(merge, spec.Key) is { } value) global[spec.Key] = value is TensorParameter t ? Value(t) : value;
        }
        if (global.Count > 0) config["parameters"] = global;
        if (outputDType is { } dtype) config["dtype"] = dtype.TorchDTypeName();
        if (!vector.Tokenizer.IsPlainBase)
        {
            config["tokenizer_source"] = vector.Tokenizer.Kind switch
            {
                TokenizerSourceKind.Model => references is not null && references.TryGetValue(vector.Tokenizer.Model!, out var written) ? written : vector.Tokenizer.Model,
                var kind => kind.ToString().ToLowerInvariant(),
            };
        }
        var header = "# This merge in mergekit's terms, written by Dare. dare_recipe.yml replays it bit for bit (seeds, streams, rescale).\n";
        return header + new SerializerBuilder().Build().Serialize(config);
    }

    /// <summary>passthrough has no base_model: one model (or slices of sources with their layer ranges), each with its scale if given.</summary>
    private static void PassthroughInMergekitTerms(TaskVector vector, Dictionary<string, object?> config, Func<Checkpoint, string> name)
    {
        config.Remove("base_model");
        var scale = vector.Merge?.Setting(PassthroughMethod.Scale.Key);
        if (vector.Base.Slices is { } slices)
        {
            config["slices"] = RecipeWriter.SliceList(vector, slices, new List<object>(), scale, name);
            return;
        }
        var model = new Dictionary<string, object?> { ["model"] = name(vector.Base) };
        if (RecipeWriter.PassthroughParameters(scale, 0) is { Count: > 0 } parameters) model["parameters"] = parameters;
        config["models"] = new List<object> { model };
    }

    /// <summary>README.md: front matter (base_model: the base and the merged models, tags, base_model_relation: merge) and the configuration.</summary>
    public static string ModelCard(TaskVector vector, string mergekitConfig, IReadOnlyDictionary<string, string>? references = null)
    {
        string Name(Checkpoint model) => references is not null && references.TryGetValue(model.Path, out var written) ? written : model.Name;
        // A stack of slices (a frankenmerge, or one position of a slice merge) is named by its source models.
        static IEnumerable<Checkpoint> Expand(Checkpoint c) => c.Slices is { } slices ? slices.Select(s => s.Model) : new[] { c };
        var baseName = Name(Expand(vector.Base).First());
        var leaves = vector.IsMerged ? vector.Inputs : new[] { vector };
        var models = Expand(vector.Base).Skip(1).Concat(leaves.Where(l => l.FineTuned is not null).SelectMany(l => Expand(l.FineTuned!)))
            .Select(Name).Distinct().ToList();
        var card = new StringBuilder();
        card.Append("---\nbase_model:\n");
        foreach (var model in models.Prepend(baseName).Distinct()) card.Append("- ").Append(Quoted(model)).Append('\n');
        card.Append("base_model_relation: merge\nlibrary_name: transformers\ntags:\n- merge\n- mergekit\n- dare\n---\n");
        // The title names the inputs, not the output folder, so the same merge written to two folders is byte-identical.
        card.Append($"# Merge of {string.Join(", ", models)} onto {baseName}\n\nThis model is a merge of pre-trained language models made with Dare (DARE, TIES and linear task-vector merging with mergekit-compatible recipes).\n\n");
        card.Append($"## Merge details\n\nBase model: {baseName}\n\nModels merged:\n\n");
        foreach (var model in models) card.Append("- ").Append(model).Append('\n');
        card.Append("\n## Configuration\n\nThe merge in mergekit's terms (mergekit_config.yml):\n\n```yaml\n").Append(mergekitConfig.TrimEnd()).Append("\n```\n\n");
        card.Append("dare_recipe.yml beside it reproduces the merge bit for bit with `Invoke-DareMerge -ConfigPath dare_recipe.yml -OutputPath <folder>`.\n");
        return card.ToString();
    }

    private static string Quoted(string text) => "\"" + text.Replace("\\", "\\\\").Replace("\"", "\\\"") + "\"";

    private static object Value(TensorParameter parameter) => parameter switch
    {
        ConstantParameter c => c.Value,
        GradientParameter g => g.Points.ToList(),
        RuleParameter r => r.Rules.Select(rule => (object)new Dictionary<string, object?> { ["filter"] = rule.Filter, ["value"] = Value(rule.Value) })
            .Append(new Dictionary<string, object?> { ["value"] = Value(r.Default) }).ToList(),
        _ => throw new ArgumentOutOfRangeException(nameof(parameter), parameter.GetType().Name),
    };
}

/// <summary>Maps over per-tensor parameters (density = 1 − drop rate).</summary>
internal static class MergeRecipeMaps
{
    public static TensorParameter Complement(TensorParameter dropRate) => RecipeSetting.MapParameter(dropRate, p => Math.Round(1 - p, 12));
}
