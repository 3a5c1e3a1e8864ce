using System.Runtime.InteropServices;

namespace Dare.Engine.Safetensors;

/// <summary>
/// Read-ahead for ranges a merge reads once: <see cref="Readers"/> threads read them in the order asked, into buffers
/// of their own, and <see cref="TensorReader.ReadElements"/> copies from there. On this project's VM filling the page
/// cache from a cold disk costs a fault on the host per page: a cold DARE-linear of 31 GB of inputs took 39.8 s
/// (30.2 CPU s) through the page cache and 27.7 s (23.0 CPU s) read ahead. A file mostly out of the page cache when
/// its first range is read ahead is read through a descriptor of its own with the kernel's read-ahead, each range's
/// pages dropped once it is in its buffer (as `dd iflag=nocache` reads, the page cache recycles the same pages). This
/// disk read 2.2–2.5 GB/s so beside a write, against 1.1–1.2 GB/s with O_DIRECT: cold large DARE-linear, 3 interleaved
/// pairs, export 7.5–7.7 s with O_DIRECT and 5.0–5.9 s so (TIES, 3 pairs of a first version: 6.9–8.9 and 7.4–8.0 s).
/// In a file mostly cached, a range mostly cached takes the ordinary read and stays cached; the others are read ahead
/// and dropped behind. DARE_DIRECT_READS=odirect reads with O_DIRECT instead (past the page cache, the
/// path measured before), and DARE_DIRECT_READS=0 turns read-ahead off (then the page-cache advice of
/// <see cref="ReadAhead"/> is given instead). At most <see cref="DefaultBudget"/> bytes wait in buffers, except a
/// range the merge is waiting for, which is read first. A file system that refuses the descriptor or a short read
/// leaves the range to the ordinary read: nothing but speed depends on this path. A range the merge has taken no longer
/// waits: it stops counting against the budget until it is freed, so the readers go on while the kernels read taken
/// ranges in place (counted, the chunk being computed and the next one filled the budget and the disk stood idle: a
/// cold DARE-linear of 31 GB took 33.5–35.8 s; not counted, 27.9–31.4 s, and 15.7–16.6 s once the pool also reused
/// buffers across neighbouring sizes).
/// </summary>
internal sealed unsafe partial class BufferedReadAhead : IDisposable
{
    /// <summary>Whether ranges read once are read ahead into buffers of their own (Linux; DARE_DIRECT_READS=0: no).</summary>
    public static readonly bool Enabled = OperatingSystem.IsLinux() && DirectOutputFile.DirectFlag() is not null
        && Environment.GetEnvironmentVariable("DARE_DIRECT_READS") is not "0";

    /// <summary>Whether the readers use O_DIRECT rather than the page cache with its pages dropped behind them (DARE_DIRECT_READS=odirect).</summary>
    private static readonly bool DefaultPastPageCache = Environment.GetEnvironmentVariable("DARE_DIRECT_READS") is "odirect";

    /// <summary>Bytes waiting in buffers at most, by default: about two tensors' chunks of four models.</summary>
    internal const long DefaultBudget = 256L << 20;

    private readonly long _budget;

    private const int Readers = 2;
    private const int Alignment = 4096;

    internal enum State { Queued, Reading, Ready, Unavailable }

    /// <summary>One range read ahead: file bytes [BufferStart, BufferStart + BufferLength) land in Buffer.</summary>
    internal sealed class Range(int descriptor, string tensor, long offset, long length)
    {
        public int Descriptor { get; } = descriptor;
        public string Tensor { get; } = tensor;
        public long Offset { get; } = offset;
        public long Length { get; } = length;
        public long BufferStart { get; } = offset & ~(long)(Alignment - 1);
        public long BufferLength => ((Offset + Length + Alignment - 1) & ~(long)(Alignment - 1)) - BufferStart;
        public long Capacity => ReadBufferPool.CapacityFor(BufferLength);
        public byte* Buffer;
        public State State;
        public bool Abandoned;

        /// <summary>Where it is in <see cref="_ranges"/> (no longer in it once taken or cancelled).</summary>
        public LinkedListNode<Range>? Node;

        public (int, long, long) Key => (Descriptor, Offset, Length);

        public bool Covers(int descriptor, long offset, long length) => descriptor == Descriptor && offset >= Offset && offset + length <= Offset + Length;

