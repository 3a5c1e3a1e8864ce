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
        using var file = File.OpenHandle(path);
        Assert.Equal(0, fsync((int)file.DangerousGetHandle()));
        Assert.Equal(0, posix_fadvise((int)file.DangerousGetHandle(), 0, 0, 4 /* DONTNEED */));
    }

    /// <summary>Whether the page holding byte <paramref name="offset"/> is cached, asked with cachestat, which (unlike a 1-byte RWF_NOWAIT read) does not start the kernel's read-ahead.</summary>
    public static bool Holds(string path, long offset)
    {
        using var file = File.OpenHandle(path);
        return ReadAhead.IsCached((int)file.DangerousGetHandle(), offset, 1);
    }

    [LibraryImport("libc")]
    private static partial int posix_fadvise(int descriptor, long offset, long length, int advice);

    [LibraryImport("libc")]
    private static partial int fsync(int descriptor);
}
