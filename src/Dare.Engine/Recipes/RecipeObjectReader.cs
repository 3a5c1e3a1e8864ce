using System.Collections;
using System.Globalization;
using YamlDotNet.Core;
using YamlDotNet.RepresentationModel;

namespace Dare.Engine.Recipes;

/// <summary>
/// Turns recipe objects (dictionaries, lists, strings, numbers, booleans) into a YAML node tree, so object recipes
/// go through the same checks as files. Depth and cycles are refused with the key path (<see cref="RecipeObjectGuard"/>).
/// </summary>
internal static class RecipeObjectReader
{
    /// <summary>The recipes of <paramref name="recipe"/>: a list at the top is a batch.</summary>
    public static List<YamlNode> Roots(object? recipe, string source)
    {
        var guard = new RecipeObjectGuard(source);
        if (recipe is not IList list || recipe is IDictionary) return new List<YamlNode> { ToNode(recipe, "", guard) };
        guard.Enter(list, "");
        var roots = list.Cast<object?>().Select((item, i) => ToNode(item, RecipeObjectGuard.Index("", i), guard)).ToList();
        guard.Exit();
        return roots;
    }

    private static YamlNode ToNode(object? value, string path, RecipeObjectGuard guard)
    {
        guard.Count(path);
        switch (value)
        {
            case null:
                return new YamlScalarNode(null);
            case YamlNode node:
                return node;
            case string text:
                return new YamlScalarNode(text) { Style = ScalarStyle.DoubleQuoted };
            case bool flag:
                return new YamlScalarNode(flag ? "true" : "false");
            case IFormattable number when value is not Enum:
                return new YamlScalarNode(number.ToString(number is double or float ? "R" : null, CultureInfo.InvariantCulture));
            case IDictionary dictionary:
            {
                guard.Enter(dictionary, path);
                var map = new YamlMappingNode();
                foreach (var entry in Entries(dictionary))
                {
                    var key = Convert.ToString(entry.Key, CultureInfo.InvariantCulture);
                    map.Add(new YamlScalarNode(key), ToNode(entry.Value, RecipeObjectGuard.Key(path, key), guard));
                }
                guard.Exit();
                return map;
            }
            case IEnumerable list:
            {
                guard.Enter(list, path);
                var sequence = new YamlSequenceNode(list.Cast<object?>().Select((item, i) => ToNode(item, RecipeObjectGuard.Index(path, i), guard)).ToList());
                guard.Exit();
                return sequence;
            }
            default:
                return new YamlScalarNode(Convert.ToString(value, CultureInfo.InvariantCulture)) { Style = ScalarStyle.DoubleQuoted };
        }
    }

    // IDictionary's own enumerator: a generic Dictionary enumerated as IEnumerable yields KeyValuePairs, not DictionaryEntries.
    private static IEnumerable<DictionaryEntry> Entries(IDictionary dictionary)
    {
        var enumerator = dictionary.GetEnumerator();
        while (enumerator.MoveNext()) yield return enumerator.Entry;
    }
}
