using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using TorchSharp;
using static TorchSharp.torch;

namespace Dare.Engine.Safetensors;

/// <summary>
/// Reads tensor data on demand with positioned reads straight into tensor memory (no whole-file reads, no
/// intermediate copies). Keeps one handle per file open; not thread-safe per instance, use one per thread.
/// </summary>
public sealed partial class TensorReader : IDisposable
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
        var remaining = count * elementSize;
        var start = destination;
        while (remaining > 0)
        {
            var size = (int)Math.Min(remaining, MaxReadBytes);
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
            destination += read;
            offset += read;
            remaining -= read;
        }
        if (_nonFinite is not null) CheckFinite(info, start, count * elementSize, handle);
    }

    /// <summary>
    /// Scans the chunk just read; on a find, counts the whole tensor in its file (once) and reports it to the guard,
    /// which throws or queues a warning. A tensor already reported is not scanned again.
    /// </summary>
    private unsafe void CheckFinite(TensorInfo info, byte* data, long bytes, SafeFileHandle handle)
    {
        if (!FiniteCheck.Applies(info.DType) || _nonFiniteReported.Contains((info.File, info.Name))) return;
        if (FiniteCheck.AnyNonFinite(data, bytes, info.DType))
        {
            _nonFiniteReported.Add((info.File, info.Name));
            _nonFinite!.ReportInput(info, CountNonFinite(info, handle));
        }
        _nonFinite!.FlushWarnings();
    }

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
    /// Asks the OS to start reading elements [firstElement, firstElement + count) into the page cache in the
    /// background (posix_fadvise WILLNEED on Linux), so that a later <see cref="ReadElements"/> finds them there: the
    /// disk reads of the next chunk overlap the computation of this one. A range whose last byte is already cached
    /// is left alone, since the advice itself costs time proportional to the range. Advisory only: returns whether
    /// the range is now cached or being read, and never throws (a real problem with the file surfaces in the read).
    /// </summary>
    public unsafe bool Prefetch(TensorInfo info, long firstElement, long count)
    {
        if (!OperatingSystem.IsLinux() || count <= 0 || info.Assembly is not null) return false;
        try
        {
            CheckRange(info, firstElement, count);
            var elementSize = info.DType.ElementSize();
            var descriptor = (int)Handle(info).DangerousGetHandle();
            var offset = info.DataOffset + firstElement * elementSize;
            var length = count * elementSize;
            byte probe;
            var vector = new IoVector { Base = &probe, Length = 1 };
            if (preadv2(descriptor, &vector, 1, offset + length - 1, NoWait) == 1) return true;
            if (posix_fadvise(descriptor, offset, length, WillNeed) != 0) return false;
            if (ReleaseReads) _broughtIn.Add((info, offset, length));
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
    /// what is about to be read, and (on VMs whose host reclaims freed guest memory) no fresh pages to fault in;
    /// reading cold inputs this way took 14–16 s for 30 GB here instead of 34–36 s. DARE_RELEASE_READS=0 turns it off.
    /// </summary>
    public void Release(string tensorName)
    {
        if (_broughtIn.Count == 0) return;
        _broughtIn.RemoveAll(range =>
        {
            if (!string.Equals(range.Info.Name, tensorName, StringComparison.Ordinal)) return false;
            DropFromCache(range);
            return true;
        });
    }

    private void DropFromCache((TensorInfo Info, long Offset, long Length) range)
    {
        try
        {
            if (_handles.TryGetValue(range.Info.File, out var open)) posix_fadvise((int)open.Handle.DangerousGetHandle(), range.Offset, range.Length, DontNeed);
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException)
        {
            // Advisory only.
        }
    }

    /// <summary>Whether <see cref="Release"/> drops what reads brought into the page cache (DARE_RELEASE_READS=0: no).</summary>
    private static readonly bool ReleaseReads = Environment.GetEnvironmentVariable("DARE_RELEASE_READS") is not "0";

    private readonly List<(TensorInfo Info, long Offset, long Length)> _broughtIn = new();

    private const int WillNeed = 3; // POSIX_FADV_WILLNEED
    private const int DontNeed = 4; // POSIX_FADV_DONTNEED
    private const int NoWait = 0x8; // RWF_NOWAIT: read only what is in the page cache

    private unsafe struct IoVector
    {
        public byte* Base;
        public nuint Length;
    }

    [LibraryImport("libc")]
    private static partial int posix_fadvise(int descriptor, long offset, long length, int advice);

    [LibraryImport("libc")]
    private static unsafe partial nint preadv2(int descriptor, IoVector* vectors, int count, long offset, int flags);

    /// <summary>
    /// The open handle of the tensor's file. The first use opens it only if the path is still a regular file with the
    /// identity recorded when the header was read, and the handle is that file (fstat); every use compares the
    /// tensor's recorded identity with the open file's, so a plan built before the file was replaced fails with
    /// InputChanged instead of reading other bytes at its old offsets.
    /// </summary>
    private SafeFileHandle Handle(TensorInfo info)
    {
        if (!_handles.TryGetValue(info.File, out var open))
        {
            open = SafetensorsFile.OpenChecked(info.File, info.FileIdentity);
            _handles[info.File] = open;
        }
        else if (info.FileIdentity is { } recorded && recorded != open.Identity)
        {
            throw new DareException(DareErrorId.InputChanged, DareErrorKind.InvalidData,
                $"'{info.File}' changed after it was opened (then: {recorded}; now: {open.Identity}); nothing was written. Open the model again and rebuild the plan.")
            { FilePath = info.File, TensorName = info.Name };
        }
        return open.Handle;
    }

    public void Dispose()
    {
        foreach (var range in _broughtIn) DropFromCache(range);
        _broughtIn.Clear();
        foreach (var open in _handles.Values) open.Handle.Dispose();
        _handles.Clear();
    }
}
