namespace Dare.Engine.Merge;

/// <summary>Receives progress and messages from the executor, always on the thread that called it.</summary>
public interface IMergeObserver
{
    void Progress(MergeProgress progress);
    void Verbose(string message);
    void Warning(string message);
}

public sealed record MergeProgress(string Activity, int TensorsDone, int TensorCount, long BytesDone, long TotalBytes, TimeSpan Elapsed, string? CurrentTensor)
{
    public double BytesPerSecond => Elapsed.TotalSeconds > 0 ? BytesDone / Elapsed.TotalSeconds : 0;

    public TimeSpan? Remaining => BytesDone > 0 && TotalBytes > BytesDone
        ? TimeSpan.FromSeconds((TotalBytes - BytesDone) / BytesPerSecond)
        : null;

    public int PercentComplete => TotalBytes > 0 ? (int)Math.Clamp(100 * BytesDone / TotalBytes, 0, 100) : 0;
}
