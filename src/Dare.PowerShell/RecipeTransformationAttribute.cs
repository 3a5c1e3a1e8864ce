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

    /// <summary>
    /// Parses the recipe data when the cmdlet runs (not while binding), so that a mistake, a cycle or too deep a
    /// nesting is reported as a recipe error with its key path rather than as a binding failure.
    /// </summary>
    internal RecipeBatch Parse()
    {
        if (Parsed is not null) return Parsed;
        const string source = "recipe object";
        return RecipeParser.ParseObject(Plain(Data, "", new RecipeObjectGuard(source)), BaseDirectory!, source);
    }

    /// <summary>
    /// PowerShell objects as plain dictionaries, lists and scalars (keys keep their order where the source has one).
    /// The guard refuses cycles, deep nesting and too many values before this recursion could overflow the stack (which
    /// would end the host) or run for hours.
    /// </summary>
    private static object? Plain(object? value, string path, RecipeObjectGuard guard)
    {
        if (value is PSObject { BaseObject: not PSCustomObject } wrapped) value = wrapped.BaseObject;
        guard.Count(path);
        if (value is PSObject ps)
        {
            // Every [pscustomobject] shares one BaseObject, so the wrapper is what identifies this one.
            guard.Enter(ps, path);
            var properties = new OrderedDictionary();
            foreach (var property in ps.Properties) properties[property.Name] = Plain(property.Value, RecipeObjectGuard.Key(path, property.Name), guard);
            guard.Exit();
            return properties;
        }
        switch (value)
        {
            case string:
                return value;
            case IDictionary dictionary:
            {
                guard.Enter(dictionary, path);
                var result = new OrderedDictionary();
                foreach (DictionaryEntry entry in dictionary) result[entry.Key] = Plain(entry.Value, RecipeObjectGuard.Key(path, entry.Key), guard);
                guard.Exit();
                return result;
            }
            case IEnumerable list:
            {
                guard.Enter(list, path);
                var result = list.Cast<object?>().Select((item, i) => Plain(item, RecipeObjectGuard.Index(path, i), guard)).ToList();
                guard.Exit();
                return result;
            }
            default:
                return value;
        }
    }

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
            ? new RecipeArgument(inputData, engineIntrinsics.SessionState.Path.CurrentFileSystemLocation.ProviderPath)
            : inputData;
    }

    private static bool IsRecipeData(object? value) => value is IDictionary or PSCustomObject;
}
