using System.Runtime.InteropServices;

namespace Dare.Engine.Safetensors;

/// <summary>
/// One output file written front to back. On Linux the bytes bypass the page cache (O_DIRECT): a merge writes
/// gigabytes it will not read back, and buffered writes pay for page-cache memory twice (filling it, then the
/// fsync that drains it) and evict the inputs the merge is still reading. Elsewhere, or where the file system
/// refuses O_DIRECT, it is an ordinary buffered FileStream. Either way <see cref="Complete"/> makes the file durable.
/// </summary>
internal abstract class OutputFile : IDisposable
{
    /// <summary>Set to 0 to write through the page cache even where unbuffered writes are possible.</summary>
    public const string DirectWritesVariable = "DARE_DIRECT_WRITES";

    public string Path { get; }

    /// <summary>True when writes bypass the page cache.</summary>
    public abstract bool IsDirect { get; }

    protected OutputFile(string path) => Path = path;

    /// <summary>Whether <see cref="Create"/> tries unbuffered writes unless told otherwise: not when the environment says 0.</summary>
    public static bool DirectWritesByDefault => DirectWritesFrom(Environment.GetEnvironmentVariable(DirectWritesVariable));

    /// <summary>What a value of <see cref="DirectWritesVariable"/> means: unbuffered writes unless it is 0.</summary>
    internal static bool DirectWritesFrom(string? value) => value is not "0";

    /// <summary>Creates a new file (failing if it exists), unbuffered when <paramref name="direct"/> and the platform allow it.</summary>
    public static OutputFile Create(string path, bool direct)
    {
        var fileWasCreated = false;
        if (direct && DirectOutputFile.TryCreate(path, out var unbuffered, out fileWasCreated)) return unbuffered;
        // An open refused for O_DIRECT alone may already have created the (empty) file.
        return new BufferedOutputFile(path, fileWasCreated ? FileMode.Truncate : FileMode.CreateNew);
    }

    public abstract void Write(ReadOnlySpan<byte> bytes);

    /// <summary>Bytes written from the caller's memory rather than copied through a buffer of the file's own.</summary>
    public virtual long BytesWrittenInPlace => 0;

    /// <summary>Writes what is pending and flushes the file to the device.</summary>
    public abstract void Complete();

    public abstract void Dispose();
}

internal sealed class BufferedOutputFile : OutputFile
{
    private readonly FileStream _stream;

    public BufferedOutputFile(string path, FileMode mode) : base(path) =>
        _stream = new FileStream(path, mode, FileAccess.Write, FileShare.None, 1 << 20);

    public override bool IsDirect => false;

    public override void Write(ReadOnlySpan<byte> bytes) => _stream.Write(bytes);

    public override void Complete() => _stream.Flush(flushToDisk: true);

    public override void Dispose() => _stream.Dispose();
}

/// <summary>
/// O_DIRECT requires block-aligned memory, offsets and lengths, so bytes are gathered in an aligned staging buffer
/// and written a full buffer at a time; the last block is padded with zeros and the file truncated to its length.
/// Bytes whose memory is in phase with the file (an address that is the file position modulo the alignment, as a
/// merge's output chunks are: block-aligned buffers, and data blocks that start on a block, see
/// <see cref="CheckpointWriter.DataAlignment"/>) are written from where they are, all but their first and last partial
/// blocks: copying a large export through the staging buffer took a core ~0.2 s per 2 GB here.
/// </summary>
internal sealed unsafe partial class DirectOutputFile : OutputFile
{
    // A multiple of every logical block size in use (512 and 4096).
    private const int Alignment = 4096;
    // One write request per 32 MB: with inputs read from the same disk at the same time, a cold DARE-linear of 31 GB
    // took 27.3–28.0 s with 32 MB requests and 28.6–29.3 s with 8 MB ones (the writer fell behind).
    internal const int StagingSize = 32 << 20;

    private readonly int _descriptor;
    private byte* _staging;
    private int _staged;
    private long _flushed;

    private DirectOutputFile(string path, int descriptor) : base(path)
    {
        _descriptor = descriptor;
        _staging = (byte*)PageMemory.Allocate(StagingSize);
    }

    public override bool IsDirect => true;

