using System.Runtime.InteropServices;
using Dare.Engine.Safetensors;
using Xunit;

namespace Dare.Engine.Tests.Safetensors;

/// <summary>
/// What a read brings into the page cache is let go once the executor is done with the tensor; what was cached
/// before stays. Observed with cachestat (<see cref="PageCache"/>).
/// </summary>
public sealed class ReadCacheReleaseTests : IDisposable
{
    private readonly TempDirectory _temp = new(PageCache.TempRoot); // where pages can be dropped

    public void Dispose() => _temp.Dispose();

    /// <summary>A one-tensor file of 8 MB, synced and then dropped from the page cache.</summary>
    private (string Path, TensorInfo Info) ColdFile(string name)
    {
        var values = new float[2 << 20];
        for (var i = 0; i < values.Length; i++) values[i] = i;
        var path = RawSafetensors.WriteFile(_temp[name], new[] { new RawTensor("w", "F32", new long[] { values.Length }, MemoryMarshal.AsBytes(values.AsSpan()).ToArray()) });
        PageCache.Drop(path);
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
        reader.WaitForReadAhead();
        var bytes = new byte[info.ByteLength];
        unsafe
        {
            fixed (byte* destination = bytes) reader.ReadElements(info, 0, info.ElementCount, destination);
        }
        Assert.True(IsCached(path, middle));
        Assert.Equal(1f, BitConverter.ToSingle(bytes, 4));

        reader.Release("another tensor");
        reader.WaitForReadAhead();
        Assert.True(IsCached(path, middle));
        reader.Release("w");
        reader.WaitForReadAhead();
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

    private static bool IsCached(string path, long offset) => PageCache.Holds(path, offset);
}
