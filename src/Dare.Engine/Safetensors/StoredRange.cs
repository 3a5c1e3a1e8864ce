using Microsoft.Win32.SafeHandles;

namespace Dare.Engine.Safetensors;

/// <summary>
/// Elements [first, first + count) of one stored tensor, for a kernel whose threads read it piece by piece
/// (<see cref="Piece"/>) right before they use each piece. A piece comes straight from memory when the range is there
/// already (read ahead into a buffer, or assembled from several tensors), else by a positioned read into the
/// calling thread's small buffer, which then stays in the core's cache for the kernel. Reading a whole chunk into a
/// chunk-sized buffer first costs far more: on this project's machine warm file data copies at 17–23 GB/s into a
/// 128 KB–1 MB buffer and at 2.9 GB/s into a 64 MB one (dd), and the kernel then reads the chunk back from memory.
/// Thread-safe. Float pieces are scanned for NaN/Inf as they arrive; <see cref="TensorReader.Complete"/> reports
/// what was found, on the thread that opened the range.
/// </summary>
public sealed unsafe class StoredRange : IDisposable
{
    private readonly SafeFileHandle? _handle;
    private readonly long _offset;
    private readonly int _elementSize;
    private readonly bool _scan;
    private readonly BufferedReadAhead? _buffered;
    private BufferedReadAhead.Range? _readAhead;
    private byte* _memory;
    private byte* _owned;
    private int _foundNonFinite;

    /// <summary>A range read from the file piece by piece, or from <paramref name="readAhead"/>'s buffer when it has one.</summary>
    internal StoredRange(TensorInfo info, long first, long count, SafeFileHandle handle, BufferedReadAhead? buffered, BufferedReadAhead.Range? readAhead, bool scan)
    {
        (Info, First, Count, _handle, _buffered, _readAhead, _scan) = (info, first, count, handle, buffered, readAhead, scan);
        _elementSize = info.DType.ElementSize();
        _offset = info.DataOffset + first * _elementSize;
        if (readAhead is not null) _memory = readAhead.Buffer + (_offset - readAhead.BufferStart);
    }

    /// <summary>A range already in memory (read and scanned): freed by <see cref="Dispose"/> when <paramref name="owned"/>, else the caller's.</summary>
    internal StoredRange(TensorInfo info, long first, long count, byte* memory, bool owned)
    {
        (Info, First, Count) = (info, first, count);
        _memory = memory;
        if (owned) _owned = memory;
        _elementSize = info.DType.ElementSize();
    }

    public TensorInfo Info { get; }
    public long First { get; }
    public long Count { get; }

    /// <summary>Whether a piece scanned so far held NaN or ±Inf.</summary>
    internal bool FoundNonFinite => Volatile.Read(ref _foundNonFinite) != 0;

    /// <summary>
    /// Elements [start, start + length) of the range (start counted from its first element): a pointer into the range's
    /// memory, or <paramref name="buffer"/> (room for <paramref name="length"/> elements) filled from the file.
    /// </summary>
    public byte* Piece(long start, long length, byte* buffer)
    {
        if (start < 0 || length < 0 || start > Count || length > Count - start) throw new ArgumentOutOfRangeException(nameof(length));
        byte* piece;
        if (_memory is not null) piece = _memory + start * _elementSize;
        else
        {
            TensorReader.ReadAll(Info, _handle!, _offset + start * _elementSize, buffer, length * _elementSize);
            piece = buffer;
        }
        if (_scan && Volatile.Read(ref _foundNonFinite) == 0 && FiniteCheck.AnyNonFinite(piece, length * _elementSize, Info.DType)) Volatile.Write(ref _foundNonFinite, 1);
        return piece;
    }

    /// <summary>Frees the read-ahead buffer or the owned memory; pieces handed out from them are invalid after this.</summary>
    public void Dispose()
    {
        if (_readAhead is not null) _buffered!.Free(_readAhead);
        _readAhead = null;
        if (_owned is not null) PageMemory.Free(_owned, Count * _elementSize);
        _owned = null;
        _memory = null;
    }
}
