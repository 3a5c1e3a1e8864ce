using Dare.Engine.Merge;
using YamlDotNet.RepresentationModel;

namespace Dare.Engine.Recipes;

/// <summary>The <c>parameters:</c> blocks: which keys exist, where each may appear and how its value reads, all from the parameters' declarations.</summary>
public static partial class RecipeParser
{
    private static RecipeParameters ParseParameters(YamlNode node, string path, Context context, bool perModel)
    {
        if (IsNull(node)) return RecipeParameters.Empty;
        var map = RequireMapping(node, path, context, "a parameters block");
        var keys = ReadKeys(map, path, context, ParameterKeys, UnsupportedParameters);
        var locations = new Dictionary<string, RecipeLocation>();
        var settings = new Dictionary<string, RecipeSetting>();
        var values = new Dictionary<string, object>();
        foreach (var (key, entry) in keys)
        {
            var spec = ParameterSpecs.First(p => p.Key == key);
            var location = context.At(entry.Key, Join(path, key));
            // Mistakes are collected (see RecipeDiagnostics): a misplaced or unreadable value is reported and skipped.
            if (perModel && spec.Scope == ParameterScope.Merge)
            {
                context.Diagnostics.Add(Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, location, $"'{key}' applies to the whole merge; put it under the top-level 'parameters:', not under a model."));
                continue;
            }
            if (!perModel && spec.Scope == ParameterScope.Model)
            {
                var where = key == "random_seed" ? "at the top level of the recipe (random_seed: 42) or under a model's parameters" : "under a model's parameters";
                context.Diagnostics.Add(Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, location, $"'{key}' does not belong in the top-level 'parameters:'; put it {where}."));
                continue;
            }
            if (IsNull(entry.Value)) continue;
            locations[key] = location;
            var valuePath = Join(path, key);
            if (spec is { Kind: ParameterKind.Number, VariesByTensor: true })
            {
                if (context.Diagnostics.Try(() => ParseSetting(entry.Value, valuePath, context), null) is { } setting) settings[key] = setting;
                continue;
            }
            var value = context.Diagnostics.Try(() =>
            {
                if (entry.Value is not YamlScalarNode)
                {
                    throw Error(DareErrorId.RecipeUnsupported, DareErrorKind.NotImplemented, context.At(entry.Value, valuePath),
                        $"'{key}' must be a single value: Dare does not vary it by tensor.");
                }
                return ParseValue(spec, entry.Value, context.At(entry.Value, valuePath), context);
            }, null);
            if (value is not null) values[key] = value;
        }
        return new RecipeParameters { Settings = settings, Values = values, Locations = locations };
    }

    /// <summary>A single value read by the parameter's kind.</summary>
    private static object ParseValue(ParameterSpec spec, YamlNode node, RecipeLocation location, Context context) => spec.Key switch
    {
        "rescale" => ParseRescale(node, location, context),
        "sign_method" => ParseSignMethod(node, location, context),
        "mask_stream" => ParseStream(node, location, context),
        _ => spec.Kind switch
        {
            ParameterKind.Boolean => RequireBool(node, location, context),
            ParameterKind.Integer => RequireInteger(node, location, context),
            _ => RequireNumber(node, location, context),
        },
    };

    private static DareRescale ParseRescale(YamlNode node, RecipeLocation location, Context context)
    {
        var text = RequireString(node, location, context);
        if (string.Equals(text, "l1", StringComparison.OrdinalIgnoreCase)) return DareRescale.L1;
        if (string.Equals(text, "q", StringComparison.OrdinalIgnoreCase)) return DareRescale.Q;
        if (TryBool(text, out var on)) return on ? DareRescale.InverseKeep : DareRescale.None;
        throw Error(DareErrorId.RecipeUnsupported, DareErrorKind.NotImplemented, location,
            $"'{text}' is not supported: use true (× 1/(1 − p), the DARE paper's rescale), l1 (keep the L1 norm, as current mergekit does), q (DAREx-q: × 1/q, with rescale_q) or false.");
    }

    private static SignMethod ParseSignMethod(YamlNode node, RecipeLocation location, Context context) =>
        RequireString(node, location, context) switch
        {
            "sum" => Merge.SignMethod.Sum,
            "count" => Merge.SignMethod.Count,
            var other => throw Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, location, $"'{other}' is not a sign method; use sum or count."),
        };

    private static int ParseStream(YamlNode node, RecipeLocation location, Context context)
    {
        var value = RequireInteger(node, location, context);
        if (value is < 0 or > int.MaxValue)
        {
            throw Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, location, $"must be an integer from 0 to {int.MaxValue}, not {value}.");
        }
        return (int)value;
    }

    /// <summary>A scalar, a numeric list (gradient), or a list of {filter, value[, match]} entries (or one such entry).</summary>
    private static RecipeSetting ParseSetting(YamlNode node, string path, Context context)
    {
        var location = context.At(node, path);
        switch (node)
        {
            case YamlScalarNode:
                return new RecipeSetting(Array.Empty<ParameterRule>(), new ConstantParameter(RequireNumber(node, location, context)), location);
            case YamlMappingNode single:
                return RulesSetting(new[] { (YamlNode)single }, path, location, context, singleEntry: true);
            case YamlSequenceNode { Children.Count: 0 }:
                throw Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, location, "is an empty list; give a number, a list of numbers (a gradient) or filter entries.");
            case YamlSequenceNode list when list.Children.All(c => c is YamlScalarNode):
                return new RecipeSetting(Array.Empty<ParameterRule>(), Gradient(list, path, context), location);
            case YamlSequenceNode list when list.Children.All(c => c is YamlMappingNode):
                return RulesSetting(list.Children, path, location, context, singleEntry: false);
            default:
                throw Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, location,
                    "must be a number, a list of numbers (a gradient across layers) or a list of '- filter: <text>  value: <number>' entries, not a mix.");
        }
    }

    private static TensorParameter Gradient(YamlSequenceNode list, string path, Context context)
    {
        var points = list.Children.Select((c, i) => RequireNumber(c, context.At(c, $"{path}[{i}]"), context)).ToList();
        return points.Count == 1 ? new ConstantParameter(points[0]) : new GradientParameter(points);
    }

    private static RecipeSetting RulesSetting(IList<YamlNode> entries, string path, RecipeLocation location, Context context, bool singleEntry)
    {
        var rules = new List<ParameterRule>();
        TensorParameter? fallback = null;
        for (var i = 0; i < entries.Count; i++)
        {
            var entryPath = singleEntry ? path : $"{path}[{i}]";
            var keys = ReadKeys((YamlMappingNode)entries[i], entryPath, context, FilterEntryKeys, new Dictionary<string, string>());
            if (!keys.TryGetValue("value", out var valueEntry) || IsNull(valueEntry.Value))
            {
                throw Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, context.At(entries[i], entryPath), "has no 'value:'.");
            }
            var valuePath = Join(entryPath, "value");
            var value = valueEntry.Value switch
            {
                YamlScalarNode scalar => new ConstantParameter(RequireNumber(scalar, context.At(scalar, valuePath), context)),
                YamlSequenceNode { Children.Count: > 0 } list when list.Children.All(c => c is YamlScalarNode) => Gradient(list, valuePath, context),
                var other => throw Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, context.At(other, valuePath),
                    "must be a number or a list of numbers (a gradient); filter entries do not nest."),
            };
            var match = FilterMatch.Substring;
            if (keys.TryGetValue("match", out var matchEntry) && !IsNull(matchEntry.Value))
            {
                var matchLocation = context.At(matchEntry.Value, Join(entryPath, "match"));
                match = RequireString(matchEntry.Value, matchLocation, context) switch
                {
                    "substring" => FilterMatch.Substring,
                    "wildcard" => FilterMatch.Wildcard,
                    var other => throw Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, matchLocation, $"'{other}' is not a match kind; use substring (mergekit's, the default) or wildcard."),
                };
            }
            string? filter = null;
            if (keys.TryGetValue("filter", out var filterEntry) && !IsNull(filterEntry.Value))
            {
                filter = RequireString(filterEntry.Value, context.At(filterEntry.Value, Join(entryPath, "filter")), context);
            }
            if (fallback is not null)
            {
                context.Warnings.Add($"{context.At(entries[i], entryPath)}: this entry comes after the fallback entry (the one without a filter) and never applies.");
                continue;
            }
            // mergekit treats filter "*" as matching every tensor, i.e. the fallback.
            if (filter is null || (filter == "*" && match == FilterMatch.Substring))
            {
                fallback = value;
                continue;
            }
            rules.Add(new ParameterRule(filter, value, match));
        }
        return new RecipeSetting(rules, fallback, location);
    }

}