        /// <summary>Copies file bytes [offset, offset + size) into <paramref name="destination"/>.</summary>
        public void CopyTo(long offset, byte* destination, int size) => System.Buffer.MemoryCopy(Buffer + (offset - BufferStart), destination, size, size);
    }

    /// <summary>
    /// Ranges asked for and not yet taken, in order; locking it guards every field, and it is the signal for changes.
    /// A linked list: a merge takes ranges from the middle (each input's next chunk), thousands of them in small chunks.
    /// </summary>
    private readonly LinkedList<Range> _ranges = new();

    /// <summary>
    /// The ranges of <see cref="_ranges"/> that a <see cref="Fetch"/> of the same bytes finds (not abandoned), by
    /// <see cref="Range.Key"/>: a merge in small chunks asks for thousands at once, and a scan of the list for each
    /// took minutes (a 300K-element tensor in chunks of 7).
    /// </summary>
    private readonly Dictionary<(int, long, long), Range> _asked = new();

    private readonly ReadBufferPool _pool;
    private readonly Thread[] _readers;
    private bool _stopping;

    /// <summary>Buffer bytes of the ranges being read (rented or about to be).</summary>
    private long _reserved;

    /// <summary>Buffer bytes of the ranges taken and not yet freed: in use by the merge, outside the budget.</summary>
    private long _taken;

    /// <summary>Buffer bytes that count against the budget: ranges read or being read and not yet taken.</summary>
    private long Waiting => _pool.BytesInUse - _taken + _reserved;

    /// <summary>The range the merge is waiting for while still queued: the next reader free reads it, over the budget if need be.</summary>
    private Range? _awaited;

    /// <summary>How each of the reader's files is read ahead, by the reader's descriptor of it.</summary>
    private readonly Dictionary<int, FileReads> _files = new();

    /// <summary>
    /// The readers' own descriptor of a file (-1 where the file system refused it), and whether the file was mostly out
    /// of the page cache when its first range was read ahead: then every range of it is read ahead and dropped behind,
    /// whatever the kernel's read-ahead has brought in meanwhile (which would make the ranges after it look cached).
    /// </summary>
    private sealed record FileReads(int Descriptor, bool Cold);

    private readonly bool _pastPageCache;

    /// <summary>Ranges served from buffers so far, and their bytes.</summary>
    internal int Served { get; private set; }

    internal long ServedBytes { get; private set; }

    /// <param name="budget">Bytes waiting in buffers at most.</param>
    /// <param name="pastPageCache">O_DIRECT reads; null: as DARE_DIRECT_READS says (the page cache, dropped behind, unless "odirect").</param>
    public BufferedReadAhead(long budget = DefaultBudget, bool? pastPageCache = null)
    {
        _budget = budget;
        _pastPageCache = pastPageCache ?? DefaultPastPageCache;
        _pool = new ReadBufferPool(budget);
        _readers = Enumerable.Range(0, Readers).Select(i => new Thread(ReadLoop) { IsBackground = true, Name = $"Dare read-ahead {i}" }).ToArray();
        foreach (var reader in _readers) reader.Start();
    }

    /// <summary>Bytes in buffers now (for tests).</summary>
    internal long BytesInUse
    {
        get { lock (_ranges) return _pool.BytesInUse; }
    }

    /// <summary>
    /// Asks for file bytes [offset, offset + length) of <paramref name="tensor"/>, for one <see cref="Take"/>; a range
    /// asked for already and not yet taken is not asked for twice.
    /// </summary>
    public void Fetch(int descriptor, string tensor, long offset, long length)
    {
        lock (_ranges)
        {
            if (_asked.ContainsKey((descriptor, offset, length))) return;
            var range = new Range(descriptor, tensor, offset, length);
            _asked.Add(range.Key, range);
            range.Node = _ranges.AddLast(range);
            Monitor.PulseAll(_ranges);
        }
    }

