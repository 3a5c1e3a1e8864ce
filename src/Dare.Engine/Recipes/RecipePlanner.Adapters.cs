using Dare.Engine.Adapters;
using Dare.Engine.Merge;
using Dare.Engine.Safetensors;

namespace Dare.Engine.Recipes;

/// <summary>LoRA adapters in recipes: model: base+adapter (mergekit) or lora: (Dare), planned as the adapter's task vector.</summary>
public static partial class RecipePlanner
{
    /// <summary>
    /// The adapter of a model entry (model: base+adapter, or lora:). Its δ is against the model it adapts, so that model
    /// must be the base: a LoRA on another fine-tune would be two deltas in one entry.
    /// </summary>
    private static LoraAdapter OpenAdapter(RecipeModelEntry entry, ModelReference model, string baseFullPath, string baseDirectory)
    {
        var location = entry.LoraLocation ?? entry.Location;
        if (!PathComparer.Equals(model.FullPath, baseFullPath))
        {
            throw RecipeParser.Error(DareErrorId.RecipeUnsupported, DareErrorKind.NotImplemented, location,
                $"the adapter '{entry.Lora}' is applied to '{model.Text}', which is not the base model; Dare merges an adapter as a task vector against the base it was trained on.");
        }
        var full = Path.GetFullPath(Path.Combine(baseDirectory, entry.Lora!));
        try
        {
            return LoraAdapter.Open(full);
        }
        catch (DareException ex)
        {
            throw RecipeParser.Error(ex.ErrorId, ex.Kind, location, ex.ErrorId == DareErrorId.PathNotFound
                ? $"the adapter '{entry.Lora}' resolves to '{full}', which does not exist (relative paths resolve against '{baseDirectory}')."
                : ex.Message, ex);
        }
    }

    /// <summary>The adapter's vector against the merge's output base (<paramref name="aligned"/>'s: the base, maybe re-rowed to another vocabulary).</summary>
    private static TaskVector FromAdapter(Checkpoint @base, TaskVector aligned, LoraAdapter adapter, RecipeModelEntry entry)
    {
        try
        {
            return TaskVector.FromAdapter(@base, adapter, aligned);
        }
        catch (DareException ex)
        {
            throw RecipeParser.Error(ex.ErrorId, ex.Kind, entry.LoraLocation ?? entry.Location, ex.Message, ex);
        }
    }

    /// <summary>An adapter folder given as a plain model would be read as a model of its own (its factors as weights).</summary>
    private static void RefuseAdapterAsModel(ModelReference reference)
    {
        if (!LoraAdapter.IsAdapter(reference.FullPath)) return;
        throw RecipeParser.Error(DareErrorId.AdapterInvalid, DareErrorKind.InvalidData, reference.Location,
            $"'{reference.Text}' is a LoRA adapter, not a model; write it as model: <base>+{reference.Text} (or model: <base> with lora: {reference.Text}).");
    }
}
