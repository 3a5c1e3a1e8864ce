using Dare.Engine.Merge;

namespace Dare.Engine.Recipes;

/// <summary>
/// The recipe schema from the registry (<see cref="MergeMethods"/>): the merge_method names, the parameter keys with
/// their declarations, and mergekit's names Dare knows but lacks (an error that says so, not "unknown key").
/// </summary>
public static partial class RecipeParser
{
    /// <summary>Recipe keys that no method declares but mergekit recipes carry: accepted and ignored.</summary>
    private static readonly ParameterSpec Int8Mask = new("int8_mask", ParameterKind.Boolean, ParameterScope.Merge,
        "Accepted for mergekit compatibility and ignored.");

    // The classic keys in the order messages list them; keys of further methods follow by name.
    private static readonly string[] KeyOrder = { "weight", "density", "drop_rate", "normalize", "lambda", "int8_mask", "rescale", "rescale_q", "sign_method", "random_seed", "mask_stream" };

    /// <summary>Every parameter a recipe may give: those the methods and transforms declare (<see cref="MergeMethods"/>), and int8_mask.</summary>
    internal static IReadOnlyList<ParameterSpec> ParameterSpecs { get; } = MergeMethods.AllParameters.Append(Int8Mask)
        .OrderBy(p => Array.IndexOf(KeyOrder, p.Key) is var i and >= 0 ? i : KeyOrder.Length).ThenBy(p => p.Key, StringComparer.Ordinal).ToList();

    internal static string[] ParameterKeys { get; } = ParameterSpecs.Select(p => p.Key).ToArray();

    private static readonly Dictionary<string, string> KnownUnsupportedParameters = new()
    {
        ["t"] = "'t' is the slerp interpolation factor; slerp is not supported",
        ["gamma"] = "'gamma' belongs to breadcrumbs, which is not supported",
        ["epsilon"] = "'epsilon' belongs to della, which is not supported",
        ["select_topk"] = "'select_topk' belongs to sce, which is not supported",
        ["filter_wise"] = "'filter_wise' belongs to model_stock, which is not supported",
        ["embed_slerp"] = "'embed_slerp' belongs to mergekit-moe, which is not supported",
    };

    /// <summary>mergekit parameters of methods Dare lacks (a declared parameter is never among them).</summary>
    internal static readonly Dictionary<string, string> UnsupportedParameters =
        KnownUnsupportedParameters.Where(p => !ParameterKeys.Contains(p.Key)).ToDictionary(p => p.Key, p => p.Value);

    private static readonly string[] KnownMergekitMethods =
        { "slerp", "nuslerp", "multislerp", "passthrough", "model_stock", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear", "sce", "karcher", "arcee_fusion", "nearswap", "ram" };

    /// <summary>Every merge_method a recipe may name, from the registry.</summary>
    internal static IReadOnlyList<string> MethodNames { get; } = MergeMethods.RecipeForms.Select(f => f.Name).ToList();

    /// <summary>mergekit methods Dare does not have (yet): an error that says so rather than "not a merge method".</summary>
    internal static readonly string[] UnsupportedMethods = KnownMergekitMethods.Where(m => !MethodNames.Contains(m)).ToArray();
}
