namespace Dare.Engine.Merge;

public sealed record ExportResult(string Path, IReadOnlyList<string> Files, int TensorCount, long BytesWritten, long BytesRead, TimeSpan Elapsed)
{
    public double MegabytesPerSecond => Elapsed.TotalSeconds > 0 ? BytesRead / 1e6 / Elapsed.TotalSeconds : 0;
}