    private void ReadLoop()
    {
        while (true)
        {
            Range next;
            lock (_ranges)
            {
                while (true)
                {
                    if (_stopping) return;
                    var candidate = _awaited is { State: State.Queued } awaited ? awaited : _ranges.FirstOrDefault(r => r.State == State.Queued);
                    var waiting = Waiting;
                    if (candidate is not null && (candidate == _awaited || waiting == 0 || waiting + candidate.Capacity <= _budget))
                    {
                        next = candidate;
                        break;
                    }
                    Monitor.Wait(_ranges);
                }
                next.State = State.Reading;
                _reserved += next.Capacity; // counted before its buffer is rented, so the other reader sees it
            }
            var ready = false;
            try
            {
                // A cached range of a warm file is left to the ordinary read, which copies it from the cache.
                var file = FileFor(next.Descriptor);
                if (file.Descriptor >= 0 && (file.Cold || !ReadAhead.IsCached(next.Descriptor, next.Offset, next.Length)))
                {
                    // Free buffers are kept up to the budget plus what the merge holds, so that the next ranges reuse them.
                    lock (_ranges) next.Buffer = _pool.Rent(next.BufferLength, _budget + _taken);
                    ready = next.Buffer is not null && ReadIntoBuffer(file, next);
                }
            }
            catch (Exception)
            {
                // Advisory work on a thread of its own: a failure here must not take the host process down; the
                // merge's own read of the range reports any real problem with the file.
                ready = false;
            }
            finally
            {
                // Also after an unexpected failure: the merge may be waiting for this range.
                lock (_ranges)
                {
                    _reserved -= next.Capacity;
                    next.State = ready ? State.Ready : State.Unavailable;
                    if (!ready || next.Abandoned) ReturnBuffer(next);
                    if (next.Abandoned) Unlink(next);
                    Monitor.PulseAll(_ranges);
                }
            }
        }
    }

    private bool ReadIntoBuffer(FileReads file, Range range)
    {
        var descriptor = file.Descriptor;
        var needed = range.Offset + range.Length - range.BufferStart;
        try
        {
            for (long done = 0; done < needed;)
            {
                var got = pread(descriptor, range.Buffer + done, (nuint)Math.Min(range.BufferLength - done, 1L << 30), range.BufferStart + done);
                if (got <= 0) return false; // an error, or a file that ended early: the ordinary read reports it
                done += got;
                if (done < needed && done % Alignment != 0) return false;
            }
            return true;
        }
        finally
        {
            // Read once, into the buffer: its pages are not needed again (a range cached before this read is not here).
            // A drop lets go only of the page cache's folios wholly inside it, and the kernel's read-ahead fills a cold
            // file with folios of up to LargestFolio (2 MB here), which straddle the ranges' boundaries: each range of
            // a cold file (read in order, every range of it read once) is dropped with that span before it, else the
            // folio across every boundary stays cached. Left cached, they held 15 % of a cold 31 GB merge's inputs, the
            // page cache grew to 4.5 GB and system time rose (cold large DARE-linear, 3 pairs: export 5.4-5.7 ->
            // 4.4-4.7 s, system CPU 3.8-3.9 -> 1.9-2.0 s).
            var behind = file.Cold ? Math.Min(range.BufferStart, LargestFolio) : 0;
            if (!_pastPageCache) ReadAhead.Drop(descriptor, range.BufferStart - behind, range.BufferLength + behind);
        }
    }

    /// <summary>
    /// How the file of <paramref name="descriptor"/> is read ahead: opened again through /proc (the same open file,
    /// whatever its path now names) with O_DIRECT or, for reads through the page cache, as a descriptor of its own, so
    /// that the kernel's read-ahead serves it (the merge's descriptors are opened for random access, without it).
    /// </summary>
    private FileReads FileFor(int descriptor)
    {
        lock (_files)
        {
            if (!_files.TryGetValue(descriptor, out var file))
            {
                var path = $"/proc/self/fd/{descriptor}";
                var own = Posix.OpenReadOnly(path, _pastPageCache ? DirectOutputFile.DirectFlag()!.Value : 0);
                var cold = !_pastPageCache && own >= 0 && !ReadAhead.IsCached(descriptor, 0, lseek(own, 0, SeekEnd));
                file = new FileReads(own, cold);
                _files[descriptor] = file;
            }
            return file;
        }
    }

