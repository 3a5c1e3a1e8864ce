using System.Collections.ObjectModel;

namespace Dare.Engine;

/// <summary>
/// A read-only list whose ToString is a short summary instead of the type name, so that a nested collection
/// reads well where PowerShell flattens an object to text (Export-Csv, string interpolation, Format-List), while
/// ConvertTo-Json still writes its items as an array.
/// </summary>
public sealed class SummarisedList<T> : ReadOnlyCollection<T>
{
    private readonly Func<IReadOnlyList<T>, string> _summary;

    public SummarisedList(IList<T> items, Func<IReadOnlyList<T>, string> summary) : base(items) => _summary = summary;

    public override string ToString() => _summary(this);
}

public static class SummarisedList
{
    /// <summary>The items, summarised as their texts joined by "; ".</summary>
    public static SummarisedList<T> Joined<T>(IEnumerable<T> items) =>
        new(items as IList<T> ?? items.ToList(), list => string.Join("; ", list));

    /// <summary>The items, summarised as "N noun(s)".</summary>
    public static SummarisedList<T> Counted<T>(IEnumerable<T> items, string noun) =>
        new(items as IList<T> ?? items.ToList(), list => $"{list.Count} {noun}{(list.Count == 1 ? "" : "s")}");
}

/// <summary>
/// A read-only dictionary whose ToString lists its scalar entries as key=value (nested values as key=…), so that
/// safetensors metadata or config.json reads well in Export-Csv; ConvertTo-Json still writes an object.
/// </summary>
public sealed class SummarisedDictionary<TValue> : System.Collections.ObjectModel.ReadOnlyDictionary<string, TValue>
{
    public SummarisedDictionary(IDictionary<string, TValue> items) : base(items) { }

    public override string ToString() => string.Join("; ", this.Select(e => e.Key + "=" + (e.Value is System.Collections.IEnumerable and not string ? "…" : e.Value)));
}