    /// <summary>Opens <paramref name="path"/> with O_DIRECT; false (with <paramref name="created"/> telling whether the open left an empty file) where that is not possible.</summary>
    public static bool TryCreate(string path, out OutputFile file, out bool created)
    {
        file = null!;
        created = false;
        if (!OperatingSystem.IsLinux() || DirectFlag() is not { } directFlag) return false;
        var existed = File.Exists(path);
        var descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | directFlag, 420 /* 0644 */);
        if (descriptor < 0)
        {
            // The caller's buffered open reports any real error (the file exists, no permission, ...) in .NET's words.
            created = !existed && File.Exists(path);
            return false;
        }
        file = new DirectOutputFile(path, descriptor);
        return true;
    }

    /// <summary>O_DIRECT's value, which differs between architectures; null where it is not known (the buffered paths are used there).</summary>
    internal static int? DirectFlag() => RuntimeInformation.ProcessArchitecture switch
    {
        Architecture.X64 or Architecture.X86 => 0x4000,
        Architecture.Arm64 or Architecture.Arm => 0x10000,
        _ => null,
    };

    public override long BytesWrittenInPlace => _writtenInPlace;
    private long _writtenInPlace;

    public override void Write(ReadOnlySpan<byte> bytes)
    {
        fixed (byte* data = bytes)
        {
            // In phase: the staging takes the bytes up to the next block boundary (completing its last block), the
            // whole blocks after it go from where they are, and the staging keeps the partial block at the end.
            var position = _flushed + _staged;
            var head = (int)((Alignment - position % Alignment) % Alignment);
            if ((((long)data - position) & (Alignment - 1)) == 0 && bytes.Length - head >= InPlaceMinimum)
            {
                Stage(bytes[..head]);
                if (_staged > 0) FlushStaging(_staged);
                var whole = (bytes.Length - head) / Alignment * Alignment;
                WriteBlocks(data + head, whole);
                _writtenInPlace += whole;
                bytes = bytes[(head + whole)..];
            }
        }
        Stage(bytes);
    }

    /// <summary>Fewest bytes written in place: below this a copy costs less than an extra write request.</summary>
    internal const int InPlaceMinimum = 256 << 10;

    private void Stage(ReadOnlySpan<byte> bytes)
    {
        while (!bytes.IsEmpty)
        {
            var size = Math.Min(bytes.Length, StagingSize - _staged);
            bytes[..size].CopyTo(new Span<byte>(_staging + _staged, size));
            _staged += size;
            bytes = bytes[size..];
            if (_staged == StagingSize) FlushStaging(StagingSize);
        }
    }

    public override void Complete()
    {
        var length = _flushed + _staged;
        if (_staged > 0)
        {
            var padded = (_staged + Alignment - 1) / Alignment * Alignment;
            new Span<byte>(_staging + _staged, padded - _staged).Clear();
            FlushStaging(padded);
            Check(ftruncate(_descriptor, length), "truncate");
            _flushed = length;
        }
        // O_DIRECT bypasses the page cache, not the device's write cache or the file's metadata (its size).
        Check(fsync(_descriptor), "flush");
    }

    private void FlushStaging(int length)
    {
        WriteBlocks(_staging, length);
        _staged = 0;
    }

    /// <summary>Writes <paramref name="length"/> bytes (whole blocks, from block-aligned memory) at the end of what is flushed, in requests of at most <see cref="StagingSize"/>.</summary>
    private void WriteBlocks(byte* data, long length)
    {
        long offset = 0;
        while (offset < length)
        {
            var written = pwrite(_descriptor, data + offset, (nuint)Math.Min(length - offset, StagingSize), _flushed + offset);
            if (written < 0)
            {
                if (Marshal.GetLastPInvokeError() == EINTR) continue;
                Check(-1, "write");
            }
            offset += written;
        }
        _flushed += length;
    }

    private void Check(int result, string operation)
    {
        if (result >= 0) return;
        var error = Marshal.GetLastPInvokeError();
        throw new IOException($"Could not {operation} '{Path}': {Marshal.GetPInvokeErrorMessage(error)} (errno {error}).", error);
    }

    public override void Dispose()
    {
        if (_staging is null) return;
        close(_descriptor);
        PageMemory.Free(_staging, StagingSize);
        _staging = null;
    }

    private const int O_WRONLY = 0x1, O_CREAT = 0x40, O_EXCL = 0x80, O_CLOEXEC = 0x80000;
    private const int EINTR = 4;

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int open(string path, int flags, int mode);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint pwrite(int descriptor, byte* buffer, nuint count, long offset);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int ftruncate(int descriptor, long length);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int fsync(int descriptor);

    [LibraryImport("libc")]
    private static partial int close(int descriptor);
}
