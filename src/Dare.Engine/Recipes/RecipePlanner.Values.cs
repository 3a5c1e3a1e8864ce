using Dare.Engine.Merge;
using Dare.Engine.Safetensors;

namespace Dare.Engine.Recipes;

/// <summary>The recipe's values checked by the parameters' declarations, and the method's own settings gathered.</summary>
public static partial class RecipePlanner
{
    /// <summary>
    /// Range checks on every value as written, by each parameter's declaration, so the error points at the offending
    /// setting; settings the method ignores are warnings, as mergekit ignores them.
    /// </summary>
    private static void CheckValues(MergeRecipe recipe, bool normalize, List<string> warnings, RecipeDiagnostics mistakes)
    {
        var form = recipe.Method;
        var method = form.Name;
        var blocks = recipe.Models.Select(m => m.Parameters)
            .Concat((recipe.Slices ?? Array.Empty<RecipeSlice>()).SelectMany(s => s.Sources).Select(source => source.Parameters)).Prepend(recipe.Parameters);
        foreach (var parameters in blocks)
        {
            if (!ReferenceEquals(parameters, recipe.Parameters))
            {
                // A key another method takes per model (DELLA's epsilon) may still be merge-wide under this one (ram's).
                foreach (var key in parameters.Locations.Keys.Where(k => SpecFor(form, k) is { Scope: ParameterScope.Merge }))
                {
                    mistakes.Add(RecipeParser.Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, parameters.Locations[key],
                        $"'{key}' applies to the whole merge with {method}; put it under the top-level 'parameters:', not under a model."));
                }
            }
            foreach (var (key, setting) in parameters.Settings)
            {
                if (SpecFor(form, key) is { } spec) mistakes.Try(() => Check(setting, spec));
            }
            foreach (var (key, value) in parameters.Values)
            {
                if (value is double or long && SpecFor(form, key)?.Problem(Convert.ToDouble(value, System.Globalization.CultureInfo.InvariantCulture)) is { } problem)
                {
                    mistakes.Add(RecipeParser.Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, parameters.Locations[key], problem + "."));
                }
            }
            if (normalize && parameters.Weight is { } weight && form.Accepts("weight"))
            {
                mistakes.Try(() => Check(weight, w => w >= 0, "weights must not be negative when normalize is true (their sum could be zero or flip the sign); set normalize: false"));
            }
            if (form.DensityIsDareKeep && parameters.Density is not null && parameters.DropRate is not null)
            {
                mistakes.Add(RecipeParser.Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, parameters.DropRate.Location,
                    $"give density or drop_rate, not both: with {method}, drop_rate = 1 − density."));
            }
            if (form.PrunesEachInput && parameters.DropRate is not null)
            {
                mistakes.Add(RecipeParser.Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, parameters.DropRate.Location,
                    $"{method} prunes with {(form.DensityIsDellaKeep ? "DELLA's MagPrune (density, epsilon)" : "Model Breadcrumbs (density, gamma)")}; drop_rate (DARE) does not combine with it."));
            }
            foreach (var key in parameters.Locations.Keys.Where(k => k != "int8_mask" && !form.Accepts(k) && !(k == "drop_rate" && form.PrunesEachInput)))
            {
                warnings.Add($"{parameters.Locations[key]}: " + key switch
                {
                    "density" => $"has no effect with merge_method {method} (mergekit ignores it too); for DARE use dare_linear, or drop_rate.",
                    "lambda" => $"has no effect with merge_method {method} (mergekit ignores it too); for base + λ·(weighted mean of task vectors) use task_arithmetic with normalize: true.",
                    "sign_method" => $"has no effect with merge_method {method}; only ties and dare_ties elect signs.",
                    _ => $"has no effect with merge_method {method}; it takes {string.Join(", ", form.Method.Parameters.Select(p => p.Key))}.",
                });
            }
        }
    }

    /// <summary>The declaration of <paramref name="key"/> under this recipe name (density is DARE's keep fraction under the dare_* names).</summary>
    private static ParameterSpec? SpecFor(RecipeForm form, string key) =>
        form.DensityIsDareKeep && key == "density" ? DareDropParameters.KeepFraction
        : form.DensityIsDellaKeep && key == "density" ? DellaDropParameters.Density
        : form.DensityIsDellaKeep && key == "epsilon" ? DellaDropParameters.Epsilon
        : form.DensityIsBreadcrumbsKeep && key == "density" ? BreadcrumbsParameters.Density
        : form.Method.Parameters.FirstOrDefault(p => p.Key == key) ?? MergeMethods.AllParameters.FirstOrDefault(p => p.Key == key);

    private static void Check(RecipeSetting setting, ParameterSpec spec)
    {
        var values = setting.Rules.SelectMany(r => r.Value.PossibleValues).Concat(setting.Fallback?.PossibleValues ?? Array.Empty<double>());
        foreach (var value in values)
        {
            if (spec.Problem(value) is { } problem) throw RecipeParser.Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, setting.Location, problem + ".");
        }
    }

    /// <summary>normalize divides by Σ wᵢ at each tensor: a tensor where the weights sum to 0 stops the plan, naming the tensor (the executor would stop there too).</summary>
    private static void CheckWeightSums(MergeRecipe recipe, Checkpoint @base, IReadOnlyList<TensorParameter> weights)
    {
        var layout = ModelLayout.Of(@base);
        foreach (var tensor in @base.Tensors.Where(t => t.DType.IsMergeable()))
        {
            var position = layout.Position(tensor.Name);
            // As the merge computes it: each weight in float32, summed in double.
            if (weights.Sum(w => (double)(float)w.Resolve(position)) != 0) continue;
            throw RecipeParser.Error(DareErrorId.WeightSumZero, DareErrorKind.InvalidData, recipe.Parameters.Weight?.Location ?? recipe.MethodLocation,
                $"the weights sum to 0 at tensor '{tensor.Name}', so they cannot be normalized; give a non-zero weight there or set normalize: false.");
        }
    }

    private static void Check(RecipeSetting? setting, Func<double, bool> valid, string rule)
    {
        if (setting is null) return;
        var values = setting.Rules.SelectMany(r => r.Value.PossibleValues).Concat(setting.Fallback?.PossibleValues ?? Array.Empty<double>());
        foreach (var value in values)
        {
            if (!valid(value))
            {
                throw RecipeParser.Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, setting.Location, $"{rule}; {value.ToString(System.Globalization.CultureInfo.InvariantCulture)} does not.");
            }
        }
    }

    /// <summary>The method's own merge-wide per-tensor parameters (beyond weight, density, normalize, λ and sign_method, e.g. nearswap's t), required where no default is declared.</summary>
    private static IReadOnlyDictionary<string, TensorParameter> MethodSettings(MergeRecipe recipe)
    {
        var settings = new Dictionary<string, TensorParameter>();
        foreach (var spec in recipe.Method.Method.Parameters.Where(p => p is { Scope: ParameterScope.Merge, Kind: ParameterKind.Boolean or ParameterKind.Integer } && p.Key != "normalize"))
        {
            // Flags and counts are single values, kept as 1/0 or the count (the method reads them with Flag or Resolve).
            object? given = recipe.Parameters.Values.GetValueOrDefault(spec.Key) ?? spec.Default;
            if (given is not null) settings[spec.Key] = new ConstantParameter(given is bool on ? (on ? 1 : 0) : Convert.ToDouble(given, System.Globalization.CultureInfo.InvariantCulture));
        }
        foreach (var spec in recipe.Method.Method.Parameters.Where(p => p is { Scope: ParameterScope.Merge, Kind: ParameterKind.Number } && p.Key != "lambda"))
        {
            TensorParameter? value = spec.VariesByTensor
                ? recipe.Parameters.Setting(spec.Key)?.ToParameter(spec.Default is double d ? d : null)
                : recipe.Parameters.Value<double>(spec.Key) is { } scalar ? scalar : null;
            value ??= spec.Default is double fallback ? fallback : null;
            settings[spec.Key] = Flatten(value ?? throw RecipeParser.Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, recipe.MethodLocation,
                $"{recipe.Method.Name} needs '{spec.Key}' under the top-level 'parameters:' ({spec.Description})"));
        }
        return settings;
    }

    /// <summary>
    /// The model's drop step (DARE, DELLA or breadcrumbs) added to its task vector; an out-of-range combination
    /// (density ± epsilon outside (0, 1), rescale: q without its q) is reported where the value is written.
    /// </summary>
    private static TaskVector WithDropStep(TaskVector vector, ResolvedModel resolved, RecipeForm form, MergeRecipe recipe, RecipeModelEntry entry)
    {
        // A method that takes no transforms (passthrough) gets no DARE step.
        var dareStep = form.Method.TakesTransforms ? resolved.Dare : null;
        if (dareStep is null && resolved.Della is null && resolved.Breadcrumbs is null) return vector;
        try
        {
            return dareStep is { } dare ? vector.WithDare(dare)
                : resolved.Della is { } della ? vector.WithDella(della) : vector.WithBreadcrumbs(resolved.Breadcrumbs!);
        }
        catch (DareException ex) when (ex.ErrorId == DareErrorId.InvalidParameter)
        {
            var where = new[] { entry.Parameters, recipe.Parameters }
                .SelectMany(p => new[] { "epsilon", "density", "rescale_q", "rescale", "drop_rate" }.Where(p.Has).Select(k => p.Locations[k])).FirstOrDefault();
            throw RecipeParser.Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, where ?? entry.Location, ex.Message);
        }
    }
}