    /// <summary>
    /// The range holding file bytes [offset, offset + length) once it is read (waiting for it if it is queued or being
    /// read); null if there is none or it was not read past the cache. The caller hands it back to <see cref="Free"/>.
    /// </summary>
    public Range? Take(int descriptor, long offset, long length)
    {
        lock (_ranges)
        {
            // The exact range asked for, as the merge takes them; else the first that holds these bytes.
            var range = _asked.GetValueOrDefault((descriptor, offset, length)) ?? _ranges.FirstOrDefault(r => r.Covers(descriptor, offset, length));
            if (range is null) return null;
            while (range.State is State.Queued or State.Reading)
            {
                _awaited = range;
                Monitor.PulseAll(_ranges);
                Monitor.Wait(_ranges);
            }
            _awaited = null;
            Unlink(range);
            Forget(range);
            Monitor.PulseAll(_ranges);
            if (range.State != State.Ready) return null;
            _taken += _pool.CapacityOf(range.Buffer);
            Served++;
            ServedBytes += range.Length;
            return range;
        }
    }

    /// <summary>Returns the buffer of a range from <see cref="Take"/>.</summary>
    public void Free(Range range)
    {
        lock (_ranges)
        {
            if (range.Buffer is not null) _taken -= _pool.CapacityOf(range.Buffer);
            ReturnBuffer(range);
            Monitor.PulseAll(_ranges);
        }
    }

    /// <summary>Cancels or frees the ranges of <paramref name="tensor"/> not taken (null: all of them).</summary>
    public void Release(string? tensor)
    {
        lock (_ranges)
        {
            for (var node = _ranges.First; node is not null;)
            {
                var range = node.Value;
                node = node.Next;
                if (tensor is not null && !string.Equals(range.Tensor, tensor, StringComparison.Ordinal)) continue;
                Forget(range);
                if (range.State == State.Reading)
                {
                    range.Abandoned = true; // its reader frees it when the read returns
                    continue;
                }
                ReturnBuffer(range);
                Unlink(range);
            }
            Monitor.PulseAll(_ranges);
        }
    }

    /// <summary>Takes <paramref name="range"/> out of <see cref="_ranges"/> if it is still there (an abandoned one its reader may have taken out).</summary>
    private void Unlink(Range range)
    {
        if (range.Node?.List is not null) _ranges.Remove(range.Node);
    }

    /// <summary>Takes <paramref name="range"/> out of what <see cref="Fetch"/> finds (a range asked for again since it was abandoned stays).</summary>
    private void Forget(Range range)
    {
        if (_asked.TryGetValue(range.Key, out var asked) && asked == range) _asked.Remove(range.Key);
    }

    /// <summary>Waits until no range can still start or is being read (for tests).</summary>
    internal void Drain()
    {
        lock (_ranges)
        {
            while (_ranges.Any(r => r.State == State.Reading || (r.State == State.Queued && (Waiting == 0 || Waiting + r.Capacity <= _budget))))
            {
                Monitor.Wait(_ranges, 10);
            }
        }
    }

    private void ReturnBuffer(Range range)
    {
        if (range.Buffer is null) return;
        _pool.Return(range.Buffer);
        range.Buffer = null;
    }

    /// <summary>Stops the readers and frees every buffer; after this the reader's descriptors may be closed.</summary>
    public void Dispose()
    {
        lock (_ranges)
        {
            _stopping = true;
            Monitor.PulseAll(_ranges);
        }
        foreach (var reader in _readers) reader.Join();
        Release(null);
        lock (_ranges) _pool.Dispose();
        foreach (var file in _files.Values) if (file.Descriptor >= 0) Posix.Close(file.Descriptor);
        _files.Clear();
    }

    /// <summary>The largest folio the page cache holds a file's bytes in, for this machine's page size (<see cref="LargestFolioFor"/>).</summary>
    private static readonly long LargestFolio = LargestFolioFor(Environment.SystemPageSize);

    /// <summary>
    /// The largest page-cache folio with pages of <paramref name="pageSize"/> bytes: a page table's span (pageSize / 8
    /// entries), at most 2¹¹ pages (Linux's MAX_PAGECACHE_ORDER): 2 MB with 4 KB pages, 32 MB with 16 KB pages,
    /// 128 MB with 64 KB pages (arm64 servers). Dropping more behind than a kernel's folios span costs nothing: the
    /// ranges before were read once already.
    /// </summary>
    internal static long LargestFolioFor(long pageSize) => pageSize * Math.Min(pageSize / 8, 2048);

    private const int SeekEnd = 2;

    [LibraryImport("libc")]
    private static partial long lseek(int descriptor, long offset, int whence);

    [LibraryImport("libc")]
    private static partial nint pread(int descriptor, byte* buffer, nuint count, long offset);
}
