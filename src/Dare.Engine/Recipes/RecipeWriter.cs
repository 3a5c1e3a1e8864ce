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
    private static int s_warmUpStarted;

    /// <summary>
    /// Serializes a small recipe-shaped tree once on a thread-pool thread: an export writes its recipe before its first
    /// byte, and YamlDotNet's first use in a process (loading it, compiling its serializer) took ~60 ms of a medium
    /// merge here. Started by the session's first cmdlet, it runs beside that cmdlet's own work. Once per process; a
    /// failure only leaves the first export to pay as before.
    /// </summary>
    public static void WarmUpInBackground()
    {
        if (Interlocked.Exchange(ref s_warmUpStarted, 1) != 0) return;
        ThreadPool.QueueUserWorkItem(_ =>
        {
            try
            {
                var model = new Dictionary<string, object?> { ["model"] = "m", ["parameters"] = new Dictionary<string, object?> { ["weight"] = 0.5, ["density"] = 1L } };
                new SerializerBuilder().Build().Serialize(new Dictionary<string, object?> { ["models"] = new List<object?> { model }, ["normalize"] = true });
            }
            catch (Exception)
            {
                // Nothing depends on the warm-up.
            }
        });
    }

    public static string ToYaml(TaskVector vector, SafetensorsDType? outputDType = null, long? maxShardSize = null, bool deltaOnly = false, ComputeDevice? device = null)
    {
        var inputs = vector.IsMerged ? vector.Inputs : new[] { vector };
        var merge = vector.Merge;
        var drops = inputs.Select(DropStep.Of).ToList();
        var dropInputs = drops.OfType<DropStep>().ToList();
        var sharedSeed = dropInputs.Select(d => d.Seed).Distinct().Count() == 1 ? dropInputs[0].Seed : (long?)null;
        var sharedRescale = dropInputs.Select(d => (d.Rescale, d.Q)).Distinct().Count() == 1 ? (dropInputs[0].Rescale, dropInputs[0].Q) : ((DareRescale, double)?)null;

        // A single vector is written as task_arithmetic of one model at weight 1; DELLA steps make the merge della or della_linear.
        var method = merge?.Method ?? MergeMethod.Linear;
        var della = inputs.Any(i => i.Della is not null);
        var breadcrumbs = inputs.Any(i => i.Breadcrumbs is not null);
        if (della && breadcrumbs || (della || breadcrumbs) && inputs.Any(i => i.Dare is not null))
        {
            throw new DareException(DareErrorId.RecipeUnsupported, DareErrorKind.NotImplemented,
                "A recipe cannot express one merge of inputs pruned by different steps (DARE, DELLA, breadcrumbs); prune every input the same way.");
        }
        var recipeName = della ? PruneRecipeName("della", method, merge) : breadcrumbs ? PruneRecipeName("breadcrumbs", method, merge)
            : merge is null ? "task_arithmetic" : method.RecipeName(merge);
        var form = MergeMethods.FindRecipeForm(recipeName)!;
        var recipe = new Dictionary<string, object?> { ["merge_method"] = recipeName };
        // Whole-weight nuslerp/multislerp have no base_model: the first model anchors the δs, as the planner takes it.
        if (!(form.BaseIsOptional && merge is { WholeWeights: true })) recipe["base_model"] = vector.Base.Path;
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
            if (input.Dare is { } dare) parameters["drop_rate"] = Value(dare.DropRate);
            if (della) parameters["density"] = input.Della is { } d ? Value(d.Density) : 1.0;
            if (input.Della is { } dellaStep) parameters["epsilon"] = Value(dellaStep.Epsilon);
            if (breadcrumbs) parameters["density"] = input.Breadcrumbs is { } crumbs ? Value(crumbs.Density) : 1.0;
            if (input.Breadcrumbs is { } breadcrumbsStep) parameters["gamma"] = Value(breadcrumbsStep.Gamma);
            if (drops[i] is { } drop)
            {
                if (sharedSeed is null) parameters["random_seed"] = drop.Seed;
                if (drop.Stream != i) parameters["mask_stream"] = drop.Stream;
                if (sharedRescale is null) WriteRescale(parameters, drop.Rescale, drop.Q);
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
        if (sharedRescale is { } rescale) WriteRescale(global, rescale.Item1, rescale.Item2);
        foreach (var spec in method.Parameters.Where(p => p.Scope == ParameterScope.Merge && p.Key is not ("normalize" or "lambda")))
        {
            if (merge is not null && method.MergeValue(merge, spec.Key) is { } value) global[spec.Key] = value is TensorParameter t ? Value(t) : value;
        }
        recipe["parameters"] = global;
        if (sharedSeed is { } seed) recipe["random_seed"] = seed;
        if (Tokenizer(vector.Tokenizer) is { } tokenizer) recipe[tokenizer.Key] = tokenizer.Value;
        if (AllParameters(vector).Any(p => p is GradientParameter { OutsideLayers: GradientOutsideLayers.EmbeddingsFirstOthersLast })) recipe["gradient_outside_layers"] = "legacy";
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
        // Only a device other than the default is written; the merged bytes are the same on every device.
        if (device is { UsesTorchBackend: true }) recipe["device"] = device.Name;

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

    /// <summary>tokenizer_source: union | a path, or the tokenizer: section when it has padding or token overrides; null for the base's vocabulary.</summary>
    private static (string Key, object Value)? Tokenizer(TokenizerChoice choice)
    {
        if (choice.IsPlainBase) return null;
        var source = choice.Kind == TokenizerSourceKind.Model ? choice.Model! : choice.Kind.ToString().ToLowerInvariant();
        if (choice.PadToMultipleOf is null && choice.Tokens.Count == 0) return ("tokenizer_source", source);
        var section = new Dictionary<string, object?> { ["source"] = source };
        if (choice.PadToMultipleOf is { } pad) section["pad_to_multiple_of"] = pad;
        if (choice.Tokens.Count > 0)
        {
            section["tokens"] = choice.Tokens.ToDictionary(e => e.Key, e => (object)new Dictionary<string, object?>
            {
                ["source"] = e.Value.Source switch
                {
                    { Zero: true } => new Dictionary<string, object?> { ["kind"] = "zero" },
                    { Token: null, TokenId: null } s => s.Model,
                    var s => s.TokenId is { } id
                        ? new Dictionary<string, object?> { ["kind"] = "model_token", ["model"] = s.Model, ["token_id"] = id }
                        : new Dictionary<string, object?> { ["kind"] = "model_token", ["model"] = s.Model, ["token"] = s.Token },
                },
                ["force"] = e.Value.Force,
            }, StringComparer.Ordinal);
        }
        return ("tokenizer", section);
    }

    /// <summary>Every per-tensor parameter of the plan (weights, keep ratios, drop steps' values, method settings), rules opened up.</summary>
    private static IEnumerable<TensorParameter> AllParameters(TaskVector vector)
    {
        var merge = vector.Merge;
        var top = (merge?.Weights ?? Array.Empty<TensorParameter>()).Concat(merge?.KeepRatios ?? Array.Empty<TensorParameter>())
            .Concat(merge?.Settings.Values ?? Enumerable.Empty<TensorParameter>())
            .Concat(vector.Leaves.Where(l => l.Dare is not null).Select(l => l.Dare!.DropRate))
            .Concat(vector.Leaves.Where(l => l.Della is not null).SelectMany(l => new[] { l.Della!.Density, l.Della.Epsilon }))
            .Concat(vector.Leaves.Where(l => l.Breadcrumbs is not null).SelectMany(l => new[] { l.Breadcrumbs!.Density, l.Breadcrumbs.Gamma }));
        return top.SelectMany(Open);
        static IEnumerable<TensorParameter> Open(TensorParameter p) => p is RuleParameter r ? r.Rules.SelectMany(x => Open(x.Value)).Concat(Open(r.Default)).Prepend(p) : new[] { p };
    }

    /// <summary>A model's drop step (DARE or DELLA) as the recipe records it: seed, stream and rescale.</summary>
    private sealed record DropStep(long Seed, int Stream, DareRescale Rescale, double Q)
    {
        public static DropStep? Of(TaskVector input) =>
            input.Dare is { } dare ? new DropStep(dare.Seed, dare.Stream, dare.Rescale, dare.Q)
            : input.Della is { } della ? new DropStep(della.Seed, della.Stream, della.Rescale, della.Q) : null;
    }

    /// <summary>
    /// della / breadcrumbs_ties for sign election without trim, della_linear / breadcrumbs for a weighted sum; anything
    /// else has no recipe spelling.
    /// </summary>
    internal static string PruneRecipeName(string family, MergeMethod method, MergeOptions? merge)
    {
        var (ties, linear) = family == "della" ? ("della", "della_linear") : ("breadcrumbs_ties", "breadcrumbs");
        if (merge is null || method == MergeMethod.Linear) return linear;
        if (method == MergeMethod.Ties && merge.KeepRatios!.All(k => k is ConstantParameter { Value: 1.0 })) return ties;
        throw new DareException(DareErrorId.RecipeUnsupported, DareErrorKind.NotImplemented,
            $"A recipe cannot express {family} steps merged by {method.Name}{(method == MergeMethod.Ties ? " with a keep ratio below 1" : "")}: " +
            $"recipes spell them as {ties} (sign election, keep ratio 1) or {linear}. Merge with Merge-Ties -KeepRatio 1 or Merge-Linear.");
    }

    private static void WriteRescale(Dictionary<string, object?> parameters, DareRescale rescale, double q)
    {
        parameters["rescale"] = rescale switch
        {
            DareRescale.InverseKeep => true,
            DareRescale.L1 => "l1",
            DareRescale.Q => "q",
            _ => false,
        };
        if (rescale == DareRescale.Q) parameters["rescale_q"] = q;
    }

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
