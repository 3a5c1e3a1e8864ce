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
    private static readonly int MaxPooled = 4 * Environment.ProcessorCount;
    private static readonly List<(nint Block, nuint Bytes)> Pooled = new();

    /// <summary>At least <paramref name="bytes"/> bytes, 64-byte aligned, until the lease is disposed (on any thread).</summary>
    public static Lease Rent(long bytes)
    {
        var size = (nuint)Math.Max(bytes, 1);
        lock (Pooled)
        {
            var best = -1;
            for (var i = 0; i < Pooled.Count; i++)
            {
                if (Pooled[i].Bytes >= size && (best < 0 || Pooled[i].Bytes < Pooled[best].Bytes)) best = i;
            }
            if (best >= 0)
            {
                var (block, capacity) = Pooled[best];
                Pooled.RemoveAt(best);
                return new Lease((byte*)block, capacity);
            }
        }
        return new Lease((byte*)NativeMemory.AlignedAlloc(size, 64), size);
    }

    /// <summary>
    /// Frees the pooled blocks (blocks still rented are pooled again, or freed, when their leases end), and drops the
    /// selection's pooled count tables (<see cref="CleanArrays{T}"/>) with them.
    /// </summary>
    public static void Release()
    {
        lock (Pooled)
        {
            foreach (var (block, _) in Pooled) NativeMemory.AlignedFree((void*)block);
            Pooled.Clear();
        }
        CleanArrays<uint>.Release();
        CleanArrays<long>.Release();
    }

    /// <summary>How many blocks the pool holds (for the tests).</summary>
    internal static int PooledCount
    {
        get { lock (Pooled) return Pooled.Count; }
    }

    private static void Return(byte* block, nuint bytes)
    {
        lock (Pooled)
        {
            if (Pooled.Count < MaxPooled)
            {
                Pooled.Add(((nint)block, bytes));
                return;
            }
        }
        NativeMemory.AlignedFree(block);
    }

    /// <summary>A rented block: <see cref="Pointer"/> until disposed.</summary>
    public readonly struct Lease(byte* pointer, nuint bytes) : IDisposable
    {
        public byte* Pointer { get; } = pointer;

        public void Dispose() => Return(Pointer, bytes);
    }
}
