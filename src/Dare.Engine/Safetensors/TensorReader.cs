using Dare.Engine.Merge;
using Microsoft.Win32.SafeHandles;
using TorchSharp;
using static TorchSharp.torch;

namespace Dare.Engine.Safetensors;

/// <summary>
/// Reads tensor data on demand with positioned reads straight into tensor memory (no whole-file reads, no
/// intermediate copies). Keeps one handle per file open; not thread-safe per instance, use one per thread.
/// </summary>
public sealed class TensorReader : IDisposable
{
    /// <summary>Largest single read; keeps spans well inside int range for tensors above 2^31 bytes.</summary>
    private const int MaxReadBytes = 1 << 30;

    private readonly Dictionary<string, (SafeFileHandle Handle, FileIdentity Identity)> _handles = new(StringComparer.Ordinal);
    private readonly NonFiniteGuard? _nonFinite;
    private readonly HashSet<(string File, string Tensor)> _nonFiniteReported = new();

    /// <summary>A reader; with <paramref name="nonFinite"/> every float chunk read is scanned for NaN/Inf and reported there.</summary>
    public TensorReader(NonFiniteGuard? nonFinite = null) => _nonFinite = nonFinite;

    /// <summary>Reads elements [firstElement, firstElement + count) of the tensor into <paramref name="destination"/>.</summary>
    public unsafe void ReadElements(TensorInfo info, long firstElement, long count, byte* destination)
    {
        var elementSize = info.DType.ElementSize();
        CheckRange(info, firstElement, count);
        if (info.Assembly is { } assembly)
        {
            assembly.Read(this, firstElement, count, destination);
            return;
        }
        var handle = Handle(info);
        var offset = info.DataOffset + firstElement * elementSize;
        var scan = ScansForNonFinite(info);
        var found = false;
        // A range read ahead is copied from its buffer (see BufferedReadAhead).
        var readAhead = _buffered?.Take((int)handle.DangerousGetHandle(), offset, count * elementSize);
        try
        {
            // Each core copies (from the page cache or the read-ahead buffer) and scans its part; one thread alone left
            // the other core idle: a cold TIES spent 6.1–6.2 s in reads besides waiting for the disk, now 4.7–5.3 s.
            Partition.Run(count, (_, start, end) =>
            {
                if (ReadPart(info, handle, readAhead, offset + start * elementSize, destination + start * elementSize, (end - start) * elementSize, scan)) found = true;
            });
        }
        finally
        {
            if (readAhead is not null) _buffered!.Free(readAhead);
        }
        ReportNonFinite(info, found);
    }

    /// <summary>
    /// Reads <paramref name="bytes"/> bytes at file offset <paramref name="offset"/> (whole elements) into
    /// <paramref name="destination"/>; returns whether a NaN/Inf was seen. With <paramref name="scan"/> the bytes are
    /// scanned piece by piece, each right after it lands, while it is still in the core's cache: a separate pass over a
    /// whole chunk read it back from memory (Read took 1.28–1.37 s instead of 1.14–1.17 s in a large DARE-linear, 7.5 GB
    /// of inputs; without any scan, 0.9 s).
    /// </summary>
    private static unsafe bool ReadPart(TensorInfo info, SafeFileHandle handle, BufferedReadAhead.Range? readAhead, long offset, byte* destination, long bytes, bool scan)
    {
        var elementSize = info.DType.ElementSize();
        var scanned = destination;
        var found = false;
        while (bytes > 0)
        {
            var read = ReadPiece(info, handle, readAhead, offset, destination, (int)Math.Min(bytes, scan ? ScanPieceBytes : MaxReadBytes));
            destination += read;
            offset += read;
            bytes -= read;
            if (scan && !found)
            {
                // Whole elements only: a short read may end inside one.
                var end = destination - (destination - scanned) % elementSize;
                found = FiniteCheck.AnyNonFinite(scanned, end - scanned, info.DType);
                scanned = end;
            }
        }
        return found;
    }

    /// <summary>
    /// After a read: a tensor where NaN/Inf was <paramref name="found"/> is counted (in its file, once) and reported
    /// when first found, the guard throwing or queueing a warning; queued warnings are handed on either way.
    /// </summary>
    private void ReportNonFinite(TensorInfo info, bool found)
    {
        if (found && _nonFiniteReported.Add((info.File, info.Name))) _nonFinite!.ReportInput(info, CountNonFinite(info, Handle(info)));
        _nonFinite?.FlushWarnings();
    }

