using Dare.Engine.Merge;
using YamlDotNet.RepresentationModel;

namespace Dare.Engine.Recipes;

public static partial class RecipeParser
{
    internal static readonly string[] SliceKeys = { "sources" };
    internal static readonly string[] SliceSourceKeys = { "model", "layer_range", "parameters" };

    private static readonly Dictionary<string, string> UnsupportedSliceKeys = new()
    {
        ["base_model"] = "a base per slice is not supported; give one top-level 'base_model:'",
        ["residual_weight"] = "residual_weight is not supported",
        ["parameters"] = "parameters per slice are not supported; give them per source or at the top level",
    };

    /// <summary>mergekit's <c>slices:</c> list: each slice a list of sources, each a model and its <c>layer_range: [start, end]</c>.</summary>
    private static IReadOnlyList<RecipeSlice> ParseSlices(YamlNode node, string path, Context context)
    {
        if (node is not YamlSequenceNode list || list.Children.Count == 0)
        {
            throw Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, context.At(node, path), "must be a non-empty list of '- sources: [...]' entries.");
        }
        var slices = new List<RecipeSlice>();
        for (var i = 0; i < list.Children.Count; i++)
        {
            var slicePath = $"{path}[{i}]";
            var map = RequireMapping(list.Children[i], slicePath, context, "a slice ('- sources: [...]')");
            var keys = ReadKeys(map, slicePath, context, SliceKeys, UnsupportedSliceKeys);
            if (!keys.TryGetValue("sources", out var sourcesEntry) || sourcesEntry.Value is not YamlSequenceNode sources || sources.Children.Count == 0)
            {
                throw Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, context.At(list.Children[i], slicePath), "needs 'sources:', a non-empty list of '- model: <path>' entries with a layer_range.");
            }
            var parsed = sources.Children.Select((source, j) => context.Diagnostics.Try(() => ParseSliceSource(source, $"{slicePath}.sources[{j}]", context), null))
                .OfType<RecipeSliceSource>().ToList();
            slices.Add(new RecipeSlice { Sources = parsed, Location = context.At(list.Children[i], slicePath) });
        }
        return slices;
    }

    private static RecipeSliceSource ParseSliceSource(YamlNode node, string path, Context context)
    {
        var map = RequireMapping(node, path, context, "a slice source ('- model: <path>' with 'layer_range: [start, end]')");
        var keys = ReadKeys(map, path, context, SliceSourceKeys, new Dictionary<string, string>());
        if (!keys.TryGetValue("model", out var modelEntry) || IsNull(modelEntry.Value))
        {
            throw Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, context.At(node, path), "has no 'model:' path.");
        }
        var location = context.At(modelEntry.Value, Join(path, "model"));
        var rangePath = Join(path, "layer_range");
        if (!keys.TryGetValue("layer_range", out var rangeEntry))
        {
            throw Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, context.At(node, path), "has no 'layer_range: [start, end]' (the layers it takes, end excluded).");
        }
        var rangeLocation = context.At(rangeEntry.Value, rangePath);
        if (rangeEntry.Value is not YamlSequenceNode { Children.Count: 2 } range)
        {
            throw Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, rangeLocation, "must be a list of two whole numbers, [start, end] (end excluded).");
        }
        var start = RequireInteger(range.Children[0], rangeLocation, context);
        var end = RequireInteger(range.Children[1], rangeLocation, context);
        if (start < 0 || end <= start || end > int.MaxValue)
        {
            throw Error(DareErrorId.LayerRangeInvalid, DareErrorKind.InvalidData, rangeLocation, $"[{start}, {end}] is not a layer range: it needs 0 <= start < end (end excluded).");
        }
        return new RecipeSliceSource
        {
            Model = RequireString(modelEntry.Value, location, context),
            Location = location,
            LayerStart = (int)start,
            LayerEnd = (int)end,
            RangeLocation = rangeLocation,
            Parameters = keys.TryGetValue("parameters", out var p) ? ParseParameters(p.Value, Join(path, "parameters"), context, perModel: true) : RecipeParameters.Empty,
        };
    }
}
