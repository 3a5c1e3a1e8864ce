using System.Runtime.InteropServices;

namespace Dare.Engine.Merge;

/// <summary>
/// The kernels' per-range scratch (a bfloat16 piece of each stored range, float blocks; a presample's runs read from
/// the files), kept between chunks instead of allocated for every chunk and range. Allocated each time, they went
/// through glibc's heaps, where blocks of these sizes (a megabyte or two) stay once freed after its mmap threshold has
/// been raised, and a large DARE-linear's RSS crept up by 20–30 MB as it went; pooled, the same few blocks serve every
/// chunk. The pool is emptied when a chunk workspace is disposed (at the end of every export), so nothing stays once a
/// merge is done.
/// </summary>
internal static unsafe class KernelScratch
{
    // Blocks rented at once are one or two per core (a range per core, a nested counting pass).
    private static readonly BestFitPool<(nint Block, nuint Bytes)> Pooled = new(4 * Environment.ProcessorCount, block => (long)block.Bytes);

    /// <summary>At least <paramref name="bytes"/> bytes, 64-byte aligned, until the lease is disposed (on any thread).</summary>
    public static Lease Rent(long bytes)
    {
        var size = (nuint)Math.Max(bytes, 1);
        return Pooled.TryTake((long)size, out var pooled)
            ? new Lease((byte*)pooled.Block, pooled.Bytes)
            : new Lease((byte*)NativeMemory.AlignedAlloc(size, 64), size);
    }

    /// <summary>
    /// Frees the pooled blocks (blocks still rented are pooled again, or freed, when their leases end), and drops the
    /// selection's pooled count tables (<see cref="CleanArrays{T}"/>) with them.
    /// </summary>
    public static void Release()
    {
        foreach (var (block, _) in Pooled.TakeAll()) NativeMemory.AlignedFree((void*)block);
        CleanArrays<uint>.Release();
        CleanArrays<long>.Release();
    }

    /// <summary>How many blocks the pool holds (for the tests).</summary>
    internal static int PooledCount => Pooled.Count;

    private static void Return(byte* block, nuint bytes)
    {
        if (!Pooled.TryAdd(((nint)block, bytes))) NativeMemory.AlignedFree(block);
    }

    /// <summary>A rented block: <see cref="Pointer"/> until disposed.</summary>
    public readonly struct Lease(byte* pointer, nuint bytes) : IDisposable
    {
        public byte* Pointer { get; } = pointer;

        public void Dispose() => Return(Pointer, bytes);
    }
}
