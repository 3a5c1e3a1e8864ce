using System.Collections;
using System.Collections.Specialized;
using System.Management.Automation;
using Dare.Engine.Recipes;

namespace Dare.PowerShell;

/// <summary>
/// The argument of Invoke-DareMerge -Recipe: a parsed <see cref="RecipeBatch"/>, or recipe data (a hashtable or
/// object with the YAML's keys, or a list of them for a batch) that the cmdlet parses when it runs, so that
/// mistakes in it are reported with the same ErrorIds as mistakes in a file.
/// </summary>
public sealed class RecipeArgument
{
    internal RecipeArgument(RecipeBatch parsed) => Parsed = parsed;

    internal RecipeArgument(object data, string baseDirectory)
    {
        Data = data;
        BaseDirectory = baseDirectory;
    }

    internal RecipeBatch? Parsed { get; }
    internal object? Data { get; }
    internal string? BaseDirectory { get; }

    internal RecipeBatch Parse() => Parsed ?? RecipeParser.ParseObject(Data, BaseDirectory!);

    public override string ToString() => Parsed?.ToString() ?? "recipe object";
}

/// <summary>Wraps RecipeBatch and recipe data in a <see cref="RecipeArgument"/>; anything else passes through so the binder can try the other parameter sets.</summary>
[AttributeUsage(AttributeTargets.Property | AttributeTargets.Field)]
internal sealed class RecipeTransformationAttribute : ArgumentTransformationAttribute
{
    public override object Transform(EngineIntrinsics engineIntrinsics, object inputData)
    {
        var value = inputData is PSObject ps ? ps.BaseObject : inputData;
        if (value is RecipeBatch batch) return new RecipeArgument(batch);
        var isData = IsRecipeData(value) ||
            (value is IList list && list.Count > 0 && list.Cast<object?>().All(i => IsRecipeData(i is PSObject p ? p.BaseObject : i)));
        return isData
            ? new RecipeArgument(Plain(inputData)!, engineIntrinsics.SessionState.Path.CurrentFileSystemLocation.ProviderPath)
            : inputData;
    }

    private static bool IsRecipeData(object? value) => value is IDictionary or PSCustomObject;

    /// <summary>PowerShell objects as plain dictionaries, lists and scalars (keys keep their order where the source has one).</summary>
    private static object? Plain(object? value)
    {
        if (value is PSObject ps)
        {
            if (ps.BaseObject is not PSCustomObject) return Plain(ps.BaseObject);
            var properties = new OrderedDictionary();
            foreach (var property in ps.Properties) properties[property.Name] = Plain(property.Value);
            return properties;
        }
        switch (value)
        {
            case string:
                return value;
            case IDictionary dictionary:
                var result = new OrderedDictionary();
                foreach (DictionaryEntry entry in dictionary) result[entry.Key] = Plain(entry.Value);
                return result;
            case IEnumerable list:
                return list.Cast<object?>().Select(Plain).ToList();
            default:
                return value;
        }
    }
}
