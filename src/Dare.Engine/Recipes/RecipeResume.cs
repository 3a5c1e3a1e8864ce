using Dare.Engine.Merge;

namespace Dare.Engine.Recipes;

/// <summary>
/// Invoke-DareMerge -SkipExisting: an output folder that already holds a completed export of the same recipe is
/// kept, so an interrupted batch resumes where it stopped. Exports are atomic (written beside the folder, then
/// renamed into place), so a folder with weights and a dare_recipe.yml is a finished one.
/// </summary>
internal static class RecipeResume
{
    /// <summary>
    /// Whether <paramref name="plan"/>'s output folder already holds its export. A folder holding a different model
    /// is an error unless <paramref name="force"/> (then it is replaced as usual); one without a finished export is written.
    /// </summary>
    public static bool AlreadyWritten(BatchPlan batchPlan, int index, MergePlan plan, bool force)
    {
        var destination = plan.Export.Destination;
        var recipeFile = Path.Combine(destination, MergeExecutor.RecipeFileName);
        var hasWeights = File.Exists(Path.Combine(destination, "model.safetensors")) || File.Exists(Path.Combine(destination, "model.safetensors.index.json"));
        if (!File.Exists(recipeFile) || !hasWeights) return false;

        var redone = plan.ReadsOutputsOf.Where(p => !batchPlan.Plans[p].AlreadyWritten).ToList();
        string why;
        if (redone.Count > 0)
        {
            why = $"it was made from the output of {string.Join(", ", redone.Select(p => $"'{batchPlan.Batch.Recipes[p].DisplayName}'"))}, which is written again in this run";
        }
        else
        {
            // Until now the plan read stand-ins for earlier outputs; the recipe it writes names the real ones.
            var actual = plan.ReadsOutputsOf.Count == 0 ? plan : RecipePlanner.PlanRecipe(batchPlan, index, standIns: false);
            var changed = Canonical(File.ReadAllText(recipeFile), plan.UsesDefaultSeed) == Canonical(actual.Export.RecipeYaml ?? "", plan.UsesDefaultSeed)
                ? InputFingerprints.Differences(RecipeParser.ParseFile(recipeFile).Recipes[0].RecordedInputs ?? Array.Empty<RecordedInput>(), destination) : null;
            if (changed is { Count: 0 }) return true;
            why = changed is null ? $"its {MergeExecutor.RecipeFileName} describes a different merge"
                : $"it was made from inputs that have changed since ({changed[0].Difference})";
        }
        if (force) return false;
        throw RecipeParser.Error(DareErrorId.OutputExists, DareErrorKind.ResourceExists, plan.Recipe.OutputPathLocation ?? plan.Recipe.Location,
            $"-SkipExisting keeps only outputs of this very recipe, but '{destination}' holds another model: {why}. Use -Force to replace it, or remove it.");
    }

    /// <summary>
    /// The recipe without comments (they name the Dare version), without the recorded inputs (checked on their own), and
    /// without seeds when the run draws its own.
    /// </summary>
    private static string Canonical(string yaml, bool ignoreSeeds)
    {
        var kept = new List<string>();
        var inInputs = false;
        foreach (var line in yaml.ReplaceLineEndings("\n").Split('\n'))
        {
            // dare_inputs is the last top-level key; its entries are indented or start with '-'.
            inInputs = line.StartsWith(InputFingerprints.Key + ":", StringComparison.Ordinal) || inInputs && (line.StartsWith('-') || line.StartsWith(' '));
            if (inInputs || line.TrimStart().StartsWith('#') || ignoreSeeds && line.TrimStart().StartsWith("random_seed:", StringComparison.Ordinal)) continue;
            kept.Add(line);
        }
        return string.Join('\n', kept);
    }
}
