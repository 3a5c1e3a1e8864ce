using Dare.Engine.Safetensors;

namespace Dare.Engine.Merge;

/// <summary>
/// A parameter given per slice of a stack (<see cref="Checkpoint.Stack"/>): each output tensor takes its slice's value,
/// resolved as mergekit resolves it, at the source tensor's name and the layer's place within its slice (a gradient
/// runs over each slice's own layers). A slice without a value takes 1 (passthrough's "no scale").
/// </summary>
public sealed record SliceParameter(Checkpoint Stack, IReadOnlyList<TensorParameter?> PerSlice) : TensorParameter
{
    public override double Resolve(TensorPosition position)
    {
        var slices = Stack.Slices!;
        var source = Stack.TensorSources!.TryGetValue(position.Name, out var found) ? found.Source : position.Name;
        int index;
        int? local = null;
        if (position.LayerIndex is { } layer)
        {
            index = 0;
            var offset = 0;
            while (index < slices.Count - 1 && layer >= offset + slices[index].Length) offset += slices[index++].Length;
            local = layer - offset;
        }
        else
        {
            index = source.Contains("embed", StringComparison.Ordinal) ? 0 : slices.Count - 1;
        }
        return PerSlice[index]?.Resolve(new TensorPosition(source, local, slices[index].Length)) ?? 1.0;
    }

    public override IEnumerable<double> PossibleValues =>
        PerSlice.SelectMany(p => p?.PossibleValues ?? new[] { 1.0 }).Distinct();

    public override string ToString() => "slices(" + string.Join("; ", PerSlice.Select(p => p?.ToString() ?? "none")) + ")";
}
