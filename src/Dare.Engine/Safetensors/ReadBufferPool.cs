namespace Dare.Engine.Safetensors;

/// <summary>
/// Page-aligned buffers for <see cref="BufferedReadAhead"/>, in whole megabytes, kept for reuse once freed: fresh memory
/// costs a page fault per page on first touch (on this project's VM a fault on the host too). Buffers are mapped, not
/// allocated (<see cref="PageMemory"/>): freed C-heap blocks of these sizes would stay in the process, which grew a
/// cold merge's peak RSS by 250 MB. Free buffers are unmapped while buffers in use and free ones together exceed the
/// budget (or the limit a renter gives). Not thread-safe: the caller locks.
/// </summary>
internal sealed unsafe class ReadBufferPool(long budget) : IDisposable
{
    private readonly List<(nint Pointer, long Capacity)> _free = new();
    private long _freeBytes;
    private readonly Dictionary<nint, long> _lent = new();

    /// <summary>Bytes in buffers handed out and not yet returned.</summary>
    public long BytesInUse { get; private set; }

    /// <summary>The capacity a buffer for <paramref name="length"/> bytes has: whole megabytes, so that ranges of similar sizes share buffers.</summary>
    public static long CapacityFor(long length) => (length + (1 << 20) - 1) & ~((1L << 20) - 1);

    /// <summary>
    /// A buffer of at least <see cref="CapacityFor"/>(<paramref name="length"/>) bytes; null if none can be mapped. The
    /// smallest free buffer that fits is reused if it is at most twice that size: a range's page-aligned length puts it
    /// in one of two neighbouring capacities, and mapping new memory each time it misses the other costs a fault per page
    /// (a cold DARE-linear of 31 GB spent most of its kernel time touching fresh buffers). Free buffers are unmapped
    /// while buffers in use and free ones would exceed <paramref name="limit"/> (by default the budget).
    /// </summary>
    public byte* Rent(long length, long? limit = null)
    {
        var capacity = CapacityFor(length);
        var index = -1;
        for (var i = 0; i < _free.Count; i++)
        {
            var candidate = _free[i].Capacity;
            if (candidate >= capacity && candidate <= 2 * capacity && (index < 0 || candidate < _free[index].Capacity)) index = i;
        }
        if (index >= 0)
        {
            var pooled = _free[index];
            _free.RemoveAt(index);
            _freeBytes -= pooled.Capacity;
            return Lend(pooled.Pointer, pooled.Capacity);
        }
        while (_free.Count > 0 && BytesInUse + capacity + _freeBytes > (limit ?? budget))
        {
            var largest = _free.MaxBy(b => b.Capacity);
            _free.Remove(largest);
            _freeBytes -= largest.Capacity;
            PageMemory.Free((void*)largest.Pointer, largest.Capacity);
        }
        var buffer = PageMemory.TryMap(capacity);
        return buffer is null ? null : Lend((nint)buffer, capacity);
    }

    private byte* Lend(nint buffer, long capacity)
    {
        _lent[buffer] = capacity;
        BytesInUse += capacity;
        return (byte*)buffer;
    }

    /// <summary>The capacity of <paramref name="buffer"/>, rented from <see cref="Rent"/> and not yet returned.</summary>
    public long CapacityOf(byte* buffer) => _lent[(nint)buffer];

    /// <summary>Takes back a buffer from <see cref="Rent"/>.</summary>
    public void Return(byte* buffer)
    {
        _lent.Remove((nint)buffer, out var capacity);
        BytesInUse -= capacity;
        _free.Add(((nint)buffer, capacity));
        _freeBytes += capacity;
    }

    /// <summary>Unmaps the free buffers (buffers still rented are the renter's to return first).</summary>
    public void Dispose()
    {
        foreach (var (pointer, capacity) in _free) PageMemory.Free((void*)pointer, capacity);
        _free.Clear();
        _freeBytes = 0;
    }
}
