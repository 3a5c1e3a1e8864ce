using System.Runtime.ExceptionServices;

namespace Dare.Engine.Merge;

/// <summary>
/// How every kernel splits a chunk over the cores: one contiguous range per core, so that order-dependent work
/// (TIES tie budgets, sampling) stays cheap and each range's results can be recorded and replayed by range index.
/// All kernels use this one partition: a TIES tie budget recorded for range r in one pass applies to range r of the next.
/// </summary>
internal static class Partition
{
    /// <summary>Splits [0, count) into one contiguous range per core (at least 64K elements each, one range below that).</summary>
    public static (long Start, long End)[] Ranges(long count)
    {
        var parts = (int)Math.Clamp(count / (1 << 16), 1, Environment.ProcessorCount);
        var ranges = new (long, long)[parts];
        for (var p = 0; p < parts; p++) ranges[p] = (count * p / parts, count * (p + 1) / parts);
        return ranges;
    }

    /// <summary>Runs <paramref name="body"/>(i) for each of <paramref name="items"/> items, in parallel, surfacing a failure as <see cref="Run"/> does.</summary>
    public static void Each(int items, Action<int> body)
    {
        try
        {
            Parallel.For(0, items, body);
        }
        catch (AggregateException ex) when (ex.InnerExceptions.Count > 0)
        {
            ExceptionDispatchInfo.Throw(ex.InnerExceptions[0]);
        }
    }

    /// <summary>
    /// Runs <paramref name="body"/>(range index, start, end) for each range of [0, count), in parallel. A body that
    /// throws (a kernel reading its input fails) surfaces as that exception, not wrapped in an AggregateException.
    /// </summary>
    public static void Run(long count, Action<int, long, long> body)
    {
        var ranges = Partition.Ranges(count);
        if (ranges.Length == 1)
        {
            body(0, ranges[0].Start, ranges[0].End);
            return;
        }
        try
        {
            Parallel.For(0, ranges.Length, r => body(r, ranges[r].Start, ranges[r].End));
        }
        catch (AggregateException ex) when (ex.InnerExceptions.Count > 0)
        {
            ExceptionDispatchInfo.Throw(ex.InnerExceptions[0]);
        }
    }
}