    /// <summary>Up to <paramref name="size"/> bytes at <paramref name="offset"/>, from the read-ahead buffer or the file; returns how many.</summary>
    private static unsafe int ReadPiece(TensorInfo info, SafeFileHandle handle, BufferedReadAhead.Range? readAhead, long offset, byte* destination, int size)
    {
        if (readAhead is not null)
        {
            readAhead.CopyTo(offset, destination, size);
            return size;
        }
        return ReadFromFile(info, handle, offset, destination, size);
    }

    /// <summary>All <paramref name="bytes"/> bytes of the file at <paramref name="offset"/>, in as many reads as it takes.</summary>
    internal static unsafe void ReadAll(TensorInfo info, SafeFileHandle handle, long offset, byte* destination, long bytes)
    {
        while (bytes > 0)
        {
            var read = ReadFromFile(info, handle, offset, destination, (int)Math.Min(bytes, 1 << 30));
            destination += read;
            offset += read;
            bytes -= read;
        }
    }

    /// <summary>Up to <paramref name="size"/> bytes of the file at <paramref name="offset"/> (at least one); returns how many.</summary>
    internal static unsafe int ReadFromFile(TensorInfo info, SafeFileHandle handle, long offset, byte* destination, int size)
    {
        int read;
        try
        {
            read = RandomAccess.Read(handle, new Span<byte>(destination, size), offset);
        }
        catch (IOException ex)
        {
            throw new DareException(DareErrorId.SafetensorsReadFailed, DareErrorKind.ReadError,
                $"Reading tensor '{info.Name}' from '{info.File}' failed: {ex.Message}", ex) { FilePath = info.File, TensorName = info.Name };
        }
        if (read == 0)
        {
            throw new DareException(DareErrorId.SafetensorsReadFailed, DareErrorKind.ReadError,
                $"'{info.File}' ended while reading tensor '{info.Name}' (the file was truncated after it was opened).") { FilePath = info.File, TensorName = info.Name };
        }
        return read;
    }

    /// <summary>
    /// Runs [<paramref name="firstRun"/>, firstRun + <paramref name="runs"/>) of <paramref name="run"/> elements, run r
    /// starting at element r × <paramref name="spacing"/> of the tensor (the last cut at its end), read one after the
    /// other into <paramref name="destination"/> (run firstRun + i at i × <paramref name="run"/> elements): a sample of
    /// a tensor in the page cache, a few hundred bytes per read. Not scanned for NaN/Inf (the merge's own reads of the
    /// same bytes are).
    /// </summary>
    public unsafe void ReadRuns(TensorInfo info, long spacing, int run, long firstRun, long runs, byte* destination)
    {
        if (info.Assembly is not null) throw new InvalidOperationException($"Tensor '{info.Name}' is assembled from pieces; it has no runs of its own to read.");
        var handle = Handle(info);
        var elementSize = info.DType.ElementSize();
        var n = info.ElementCount;
        for (long r = 0, at = 0; r < runs && (firstRun + r) * spacing < n; r++, at += run * elementSize)
        {
            var start = (firstRun + r) * spacing;
            ReadAll(info, handle, info.DataOffset + start * elementSize, destination + at, Math.Min(run, n - start) * elementSize);
        }
    }

    /// <summary>
    /// Elements [firstElement, firstElement + count) of the tensor, for a kernel that reads them piece by piece from
    /// several threads (<see cref="StoredRange"/>): from its buffer when the range was read ahead
    /// (<see cref="BufferedReadAhead"/>), else from the file as each piece is needed (an assembled tensor is read whole
    /// first). Once the kernel is done, call
    /// <see cref="Complete"/>, then dispose the range.
    /// </summary>
    public unsafe StoredRange OpenRange(TensorInfo info, long firstElement, long count)
    {
        CheckRange(info, firstElement, count);
        var elementSize = info.DType.ElementSize();
        if (info.Assembly is not null)
        {
            var memory = (byte*)PageMemory.Allocate(count * elementSize);
            try
            {
                ReadElements(info, firstElement, count, memory);
            }
            catch
            {
                PageMemory.Free(memory, count * elementSize);
                throw;
            }
            return new StoredRange(info, firstElement, count, memory, owned: true);
        }
        var handle = Handle(info);
        var readAhead = _buffered?.Take((int)handle.DangerousGetHandle(), info.DataOffset + firstElement * elementSize, count * elementSize);
        return new StoredRange(info, firstElement, count, handle, _buffered, readAhead, scan: ScansForNonFinite(info));
    }

    /// <summary>Reports NaN/Inf found in the pieces of <paramref name="range"/> (the guard throws or queues a warning), on the thread that opened it.</summary>
    public void Complete(StoredRange range) => ReportNonFinite(range.Info, range.FoundNonFinite);

