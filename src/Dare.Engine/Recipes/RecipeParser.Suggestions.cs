namespace Dare.Engine.Recipes;

public static partial class RecipeParser
{
    /// <summary>" Did you mean 'x'?" for the candidate nearest to <paramref name="key"/> (Levenshtein distance, ignoring case).</summary>
    internal static string Suggestion(string key, IEnumerable<string> candidates) =>
        Nearest(key, candidates) is { } nearest ? $" Did you mean '{nearest}'?" : "";

    private static string? Nearest(string key, IEnumerable<string> candidates) =>
        candidates.Select(c => (Key: c, Distance: Levenshtein(key.ToLowerInvariant(), c.ToLowerInvariant())))
            .OrderBy(c => c.Distance).ThenBy(c => c.Key, StringComparer.Ordinal).FirstOrDefault().Key;

    internal static int Levenshtein(string a, string b)
    {
        var previous = new int[b.Length + 1];
        var current = new int[b.Length + 1];
        for (var j = 0; j <= b.Length; j++) previous[j] = j;
        for (var i = 1; i <= a.Length; i++)
        {
            current[0] = i;
            for (var j = 1; j <= b.Length; j++)
            {
                var substitution = previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
                current[j] = Math.Min(substitution, Math.Min(previous[j] + 1, current[j - 1] + 1));
            }
            (previous, current) = (current, previous);
        }
        return previous[b.Length];
    }
}
