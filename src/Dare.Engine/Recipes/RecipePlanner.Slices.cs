using Dare.Engine.Merge;
using Dare.Engine.Safetensors;

namespace Dare.Engine.Recipes;

public static partial class RecipePlanner
{
    /// <summary>
    /// <c>slices:</c> as stacks (<see cref="Checkpoint.Stack"/>): source position j of every slice forms stack j, so a
    /// slice merge is the usual merge of whole (stacked) models. Stacks are matched by position, as mergekit pairs a
    /// slice's sources; the base is the stack whose sources are base_model (the same position in every slice).
    /// Per-source parameters are read from the first slice (passthrough reads each slice's own scale).
    /// </summary>
    private static (Checkpoint Base, string BaseFullPath, List<(RecipeModelEntry Entry, ModelReference Reference, Checkpoint Checkpoint)> Models) StackSlices(
        MergeRecipe recipe, RecipeForm form, ModelReference? baseReference, List<List<(RecipeSliceSource Source, ModelReference Reference)>> slices,
        Func<ModelReference, Checkpoint> open)
    {
        var width = slices[0].Count;
        for (var s = 0; s < slices.Count; s++)
        {
            var slice = recipe.Slices![s];
            if (slices[s].Count != width)
            {
                throw RecipeParser.Error(DareErrorId.RecipeUnsupported, DareErrorKind.NotImplemented, slice.Location,
                    $"has {slices[s].Count} sources but the first slice has {width}; Dare merges the slices' sources position by position, so every slice needs as many.");
            }
            if (form.Method is PassthroughMethod && width != 1)
            {
                throw RecipeParser.Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, slice.Location,
                    $"has {width} sources; passthrough takes each slice from exactly one source (as in mergekit).");
            }
            var lengths = slice.Sources.Select(x => x.LayerEnd - x.LayerStart).Distinct().ToList();
            if (lengths.Count > 1)
            {
                throw RecipeParser.Error(DareErrorId.LayerRangeInvalid, DareErrorKind.InvalidData, slice.Sources[0].RangeLocation,
                    $"spans {lengths[0]} layers but another source of this slice spans {lengths[1]}; all sources of a slice must have the same number of layers.");
            }
            if (s > 0 && form.Method is not PassthroughMethod && slice.Sources.FirstOrDefault(x => x.Parameters.Locations.Count > 0) is { } later)
            {
                throw RecipeParser.Error(DareErrorId.RecipeUnsupported, DareErrorKind.NotImplemented, later.Parameters.Locations.Values.First(),
                    "per-source parameters are read from the first slice only; give them there or at the top level.");
            }
        }
        var stacks = new List<Checkpoint>();
        for (var j = 0; j < width; j++)
        {
            var parts = slices.Select(slice => new CheckpointSlice(open(slice[j].Reference), slice[j].Source.LayerStart, slice[j].Source.LayerEnd)).ToList();
            try
            {
                stacks.Add(Checkpoint.Stack(parts));
            }
            catch (DareException ex)
            {
                var failing = slices.Select(slice => slice[j]).FirstOrDefault(x => ex.FilePath is not null && PathComparer.Equals(x.Reference.FullPath, ex.FilePath)).Source ?? slices[0][j].Source;
                throw RecipeParser.Error(ex.ErrorId, ex.Kind, failing.RangeLocation, ex.Message, ex);
            }
        }
        var baseRole = 0;
        if (baseReference is not null)
        {
            baseRole = slices[0].FindIndex(x => PathComparer.Equals(x.Reference.FullPath, baseReference.FullPath));
            if (baseRole < 0 || slices.Any(slice => !PathComparer.Equals(slice[baseRole].Reference.FullPath, baseReference.FullPath)))
            {
                throw RecipeParser.Error(DareErrorId.RecipeUnsupported, DareErrorKind.NotImplemented, recipe.BaseModelLocation!,
                    "must be one of the sources of every slice, at the same position in each (Dare merges the slices' sources position by position).");
            }
        }
        var roles = Enumerable.Range(0, width).Where(j => !form.NeedsBase || j != baseRole).ToList();
        if (roles.Count == 0)
        {
            throw RecipeParser.Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, recipe.Slices![0].Location, "has only the base model as a source; there is nothing to merge into it.");
        }
        var models = roles.Select(j =>
        {
            var (source, reference) = slices[0][j];
            return (new RecipeModelEntry { Model = source.Model, Location = source.Location, Parameters = source.Parameters }, reference, stacks[j]);
        }).ToList();
        return (stacks[baseRole], stacks[baseRole].Path, models);
    }

    /// <summary>passthrough's scale: per model (or per slice), else the global one; null when none is given (a plain copy).</summary>
    private static TensorParameter? PassthroughScale(MergeRecipe recipe, Checkpoint model, List<(RecipeModelEntry Entry, ModelReference Reference, Checkpoint Checkpoint)> models)
    {
        var global = recipe.Parameters.Setting(PassthroughMethod.Scale.Key)?.ToParameter(null);
        if (recipe.Slices is { } slices)
        {
            var perSlice = slices.Select(slice => slice.Sources[0].Parameters.Setting(PassthroughMethod.Scale.Key) is { } own ? own.ToParameter(global) : global).ToList();
            return perSlice.All(p => p is null) ? null : new SliceParameter(model, perSlice);
        }
        if (models.Count != 1 || (recipe.BaseModel is not null && !ReferenceEquals(models[0].Checkpoint, model)))
        {
            throw RecipeParser.Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, recipe.MethodLocation,
                $"passthrough copies exactly one model (as in mergekit); this recipe gives {models.Count + (ReferenceEquals(models[0].Checkpoint, model) ? 0 : 1)}. Use slices to stack layers of several models.");
        }
        var ownScale = models[0].Entry.Parameters.Setting(PassthroughMethod.Scale.Key);
        return ownScale is null ? global : ownScale.ToParameter(global);
    }
}
