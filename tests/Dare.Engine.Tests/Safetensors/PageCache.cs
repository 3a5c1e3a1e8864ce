using System.Runtime.InteropServices;
using Dare.Engine.Safetensors;
using Xunit;

namespace Dare.Engine.Tests.Safetensors;

/// <summary>What tests of the read path need of the page cache: to drop a file from it, and to ask whether a byte is in it.</summary>
public static partial class PageCache
{
    /// <summary>Flushes the file to the disk and drops it from the page cache.</summary>
    public static void Drop(string path)
    {
        using (var file = File.OpenHandle(path)) Assert.Equal(0, fsync((int)file.DangerousGetHandle()));
        Drop(path, 0, 0); // length 0: to the end of the file
    }

    /// <summary>Drops bytes [offset, offset + length) of an already flushed file from the page cache (the pages they touch).</summary>
    public static void Drop(string path, long offset, long length)
    {
        using var file = File.OpenHandle(path);
        Assert.Equal(0, posix_fadvise((int)file.DangerousGetHandle(), offset, length, 4 /* DONTNEED */));
    }

    /// <summary>Whether the page holding byte <paramref name="offset"/> is cached, asked with cachestat, which (unlike a 1-byte RWF_NOWAIT read) does not start the kernel's read-ahead.</summary>
    public static bool Holds(string path, long offset)
    {
        using var file = File.OpenHandle(path);
        return ReadAhead.IsCached((int)file.DangerousGetHandle(), offset, 1);
    }

    /// <summary>
    /// Where tests of the read path put their files: the temp folder, unless it is in memory (tmpfs, as /tmp is on
    /// many systems), whose pages cannot be dropped; then a folder beside the test assembly.
    /// </summary>
    public static string TempRoot { get; } = InMemoryFileSystem(Path.GetTempPath()) ? Path.Combine(AppContext.BaseDirectory, "page-cache-tests") : Path.GetTempPath();

    private static unsafe bool InMemoryFileSystem(string path)
    {
        const long TmpfsMagic = 0x01021994, RamfsMagic = 0x858458f6;
        var buffer = stackalloc long[32]; // struct statfs (120 bytes on x86-64 and arm64); f_type comes first
        return OperatingSystem.IsLinux() && statfs(path, buffer) == 0 && buffer[0] is TmpfsMagic or RamfsMagic;
    }

    [LibraryImport("libc", StringMarshalling = StringMarshalling.Utf8)]
    private static unsafe partial int statfs(string path, long* buffer);

    [LibraryImport("libc")]
    private static partial int posix_fadvise(int descriptor, long offset, long length, int advice);

    [LibraryImport("libc")]
    private static partial int fsync(int descriptor);
}
