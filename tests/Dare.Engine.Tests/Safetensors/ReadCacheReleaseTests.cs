using System.Runtime.InteropServices;
using Dare.Engine.Safetensors;
using Xunit;

namespace Dare.Engine.Tests.Safetensors;

/// <summary>
/// What a read brings into the page cache is let go once the executor is done with the tensor; what was cached
/// before stays. Observed with a 1-byte RWF_NOWAIT read, which succeeds only for a cached page.
/// </summary>
public sealed partial class ReadCacheReleaseTests : IDisposable
{
    private readonly TempDirectory _temp = new();

    public void Dispose() => _temp.Dispose();

    /// <summary>A one-tensor file of 8 MB, synced and then dropped from the page cache.</summary>
    private (string Path, TensorInfo Info) ColdFile(string name)
    {
        var values = new float[2 << 20];
        for (var i = 0; i < values.Length; i++) values[i] = i;
        var path = RawSafetensors.WriteFile(_temp[name], new[] { new RawTensor("w", "F32", new long[] { values.Length }, MemoryMarshal.AsBytes(values.AsSpan()).ToArray()) });
        using (var file = File.OpenHandle(path))
        {
            Assert.Equal(0, fsync((int)file.DangerousGetHandle()));
            Assert.Equal(0, posix_fadvise((int)file.DangerousGetHandle(), 0, 0, 4 /* DONTNEED */));
        }
        var info = Checkpoint.Open(path).Tensors.Single();
        Assert.False(IsCached(path, Middle(info)), "the test file should start out of the page cache");
        return (path, info);
    }

    [Fact]
    public void A_prefetched_range_that_was_not_cached_is_dropped_after_release()
    {
        var (path, info) = ColdFile("cold.safetensors");
        var middle = Middle(info);
        using var reader = new TensorReader();

        Assert.True(reader.Prefetch(info, 0, info.ElementCount));
        var bytes = new byte[info.ByteLength];
        unsafe
        {
            fixed (byte* destination = bytes) reader.ReadElements(info, 0, info.ElementCount, destination);
        }
        Assert.True(IsCached(path, middle));
        Assert.Equal(1f, BitConverter.ToSingle(bytes, 4));

        reader.Release("another tensor");
        Assert.True(IsCached(path, middle));
        reader.Release("w");
        Assert.False(IsCached(path, middle));
    }

    [Fact]
    public void A_range_that_was_already_cached_stays_cached()
    {
        var (path, info) = ColdFile("warm.safetensors");
        var middle = Middle(info);
        File.ReadAllBytes(path);
        Assert.True(IsCached(path, middle));
        using var reader = new TensorReader();

        Assert.True(reader.Prefetch(info, 0, info.ElementCount));
        reader.Release("w");
        reader.Dispose();

        Assert.True(IsCached(path, middle));
    }

    /// <summary>A byte in a page wholly inside the tensor's data (the OS keeps pages the range covers only in part).</summary>
    private static long Middle(TensorInfo info) => info.DataOffset + info.ByteLength / 2;

    private static unsafe bool IsCached(string path, long offset)
    {
        using var file = File.OpenHandle(path);
        byte probe;
        var vector = new IoVector { Base = &probe, Length = 1 };
        return preadv2((int)file.DangerousGetHandle(), &vector, 1, offset, 0x8 /* RWF_NOWAIT */) == 1;
    }

    private unsafe struct IoVector
    {
        public byte* Base;
        public nuint Length;
    }

    [LibraryImport("libc")]
    private static partial int posix_fadvise(int descriptor, long offset, long length, int advice);

    [LibraryImport("libc")]
    private static partial int fsync(int descriptor);

    [LibraryImport("libc")]
    private static unsafe partial nint preadv2(int descriptor, IoVector* vectors, int count, long offset, int flags);
}
