using Dare.Engine.Merge;
using Dare.Engine.Safetensors;

namespace Dare.Engine.Recipes;

/// <summary>Model references resolved and opened: paths, earlier recipes' outputs, their architectures and the output vocabulary.</summary>
public static partial class RecipePlanner
{
    private static ModelReference Resolve(BatchPlan batchPlan, int index, string text, RecipeLocation location)
    {
        var recipes = batchPlan.Batch.Recipes;
        var named = recipes.Select((r, i) => (r, i)).FirstOrDefault(x => x.r.Name == text);
        if (named.r is not null)
        {
            if (named.i < index) return new ModelReference(text, location, batchPlan.Outputs[named.i], named.i);
            throw RecipeParser.Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, location, named.i == index
                ? $"'{text}' is this recipe's own name; a recipe cannot merge its own output."
                : $"'{text}' is written by a later recipe; recipes in a batch run in order, so only earlier outputs can be used.");
        }
        var full = Path.GetFullPath(Path.Combine(batchPlan.Batch.BaseDirectory, text)).TrimEnd(Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar);
        for (var i = 0; i < recipes.Count; i++)
        {
            if (!PathComparer.Equals(batchPlan.Outputs[i], full)) continue;
            if (i < index) return new ModelReference(text, location, full, i);
            throw RecipeParser.Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, location, i == index
                ? $"'{full}' is also this recipe's output folder; write the merge somewhere else."
                : $"'{full}' is written by the later recipe '{recipes[i].DisplayName}'; recipes in a batch run in order.");
        }
        // org/name or org/name@revision that is not a local folder: the Hugging Face cache's snapshot.
        if (!Directory.Exists(full) && !File.Exists(full) && HubCache.LooksLikeId(text))
        {
            try
            {
                return new ModelReference(text, location, HubCache.Resolve(text), null);
            }
            catch (DareException ex)
            {
                throw RecipeParser.Error(ex.ErrorId, ex.Kind, location, ex.Message, ex);
            }
        }
        return new ModelReference(text, location, full, null);
    }

    private static Checkpoint OpenExisting(ModelReference reference, string baseDirectory)
    {
        RefuseAdapterAsModel(reference);
        try
        {
            return Checkpoint.Open(reference.FullPath);
        }
        catch (DareException ex)
        {
            var hint = ex.ErrorId == DareErrorId.PathNotFound
                ? $"'{reference.Text}' resolves to '{reference.FullPath}', which does not exist. Dare reads local model folders only (download Hugging Face models first); relative paths resolve against '{baseDirectory}'."
                : ex.Message;
            throw RecipeParser.Error(ex.ErrorId, ex.Kind, reference.Location, hint, ex);
        }
    }

    /// <summary>An earlier recipe's output: the written model, or before it exists its base (same tensors and config.json).</summary>
    private static Checkpoint OpenProduced(BatchPlan batchPlan, int producer, ModelReference reference, bool standIn)
    {
        var plan = batchPlan.Plans[producer];
        if (plan.Export.DeltaOnly)
        {
            throw RecipeParser.Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, reference.Location,
                $"'{plan.Recipe.DisplayName}' writes a delta (output.delta_only), not a model, so it cannot be merged as one.");
        }
        return standIn ? plan.Vector.Base : OpenExisting(reference, batchPlan.Batch.BaseDirectory);
    }

    private static void CheckArchitecture(Checkpoint @base, ModelReference baseReference, Checkpoint model, ModelReference modelReference)
    {
        foreach (var key in ArchitectureKeys)
        {
            var expected = @base.ConfigInt(key);
            var actual = model.ConfigInt(key);
            if (expected is not null && actual is not null && expected != actual)
            {
                throw RecipeParser.Error(DareErrorId.ArchitectureMismatch, DareErrorKind.InvalidData, modelReference.Location,
                    $"'{modelReference.Text}' has {key} {actual} in its config.json but the base '{baseReference.Text}' has {expected}; merged models must share the base's architecture ({string.Join(", ", ArchitectureKeys)}).");
            }
        }
    }

    /// <summary>
    /// A replay (a recipe with dare_inputs) stops before any model is opened when an input's files differ from those it
    /// recorded, since it would not reproduce the recorded merge; with <paramref name="allowChanged"/> each difference is a warning.
    /// </summary>
    private static void CheckRecordedInputs(MergeRecipe recipe, string baseDirectory, bool allowChanged, List<string> warnings)
    {
        if (recipe.RecordedInputs is not { } recorded) return;
        var differences = InputFingerprints.Differences(recorded, baseDirectory);
        if (differences.Count == 0) return;
        if (allowChanged)
        {
            warnings.AddRange(differences.Select(d => $"'{recipe.DisplayName}' replays with a changed input '{d.Input.Model}': {d.Difference} (-AllowChangedInputs)."));
            return;
        }
        var first = differences[0];
        var more = differences.Count > 1 ? $" ({differences.Count - 1} more: {string.Join("; ", differences.Skip(1).Take(3).Select(d => d.Difference))}{(differences.Count > 4 ? "; ..." : "")})" : "";
        throw RecipeParser.Error(DareErrorId.ReplayInputChanged, DareErrorKind.InvalidData, first.Input.Location,
            $"the input '{first.Input.Model}' changed since this recipe was written: {first.Difference}{more}. The replay would not reproduce the recorded merge, so nothing was written. " +
            "Restore the recorded files, or replay anyway with Invoke-DareMerge -AllowChangedInputs (or delete the recipe's dare_inputs section).");
    }

    /// <summary>The output vocabulary the recipe asks for, with model references resolved to the opened checkpoints' paths.</summary>
    private static TokenizerChoice TokenizerChoiceOf(MergeRecipe recipe, BatchPlan batchPlan, int index, Dictionary<string, Checkpoint> opened)
    {
        if (recipe.Tokenizer is not { } written) return TokenizerChoice.Base;
        string PathOf(string text, RecipeLocation location)
        {
            var reference = Resolve(batchPlan, index, text, location);
            if (!opened.TryGetValue(reference.FullPath, out var checkpoint))
            {
                throw RecipeParser.Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, location,
                    $"names '{text}', which is neither the base_model nor one of the models; a tokenizer or token source must be one of them.");
            }
            return checkpoint.Path;
        }
        var tokens = written.Tokens.ToDictionary(e => e.Key,
            e => new TokenOverride(e.Value.Source.Model is { } model ? e.Value.Source with { Model = PathOf(model, e.Value.Location) } : e.Value.Source, e.Value.Force), StringComparer.Ordinal);
        return new TokenizerChoice(written.Kind, written.Model is { } m ? PathOf(m, written.Location) : null) { PadToMultipleOf = written.PadToMultipleOf, Tokens = tokens };
    }
}
