namespace Dare.Engine.Merge;

/// <summary>
/// Zeroed arrays for the TIES selection's counts (per-range count tables, bracket counts, histograms), reused from
/// call to call while merges run and given up with the kernels' native scratch at the end of every export
/// (<see cref="KernelScratch.Release"/>). As per-thread tables and static pools they kept 60–70 MB of managed heap in
/// the process after a TIES merge, whether another merge followed or not.
/// </summary>
/// <remarks>
/// Only arrays that are all zeros are returned: whoever rents one leaves it clean (walking what it counted) or
/// does not return it. An array may be longer than was asked for; its tail is zeros too.
/// </remarks>
internal static class CleanArrays<T> where T : unmanaged
{
    // Rented at once: a few tables per core and input, the bracket and sample counts of the tensors in flight.
    private static readonly BestFitPool<T[]> Pooled = new(8 * Environment.ProcessorCount, array => array.Length);

    /// <summary>An array of at least <paramref name="length"/> zeros: the shortest pooled one that is long enough, or a new one.</summary>
    public static T[] Rent(int length) => Pooled.TryTake(length, out var array) ? array : new T[length];

    /// <summary>Pools <paramref name="array"/>, which must be all zeros again (dropped when the pool is full).</summary>
    public static void Return(T[] array) => Pooled.TryAdd(array);

    /// <summary>Drops the pooled arrays (those still rented are pooled again when returned).</summary>
    public static void Release() => Pooled.TakeAll();

    /// <summary>How many arrays the pool holds (for the tests).</summary>
    internal static int PooledCount => Pooled.Count;
}