    private bool ScansForNonFinite(TensorInfo info) =>
        _nonFinite is not null && FiniteCheck.Applies(info.DType) && !_nonFiniteReported.Contains((info.File, info.Name));

    /// <summary>Read size while scanning: small enough to stay in the core's caches between the read and the scan.</summary>
    private const int ScanPieceBytes = 1 << 20;

    /// <summary>Counts NaN/Inf over the whole tensor (only once one was found: a failure or warning path).</summary>
    private static unsafe long CountNonFinite(TensorInfo info, SafeFileHandle handle)
    {
        const int BlockBytes = 8 << 20;
        var buffer = new byte[(int)Math.Min(BlockBytes, info.ByteLength)];
        long found = 0;
        for (long done = 0; done < info.ByteLength;)
        {
            var size = (int)Math.Min(buffer.Length, info.ByteLength - done);
            var read = RandomAccess.Read(handle, buffer.AsSpan(0, size), info.DataOffset + done);
            if (read <= 0) break;
            read -= read % info.DType.ElementSize();
            fixed (byte* block = buffer) found += FiniteCheck.CountNonFinite(block, read, info.DType);
            done += read;
        }
        return found;
    }

    /// <summary>Reads a whole tensor in its stored dtype and shape (FP8 comes back as raw bytes).</summary>
    public Tensor Read(TensorInfo info)
    {
        var shape = info.DType is SafetensorsDType.F8_E4M3 or SafetensorsDType.F8_E5M2 ? new[] { info.ByteLength } : info.Shape;
        return ReadNew(info, shape, 0, info.ElementCount);
    }

    /// <summary>Reads a range of elements as a 1-D tensor in the stored dtype.</summary>
    public Tensor ReadRange(TensorInfo info, long firstElement, long count)
    {
        CheckRange(info, firstElement, count); // before allocating: a bad count must not reach torch.empty
        return ReadNew(info, new[] { count }, firstElement, count);
    }

    /// <summary>A new tensor of <paramref name="shape"/> filled with elements [firstElement, firstElement + count); disposed if the read fails.</summary>
    private unsafe Tensor ReadNew(TensorInfo info, long[] shape, long firstElement, long count)
    {
        TorchRuntime.EnsureInitialized();
        var tensor = empty(shape, info.DType.ToScalarType());
        try
        {
            ReadElements(info, firstElement, count, TensorMemory.Pointer(tensor));
            return tensor;
        }
        catch
        {
            tensor.Dispose();
            throw;
        }
    }

    private static void CheckRange(TensorInfo info, long firstElement, long count)
    {
        // Written so that no sum can overflow: firstElement + count may exceed long.MaxValue.
        if (firstElement < 0 || count < 0 || firstElement > info.ElementCount || count > info.ElementCount - firstElement)
        {
            throw new ArgumentOutOfRangeException(nameof(count), $"Elements [{firstElement}, {firstElement} + {count}) are outside tensor '{info.Name}' ({info.ElementCount} elements).");
        }
    }

    /// <summary>
    /// Whether the file holding the tensor was mostly in the page cache when this reader was first asked (before the
    /// export read any of it past its header; <see cref="ReadAhead.IsCached"/> over the whole file). Unlike
    /// <see cref="IsCached"/>, the kernel's read-ahead of a neighbouring tensor read ahead past the cache cannot make
    /// a cold file's tensor look cached (up to 8 MB past each read on this project's VM).
    /// </summary>
    public bool FileWasCached(TensorInfo info)
    {
        if (_filesCached.TryGetValue(info.File, out var cached)) return cached;
        cached = false;
        if (OperatingSystem.IsLinux() && info.Assembly is null)
        {
            try
            {
                var handle = Handle(info);
                cached = ReadAhead.IsCached((int)handle.DangerousGetHandle(), 0, Math.Max(1, RandomAccess.GetLength(handle)));
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or DareException)
            {
            }
        }
        _filesCached[info.File] = cached;
        return cached;
    }

    private readonly Dictionary<string, bool> _filesCached = new(StringComparer.Ordinal);

    /// <summary>
    /// Whether the tensor's bytes are mostly in the page cache (<see cref="ReadAhead.IsCached"/>); false where that
    /// cannot be asked (not Linux, an assembled tensor, a file that cannot be opened).
    /// </summary>
    public bool IsCached(TensorInfo info)
    {
        if (!OperatingSystem.IsLinux() || info.Assembly is not null) return false;
        try
        {
            return ReadAhead.IsCached((int)Handle(info).DangerousGetHandle(), info.DataOffset, Math.Max(1, info.ByteLength));
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or DareException)
        {
            return false;
        }
    }

