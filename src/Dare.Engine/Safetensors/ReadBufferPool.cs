using System.Runtime.InteropServices;

namespace Dare.Engine.Safetensors;

/// <summary>
/// Page-aligned buffers for <see cref="DirectReadAhead"/>, in whole megabytes, kept for reuse once freed: fresh memory
/// costs a page fault per page on first touch (on this project's VM a fault on the host too). Buffers are mapped, not
/// allocated: freed C-heap blocks of these sizes would stay in the process (glibc raises its mmap threshold to the
/// largest block freed), which grew a cold merge's peak RSS by 250 MB. Free buffers are unmapped while buffers in use
/// and free ones together exceed the budget. Not thread-safe: the caller locks.
/// </summary>
internal sealed unsafe partial class ReadBufferPool(long budget) : IDisposable
{
    private readonly List<(nint Pointer, long Capacity)> _free = new();
    private long _freeBytes;

    /// <summary>Bytes in buffers handed out and not yet returned.</summary>
    public long BytesInUse { get; private set; }

    /// <summary>The capacity a buffer for <paramref name="length"/> bytes has: whole megabytes, so that ranges of similar sizes share buffers.</summary>
    public static long CapacityFor(long length) => (length + (1 << 20) - 1) & ~((1L << 20) - 1);

    /// <summary>A buffer of <see cref="CapacityFor"/>(<paramref name="length"/>) bytes; null if none can be mapped.</summary>
    public byte* Rent(long length)
    {
        var capacity = CapacityFor(length);
        var index = _free.FindIndex(b => b.Capacity == capacity);
        if (index >= 0)
        {
            var pooled = _free[index];
            _free.RemoveAt(index);
            _freeBytes -= capacity;
            BytesInUse += capacity;
            return (byte*)pooled.Pointer;
        }
        while (_free.Count > 0 && BytesInUse + capacity + _freeBytes > budget)
        {
            var largest = _free.MaxBy(b => b.Capacity);
            _free.Remove(largest);
            _freeBytes -= largest.Capacity;
            munmap((void*)largest.Pointer, (nuint)largest.Capacity);
        }
        var buffer = mmap(null, (nuint)capacity, ProtRead | ProtWrite, MapPrivate | MapAnonymous, -1, 0);
        if (buffer == MapFailed) return null;
        BytesInUse += capacity;
        return (byte*)buffer;
    }

    /// <summary>Takes back a buffer from <see cref="Rent"/>(<paramref name="length"/>).</summary>
    public void Return(byte* buffer, long length)
    {
        var capacity = CapacityFor(length);
        BytesInUse -= capacity;
        _free.Add(((nint)buffer, capacity));
        _freeBytes += capacity;
    }

    /// <summary>Unmaps the free buffers (buffers still rented are the renter's to return first).</summary>
    public void Dispose()
    {
        foreach (var (pointer, capacity) in _free) munmap((void*)pointer, (nuint)capacity);
        _free.Clear();
        _freeBytes = 0;
    }

    private const int ProtRead = 1, ProtWrite = 2, MapPrivate = 2, MapAnonymous = 0x20;
    private static readonly void* MapFailed = (void*)-1;

    [LibraryImport("libc")]
    private static partial void* mmap(void* address, nuint length, int protection, int flags, int descriptor, long offset);

    [LibraryImport("libc")]
    private static partial int munmap(void* address, nuint length);
}
