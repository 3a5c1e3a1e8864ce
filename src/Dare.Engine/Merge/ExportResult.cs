namespace Dare.Engine.Merge;

/// <summary>What Export-Safetensors (or a recipe) wrote: the model folder, its files and the work done.</summary>
public sealed record ExportResult(string Path, IReadOnlyList<string> Files, int TensorCount, long BytesWritten, long BytesRead, TimeSpan Elapsed)
{
    /// <summary>The files written; as text (Export-Csv), their paths joined by "; ".</summary>
    public IReadOnlyList<string> Files { get; init; } = SummarisedList.Joined(Files);

    public double MegabytesPerSecond => Elapsed.TotalSeconds > 0 ? BytesRead / 1e6 / Elapsed.TotalSeconds : 0;

    /// <summary>
    /// The folder again, under the name that -LiteralPath parameters bind by property name, so a result pipes into
    /// Import-Safetensors, Get-ChildItem or Remove-Item as the exact path (no wildcard expansion).
    /// </summary>
    public string LiteralPath => Path;

    /// <summary>For a partitioned export, the partition this process wrote ("i/N"); null for a whole export.</summary>
    public string? Partition { get; init; }

    /// <summary>
    /// Whether <see cref="Path"/> is the published model folder: always for a whole export; for a partition only when it
    /// was the last to finish and published the whole (otherwise Path is its sealed part in the staging folder).
    /// </summary>
    public bool Published { get; init; } = true;

    /// <summary>The fraction of δ entries DARE dropped over every input and tensor (null when no input has a DARE step; whole exports only).</summary>
    public double? RealisedDropRate { get; init; }

    /// <summary>The folder written: what the result means where a path is expected.</summary>
    public override string ToString() => Path;
}