    /// <summary>
    /// Asks the OS to start reading elements [firstElement, firstElement + count) into the page cache in the
    /// background (posix_fadvise WILLNEED on Linux, given on the <see cref="ReadAhead"/> thread), so that a later
    /// <see cref="ReadElements"/> finds them there: the disk reads of the next chunks overlap the computation of this
    /// one. With <paramref name="readOnce"/> (the merge reads the range once, then is done with it) the range is read
    /// ahead into a buffer of its own instead (<see cref="BufferedReadAhead"/>), for the one <see cref="ReadElements"/>
    /// of exactly that range or part of it. Advisory only: returns whether the advice was queued, and never throws (a
    /// real problem with the file surfaces in the read).
    /// </summary>
    public bool Prefetch(TensorInfo info, long firstElement, long count, bool readOnce = false)
    {
        if (!OperatingSystem.IsLinux() || count <= 0 || info.Assembly is not null) return false;
        try
        {
            CheckRange(info, firstElement, count);
            var elementSize = info.DType.ElementSize();
            var descriptor = (int)Handle(info).DangerousGetHandle();
            var offset = info.DataOffset + firstElement * elementSize;
            if (readOnce && BufferedReadAhead.Enabled) (_buffered ??= new BufferedReadAhead()).Fetch(descriptor, info.Name, offset, count * elementSize);
            else (_readAhead ??= new ReadAhead()).Fetch(descriptor, info.Name, offset, count * elementSize);
            return true;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or DareException or ArgumentOutOfRangeException)
        {
            return false;
        }
    }

    /// <summary>
    /// Lets the OS drop from the page cache what <see cref="Prefetch"/> brought into it for tensor
    /// <paramref name="tensorName"/> (of the base or any input), once the executor is done with that tensor. Ranges
    /// that were cached before are left alone, so models that were in memory stay there. Reading a model larger than
    /// memory then recycles a few tensors' worth of page-cache memory instead of filling all of it: no eviction of
    /// what is about to be read, and (on VMs whose host reclaims freed guest memory) no fresh pages to fault in: a
    /// cold DARE-linear of 31 GB of inputs took 40 s with it and 67 s without. DARE_RELEASE_READS=0 turns it off.
    /// Ranges read ahead for this tensor and not read are freed.
    /// </summary>
    public void Release(string tensorName)
    {
        _buffered?.Release(tensorName);
        _readAhead?.Release(tensorName);
    }

    /// <summary>Waits until the page-cache advice given so far has been carried out (for tests).</summary>
    internal void WaitForReadAhead()
    {
        _readAhead?.Drain();
        _buffered?.Drain();
    }

    /// <summary>Reads served from buffered read-ahead buffers so far (for tests).</summary>
    internal int BufferedReadsServed => _buffered?.Served ?? 0;

    /// <summary>Bytes of the reads served from buffered read-ahead buffers so far.</summary>
    internal long BufferedBytesServed => _buffered?.ServedBytes ?? 0;

    /// <summary>Bytes held in buffered read-ahead buffers now (for tests).</summary>
    internal long BytesInReadAheadBuffers => _buffered?.BytesInUse ?? 0;

    private ReadAhead? _readAhead;
    private BufferedReadAhead? _buffered;

    /// <summary>
    /// The open handle of the tensor's file. The first use opens it only if the path is still a regular file with the
    /// identity recorded when the header was read, and the handle is that file (fstat); every use compares the
    /// tensor's recorded identity with the open file's, so a plan built before the file was replaced fails with
    /// InputChanged instead of reading other bytes at its old offsets.
    /// </summary>
    private SafeFileHandle Handle(TensorInfo info)
    {
        // Locked: the presamples of several inputs read their files at once (FilePresample).
        (SafeFileHandle Handle, FileIdentity Identity) open;
        lock (_handles)
        {
            if (!_handles.TryGetValue(info.File, out open))
            {
                open = SafetensorsFile.OpenChecked(info.File, info.FileIdentity);
                _handles[info.File] = open;
                return open.Handle;
            }
        }
        if (info.FileIdentity is { } recorded && recorded != open.Identity)
        {
            throw new DareException(DareErrorId.InputChanged, DareErrorKind.InvalidData,
                $"'{info.File}' changed after it was opened (then: {recorded}; now: {open.Identity}); nothing was written. Open the model again and rebuild the plan.")
            { FilePath = info.File, TensorName = info.Name };
        }
        return open.Handle;
    }

    public void Dispose()
    {
        // First: the read-ahead thread uses the descriptors closed below.
        _readAhead?.Dispose();
        _readAhead = null;
        _buffered?.Dispose();
        _buffered = null;
        foreach (var open in _handles.Values) open.Handle.Dispose();
        _handles.Clear();
    }
}
