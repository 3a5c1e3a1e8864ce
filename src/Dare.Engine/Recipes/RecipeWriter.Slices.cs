using Dare.Engine.Merge;
using Dare.Engine.Safetensors;

namespace Dare.Engine.Recipes;

public static partial class RecipeWriter
{
    /// <summary>
    /// A stacked merge written back as mergekit's <c>slices:</c>: slice s lists, per stack (the base's first where it is
    /// not an input, then the inputs'), that stack's source model and layer_range for s. Per-source parameters go in the
    /// first slice, where the planner reads them; passthrough writes each slice's own scale.
    /// </summary>
    /// <remarks><paramref name="name"/> spells each source model (its path here; the user's reference in mergekit_config.yml).</remarks>
    internal static List<object> SliceList(TaskVector vector, IReadOnlyList<CheckpointSlice> slices, List<object> models, TensorParameter? scale, Func<Checkpoint, string>? name = null)
    {
        name ??= model => model.Path;
        var passthrough = vector.Merge?.Method is PassthroughMethod;
        var inputs = vector.IsMerged ? vector.Inputs : new[] { vector };
        var stacks = new List<(Checkpoint Stack, object? Parameters)>();
        if (passthrough)
        {
            stacks.Add((vector.Base, null));
        }
        else
        {
            if (!inputs.Any(i => ReferenceEquals(i.FineTuned, vector.Base))) stacks.Add((vector.Base, new Dictionary<string, object?>()));
            stacks.AddRange(inputs.Select((input, i) => (input.FineTuned!, ((Dictionary<string, object?>)models[i])["parameters"])));
        }
        return slices.Select((_, s) => (object)new Dictionary<string, object?>
        {
            ["sources"] = stacks.Select(stack =>
            {
                var part = stack.Stack.Slices![s];
                var source = new Dictionary<string, object?> { ["model"] = name(part.Model), ["layer_range"] = new[] { part.Start, part.End } };
                var parameters = passthrough ? PassthroughParameters(scale, s) : s == 0 ? stack.Parameters : null;
                if (parameters is Dictionary<string, object?> { Count: > 0 }) source["parameters"] = parameters;
                return (object)source;
            }).ToList(),
        }).ToList();
    }

    /// <summary>passthrough's scale for slice <paramref name="slice"/> (or the one model), or nothing when none is given.</summary>
    internal static Dictionary<string, object?> PassthroughParameters(TensorParameter? scale, int slice)
    {
        var value = scale is SliceParameter perSlice ? perSlice.PerSlice[slice] : scale;
        return value is null ? new Dictionary<string, object?>() : new Dictionary<string, object?> { [PassthroughMethod.Scale.Key] = Value(value) };
    }
}
