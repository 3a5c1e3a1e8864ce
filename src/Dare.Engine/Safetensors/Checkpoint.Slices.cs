using System.Globalization;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace Dare.Engine.Safetensors;

/// <summary>Layers [Start, End) of a model, one part of a frankenmerge (mergekit's <c>layer_range</c>).</summary>
public sealed record CheckpointSlice(Checkpoint Model, int Start, int End)
{
    public int Length => End - Start;
    public override string ToString() => $"{Model.Name}[{Start}, {End})";
}

public sealed partial class Checkpoint
{
    private static readonly Regex LayerIndexPattern = new(@"(?<=(?:^|\.)(?:layers|h|blocks|layer)\.)(\d+)(?=\.)", RegexOptions.Compiled);

    /// <summary>The slices this checkpoint is stacked from (null for a checkpoint read from disk).</summary>
    public IReadOnlyList<CheckpointSlice>? Slices { get; private init; }

    /// <summary>config.json keys an export writes differently from the file in <see cref="Directory"/> (a stack's layer count).</summary>
    internal IReadOnlyDictionary<string, JsonNode?>? ConfigChanges { get; private init; }

    /// <summary>Where each tensor of a stack comes from: output name → (model, source tensor).</summary>
    public IReadOnlyDictionary<string, (Checkpoint Model, string Source)>? TensorSources { get; private init; }

    /// <summary>
    /// A model stacked from layer ranges of other models, as mergekit's passthrough <c>slices</c> build one: output
    /// layer k is layer <c>Start + i</c> of the slice it falls in, its tensors renamed to index k. Tensors outside the
    /// layers come from the first slice's model when their name holds "embed" (they precede the layers) and from the
    /// last slice's model otherwise (final norm, lm_head), as mergekit takes pre-layer weights from the first slice and
    /// post-layer ones from the last. No data is read: each tensor points at its source's bytes. config.json is the
    /// first slice's model's with num_hidden_layers (and a per-layer layer_types list) set for the stack.
    /// </summary>
    public static Checkpoint Stack(IReadOnlyList<CheckpointSlice> slices)
    {
        if (slices.Count == 0) throw new DareException(DareErrorId.LayerRangeInvalid, DareErrorKind.InvalidArgument, "A stack needs at least one slice.");
        foreach (var slice in slices)
        {
            var layers = Merge.TensorPosition.LayerCountOf(slice.Model);
            if (slice.Start < 0 || slice.End <= slice.Start || slice.End > layers)
            {
                throw new DareException(DareErrorId.LayerRangeInvalid, DareErrorKind.InvalidArgument,
                    $"layer_range [{slice.Start}, {slice.End}] does not fit '{slice.Model.Path}', which has {layers} layers: it needs 0 <= start < end <= {layers}.") { FilePath = slice.Model.Path };
            }
        }
        var first = slices[0].Model;
        foreach (var slice in slices.Skip(1))
        {
            foreach (var key in new[] { "hidden_size", "intermediate_size", "vocab_size" })
            {
                if (first.ConfigInt(key) is { } expected && slice.Model.ConfigInt(key) is { } actual && expected != actual)
                {
                    throw new DareException(DareErrorId.ArchitectureMismatch, DareErrorKind.InvalidData,
                        $"'{slice.Model.Path}' has {key} {actual} in its config.json but '{first.Path}' has {expected}; stacked layers must have the same shapes.") { FilePath = slice.Model.Path };
                }
            }
        }
        var last = slices[^1].Model;
        var tensors = new List<TensorInfo>();
        var sources = new Dictionary<string, (Checkpoint, string)>(StringComparer.Ordinal);
        void Add(Checkpoint model, TensorInfo source, string name)
        {
            tensors.Add(new TensorInfo(name, source.DType, source.Shape, source.File, source.DataOffset, source.ByteLength) { FileIdentity = source.FileIdentity });
            sources[name] = (model, source.Name);
        }
        foreach (var tensor in first.Tensors.Where(t => LayerOf(t.Name) is null && IsPreLayer(t.Name))) Add(first, tensor, tensor.Name);
        var output = 0;
        foreach (var slice in slices)
        {
            var byLayer = slice.Model.Tensors.Where(t => LayerOf(t.Name) is { } l && l >= slice.Start && l < slice.End).ToLookup(t => LayerOf(t.Name)!.Value);
            for (var layer = slice.Start; layer < slice.End; layer++, output++)
            {
                foreach (var tensor in byLayer[layer]) Add(slice.Model, tensor, LayerIndexPattern.Replace(tensor.Name, output.ToString(CultureInfo.InvariantCulture), 1));
            }
        }
        foreach (var tensor in last.Tensors.Where(t => LayerOf(t.Name) is null && !IsPreLayer(t.Name))) Add(last, tensor, tensor.Name);

        var changes = new Dictionary<string, JsonNode?> { ["num_hidden_layers"] = JsonValue.Create(output) };
        // Architectures with per-layer kinds (e.g. sliding or full attention) list one entry per layer.
        if (slices.All(s => s.Model._config?["layer_types"] is JsonArray))
        {
            changes["layer_types"] = new JsonArray(slices.SelectMany(s => ((JsonArray)s.Model._config!["layer_types"]!).Skip(s.Start).Take(s.Length)).Select(n => n?.DeepClone()).ToArray());
        }
        var config = first._config?.DeepClone() as JsonObject;
        if (config is not null) foreach (var (key, value) in changes) config[key] = value?.DeepClone();
        var description = string.Join(" + ", slices);
        return new Checkpoint($"{first.Path} (slices: {description})", first.Layout, first.Files.Concat(slices.SelectMany(s => s.Model.Files)).Distinct().ToList(),
            tensors, first.Metadata, config)
        {
            Slices = slices.ToList(),
            ConfigChanges = changes,
            TensorSources = sources,
            StackDirectory = first.Directory,
        };
    }

    private string? StackDirectory { get; init; }

    private static int? LayerOf(string name) => Merge.TensorPosition.Of(name, 0).LayerIndex;

    private static bool IsPreLayer(string name) => name.Contains("embed", StringComparison.Ordinal);
}
