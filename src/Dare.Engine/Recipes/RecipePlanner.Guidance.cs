using Dare.Engine.Merge;

namespace Dare.Engine.Recipes;

public static partial class RecipePlanner
{
    /// <summary>
    /// The DARE guidance's warnings for a planned recipe (<see cref="MergeMistakes.OfPlan"/>), each at the place in the
    /// recipe that causes it: the model's (or the global) key, else the model entry, else merge_method; a global key's warning once.
    /// </summary>
    private static IReadOnlyList<string> Guidance(MergeRecipe recipe, IReadOnlyList<RecipeModelEntry> entries, TaskVector merged) =>
        MergeMistakes.OfPlan(merged).Select(w => $"{LocationOf(recipe, entries, w)}: {w.Message}").Distinct().ToList();

    private static RecipeLocation LocationOf(MergeRecipe recipe, IReadOnlyList<RecipeModelEntry> entries, GuidanceWarning warning)
    {
        var keys = warning.Id switch
        {
            GuidanceWarningId.NoRescale => new[] { "rescale" },
            GuidanceWarningId.SharedMask => new[] { "mask_stream", "random_seed" },
            GuidanceWarningId.SingleModelDare => Array.Empty<string>(),
            _ => new[] { "drop_rate", "density" },
        };
        // A shared mask is reported at the last model of the group: the one that repeats an earlier one's mask.
        var index = warning.Inputs.Count > 0 ? warning.Inputs[^1] : -1;
        var entry = index >= 0 && index < entries.Count ? entries[index] : null;
        foreach (var key in keys)
        {
            if (entry is not null && entry.Parameters.Locations.TryGetValue(key, out var own)) return own;
            if (recipe.Parameters.Locations.TryGetValue(key, out var global)) return global;
        }
        return warning.Id == GuidanceWarningId.SingleModelDare ? recipe.MethodLocation : entry?.Location ?? recipe.MethodLocation;
    }
}
