using System.Runtime.InteropServices;
using Dare.Engine.Safetensors;
using Xunit;

namespace Dare.Engine.Tests.Safetensors;

/// <summary>
/// Ranges the merge reads once are read ahead into the reader's own buffers and copied from there: the bytes are the
/// file's, at any offset; a cold file's ranges are dropped from the page cache once read (or, past the page cache,
/// read with O_DIRECT), a warm file's cached ranges take the ordinary read and stay cached, and a range never read or
/// a file that changed falls back to the ordinary read.
/// </summary>
public sealed class BufferedReadAheadTests : IDisposable
{
    private readonly TempDirectory _temp = new(PageCache.TempRoot); // where pages can be dropped

    public void Dispose() => _temp.Dispose();

    /// <summary>A file of two float32 tensors ("a": 1M + 3 elements, "b" to the end of the file), synced and dropped from the page cache.</summary>
    private (string Path, TensorInfo A, TensorInfo B) ColdFile(string name, Action<float[]>? edit = null)
    {
        var a = Enumerable.Range(0, (1 << 20) + 3).Select(i => (float)i).ToArray();
        edit?.Invoke(a);
        var b = Enumerable.Range(0, 5001).Select(i => -(float)i).ToArray();
        var path = RawSafetensors.WriteFile(_temp[name], new[]
        {
            new RawTensor("a", "F32", new long[] { a.Length }, MemoryMarshal.AsBytes(a.AsSpan()).ToArray()),
            new RawTensor("b", "F32", new long[] { b.Length }, MemoryMarshal.AsBytes(b.AsSpan()).ToArray()),
        });
        PageCache.Drop(path);
        var tensors = Checkpoint.Open(path).Tensors;
        var infoA = tensors.Single(t => t.Name == "a");
        Assert.False(IsCached(path, infoA.DataOffset + infoA.ByteLength / 2), "the test file should start out of the page cache");
        return (path, infoA, tensors.Single(t => t.Name == "b"));
    }

    private static unsafe float[] Read(TensorReader reader, TensorInfo info, long first, long count)
    {
        var values = new float[count];
        fixed (float* destination = values) reader.ReadElements(info, first, count, (byte*)destination);
        return values;
    }

    [Theory]
    [InlineData(4096, 2L << 20)]      // x86-64: a PMD of 512 entries
    [InlineData(16384, 32L << 20)]    // 2,048 entries: the page cache's limit of 2^11 pages is the same
    [InlineData(65536, 128L << 20)]   // 8,192 entries, but at most 2^11 pages
    public void Cold_ranges_are_dropped_with_the_largest_folio_before_them_for_the_page_size(long pageSize, long folio)
    {
        Assert.Equal(folio, BufferedReadAhead.LargestFolioFor(pageSize));
    }

    [Fact]
    public void A_range_read_once_comes_from_the_read_ahead_buffer_with_the_files_bytes_and_leaves_the_page_cache_alone()
    {
        var (path, a, b) = ColdFile("cold.safetensors");
        using var reader = new TensorReader();

        // Odd element offsets inside "a" (neither end on a 4 KB boundary), and "b", which ends where the file ends.
        Assert.True(reader.Prefetch(a, 3, a.ElementCount - 5, readOnce: true));
        Assert.True(reader.Prefetch(b, 0, b.ElementCount, readOnce: true));
        var fromA = Read(reader, a, 3, a.ElementCount - 5);
        var fromB = Read(reader, b, 0, b.ElementCount);

        Assert.Equal(2, reader.BufferedReadsServed);
        Assert.Equal(Enumerable.Range(3, (int)a.ElementCount - 5).Select(i => (float)i), fromA);
        Assert.Equal(Enumerable.Range(0, 5001).Select(i => -(float)i), fromB);
        Assert.False(IsCached(path, a.DataOffset + a.ByteLength / 2));
        Assert.Equal(0, reader.BytesInReadAheadBuffers);
    }

    [Fact]
    public void A_part_of_a_range_read_ahead_is_copied_from_it_and_a_second_read_of_it_goes_to_the_file()
    {
        var (_, a, _) = ColdFile("part.safetensors");
        using var reader = new TensorReader();

        Assert.True(reader.Prefetch(a, 0, a.ElementCount, readOnce: true));
        Assert.Equal(Enumerable.Range(1000, 7).Select(i => (float)i), Read(reader, a, 1000, 7));
        Assert.Equal(Enumerable.Range(1000, 7).Select(i => (float)i), Read(reader, a, 1000, 7));

        Assert.Equal(1, reader.BufferedReadsServed);
        Assert.Equal(0, reader.BytesInReadAheadBuffers);
    }

    [Fact]
    public void A_cached_range_is_read_the_ordinary_way()
    {
        var (path, a, _) = ColdFile("warm.safetensors");
        File.ReadAllBytes(path);
        using var reader = new TensorReader();

        Assert.True(reader.Prefetch(a, 0, a.ElementCount, readOnce: true));
        reader.WaitForReadAhead();
        Assert.Equal(Enumerable.Range(0, (int)a.ElementCount).Select(i => (float)i), Read(reader, a, 0, a.ElementCount));

        Assert.Equal(0, reader.BufferedReadsServed);
    }

    [Fact]
    public unsafe void A_range_asked_for_twice_before_it_is_taken_is_read_once()
    {
        // The executor asks for a read-once tensor's chunks two tensors ahead, and the merge asks for them again at the
        // tensor's start.
        var (path, a, _) = ColdFile("twice.safetensors");
        using var file = File.OpenHandle(path);
        var descriptor = (int)file.DangerousGetHandle();
        const long Piece = 1 << 20;
        using var readAhead = new BufferedReadAhead(budget: 64L << 20);
        readAhead.Fetch(descriptor, "a", a.DataOffset, Piece);
        readAhead.Fetch(descriptor, "a", a.DataOffset, Piece);
        readAhead.Drain();
        Assert.Equal(2L << 20, readAhead.BytesInUse); // one buffer (1 MB straddling a page takes 2 MB)

        AssertServedFromBuffer(readAhead, descriptor, a.DataOffset, 0, Piece);
        Assert.Null(readAhead.Take(descriptor, a.DataOffset, Piece));
        Assert.Equal(1, readAhead.Served);
        Assert.Equal(0, readAhead.BytesInUse);
    }

    [Fact]
    public void A_range_asked_for_again_after_its_tensor_was_released_is_read_again()
    {
        var (path, a, _) = ColdFile("again.safetensors");
        using var file = File.OpenHandle(path);
        var descriptor = (int)file.DangerousGetHandle();
        const long Piece = 1 << 20;
        using var readAhead = new BufferedReadAhead(budget: 64L << 20);
        // Many ranges at once, as a merge in small chunks asks for them; the last is asked for twice.
        for (var k = 0; k < 2000; k++) readAhead.Fetch(descriptor, "a", a.DataOffset + k * 4L, 4);
        readAhead.Fetch(descriptor, "a", a.DataOffset + 1999 * 4L, 4);
        readAhead.Fetch(descriptor, "a", a.DataOffset, Piece);
        readAhead.Release("a");
        readAhead.Drain();
        Assert.Equal(0, readAhead.BytesInUse);
        Assert.Null(readAhead.Take(descriptor, a.DataOffset, Piece));

        readAhead.Fetch(descriptor, "a", a.DataOffset, Piece);
        readAhead.Drain();
        AssertServedFromBuffer(readAhead, descriptor, a.DataOffset, 0, Piece);
        Assert.Equal(1, readAhead.Served);
    }

    [Fact]
    public void A_range_read_ahead_and_never_read_is_freed_when_its_tensor_is_released()
    {
        var (_, a, b) = ColdFile("unread.safetensors");
        using var reader = new TensorReader();

        Assert.True(reader.Prefetch(a, 0, a.ElementCount, readOnce: true));
        Assert.True(reader.Prefetch(b, 0, b.ElementCount, readOnce: true));
        reader.WaitForReadAhead();
        Assert.True(reader.BytesInReadAheadBuffers >= a.ByteLength + b.ByteLength);

        reader.Release("a");
        Assert.InRange(reader.BytesInReadAheadBuffers, b.ByteLength, 1 << 20); // buffers come in whole megabytes
        reader.Release("b");
        Assert.Equal(0, reader.BytesInReadAheadBuffers);
    }

    [Fact]
    public void A_NaN_in_a_range_read_ahead_is_found()
    {
        var (path, a, _) = ColdFile("nan.safetensors", values => values[900_000] = float.NaN);
        using var reader = new TensorReader(new NonFiniteGuard(allow: false, warn: null));

        Assert.True(reader.Prefetch(a, 0, a.ElementCount, readOnce: true));
        var failure = Assert.Throws<DareException>(() => Read(reader, a, 0, a.ElementCount));

        Assert.Equal(DareErrorId.NonFiniteValues, failure.ErrorId);
        Assert.Equal(path, failure.FilePath);
        Assert.Equal(1, reader.BufferedReadsServed);
        Assert.Equal(0, reader.BytesInReadAheadBuffers);
    }

    [Fact]
    public void A_file_truncated_before_its_range_was_read_ahead_fails_the_read_naming_file_and_tensor()
    {
        var (path, a, b) = ColdFile("truncated.safetensors");
        using var reader = new TensorReader();
        Read(reader, b, 0, 1); // opens the file
        using (var file = new FileStream(path, FileMode.Open, FileAccess.Write)) file.SetLength(a.DataOffset + a.ByteLength / 2);

        Assert.True(reader.Prefetch(a, 0, a.ElementCount, readOnce: true));
        var failure = Assert.Throws<DareException>(() => Read(reader, a, 0, a.ElementCount));

        Assert.Equal(DareErrorId.SafetensorsReadFailed, failure.ErrorId);
        Assert.Equal(path, failure.FilePath);
        Assert.Equal("a", failure.TensorName);
        Assert.Equal(0, reader.BufferedReadsServed);
        Assert.Equal(0, reader.BytesInReadAheadBuffers);
    }

    [Fact]
    public unsafe void At_most_the_budget_waits_in_buffers_and_a_range_the_merge_waits_for_is_read_past_it()
    {
        var (path, a, _) = ColdFile("budget.safetensors");
        using var file = File.OpenHandle(path);
        var descriptor = (int)file.DangerousGetHandle();
        const long Piece = 1 << 20; // three 1 MB ranges of "a" (each takes a 2 MB buffer: it straddles a page) under a 4 MB budget
        Assert.NotEqual(0, a.DataOffset % 4096);
        using var readAhead = new BufferedReadAhead(budget: 4L << 20);
        for (var i = 0; i < 3; i++) readAhead.Fetch(descriptor, "a", a.DataOffset + i * Piece, Piece);
        readAhead.Drain();
        Assert.Equal(4L << 20, readAhead.BytesInUse); // two read, the third waits for room

        // The third is taken first: it is read at once, over the budget, rather than waiting for room the first two hold.
        foreach (var i in new[] { 2, 0, 1 })
        {
            var range = readAhead.Take(descriptor, a.DataOffset + i * Piece, Piece);
            Assert.NotNull(range);
            var values = new float[Piece / 4];
            fixed (float* destination = values) range!.CopyTo(a.DataOffset + i * Piece, (byte*)destination, (int)Piece);
            Assert.Equal(Enumerable.Range((int)(i * Piece / 4), values.Length).Select(v => (float)v), values);
            readAhead.Free(range);
        }
        Assert.Equal(0, readAhead.BytesInUse);
        Assert.Equal(3, readAhead.Served);
    }

    [Fact]
    public unsafe void A_range_the_merge_has_taken_no_longer_counts_against_the_budget_so_reading_ahead_goes_on()
    {
        var (path, a, _) = ColdFile("taken.safetensors");
        using var file = File.OpenHandle(path);
        var descriptor = (int)file.DangerousGetHandle();
        const long Piece = 1 << 20; // four 1 MB ranges of "a", each in a 2 MB buffer, under a 4 MB budget
        using var readAhead = new BufferedReadAhead(budget: 4L << 20);
        for (var i = 0; i < 4; i++) readAhead.Fetch(descriptor, "a", a.DataOffset + i * Piece, Piece);
        readAhead.Drain();
        Assert.Equal(4L << 20, readAhead.BytesInUse); // two read, two wait for room

        // While the kernels read the taken ranges in place, the readers fill the budget again behind them.
        var first = readAhead.Take(descriptor, a.DataOffset, Piece)!;
        readAhead.Drain();
        Assert.Equal(6L << 20, readAhead.BytesInUse);
        var second = readAhead.Take(descriptor, a.DataOffset + Piece, Piece)!;
        readAhead.Drain();
        Assert.Equal(8L << 20, readAhead.BytesInUse);

        foreach (var (range, i) in new[] { (first, 0), (second, 1) })
        {
            var values = new float[Piece / 4];
            fixed (float* destination = values) range.CopyTo(a.DataOffset + i * Piece, (byte*)destination, (int)Piece);
            Assert.Equal(Enumerable.Range((int)(i * Piece / 4), values.Length).Select(v => (float)v), values);
            readAhead.Free(range);
        }
        readAhead.Release(null);
        Assert.Equal(0, readAhead.BytesInUse);
    }

    [Fact]
    public unsafe void In_a_cold_file_every_range_is_read_ahead_and_dropped_behind_even_a_part_the_cache_holds_meanwhile()
    {
        var (path, a, _) = ColdFile("cold-ranges.safetensors");
        const long Piece = 1 << 20;
        // The kernel's read-ahead (or anything else) brings part of the third range in before the readers get to it
        // (read here for random access, which keeps the kernel from reading more).
        using (var random = File.OpenHandle(path, options: FileOptions.RandomAccess)) RandomAccess.Read(random, new byte[64 << 10], a.DataOffset + 2 * Piece);
        Assert.True(IsCached(path, a.DataOffset + 2 * Piece));
        using var file = File.OpenHandle(path);
        var descriptor = (int)file.DangerousGetHandle();
        using var readAhead = new BufferedReadAhead(pastPageCache: false);
        // One range at a time: with two readers, the kernel's read-ahead for one range (up to read_ahead_kb, 8 MB here)
        // can land in a later range after another reader has read and dropped it. In order, a range's read waits for
        // any read-ahead into it, and nothing reads ahead into it after its drop.
        for (var i = 0; i < 3; i++)
        {
            readAhead.Fetch(descriptor, "a", a.DataOffset + i * Piece, Piece);
            AssertServedFromBuffer(readAhead, descriptor, a.DataOffset, i, Piece);
        }

        Assert.Equal(3, readAhead.Served);
        for (var i = 0; i < 3; i++) Assert.False(IsCached(path, a.DataOffset + i * Piece + Piece / 2), $"range {i} should be dropped once read");
        Assert.False(IsCached(path, a.DataOffset + 2 * Piece));
    }

    [Fact]
    public unsafe void In_a_cold_file_read_in_order_no_page_stays_cached_where_two_ranges_meet()
    {
        // A 64 MB tensor in ranges of 8 MB + 12 KB: their boundaries fall inside the 2 MB folios the kernel's read-ahead
        // fills the page cache with once it is well under way (not in a smaller file), which a drop of one range alone
        // leaves in place, since they hold the neighbour's bytes too (without the fix: ~350 pages left).
        var values = Enumerable.Range(0, 16 << 20).Select(i => (float)i).ToArray();
        var path = RawSafetensors.WriteFile(_temp["boundaries.safetensors"], new[] { new RawTensor("a", "F32", new long[] { values.Length }, MemoryMarshal.AsBytes(values.AsSpan()).ToArray()) });
        PageCache.Drop(path);
        var a = Checkpoint.Open(path).Tensors.Single();
        const long Piece = (8 << 20) + (12 << 10);
        var ranges = (int)(a.ByteLength / Piece);
        using var file = File.OpenHandle(path);
        var descriptor = (int)file.DangerousGetHandle();
        using var readAhead = new BufferedReadAhead(pastPageCache: false);
        for (var i = 0; i < ranges; i++)
        {
            readAhead.Fetch(descriptor, "a", a.DataOffset + i * Piece, Piece);
            AssertServedFromBuffer(readAhead, descriptor, a.DataOffset, i, Piece);
        }

        Assert.Equal(ranges, readAhead.Served);
        // Every page up to the last range's last 2 MB (a folio the next range would drop with its own) has gone.
        var cached = new List<long>();
        for (var offset = a.DataOffset; offset < a.DataOffset + ranges * Piece - (2 << 20); offset += 4096)
        {
            if (IsCached(path, offset)) cached.Add(offset - a.DataOffset);
        }
        Assert.True(cached.Count == 0, $"{cached.Count} pages of the ranges are still cached, the first at byte {cached.FirstOrDefault()} of the tensor");
    }

    [Fact]
    public unsafe void In_a_file_mostly_cached_a_cached_range_takes_the_ordinary_read_and_an_uncached_one_is_read_ahead_leaving_the_rest_cached()
    {
        var (path, a, _) = ColdFile("warm-ranges.safetensors");
        const long Piece = 1 << 20;
        File.ReadAllBytes(path);
        PageCache.Drop(path, a.DataOffset + Piece, Piece);
        Assert.False(IsCached(path, a.DataOffset + Piece + Piece / 2));
        using var file = File.OpenHandle(path);
        var descriptor = (int)file.DangerousGetHandle();
        using var readAhead = new BufferedReadAhead(pastPageCache: false);
        for (var i = 0; i < 3; i++) readAhead.Fetch(descriptor, "a", a.DataOffset + i * Piece, Piece);
        readAhead.Drain();

        Assert.Null(readAhead.Take(descriptor, a.DataOffset, Piece));
        AssertServedFromBuffer(readAhead, descriptor, a.DataOffset, 1, Piece);
        Assert.Null(readAhead.Take(descriptor, a.DataOffset + 2 * Piece, Piece));

        Assert.Equal(1, readAhead.Served);
        Assert.True(IsCached(path, a.DataOffset + Piece / 2), "a range cached before stays cached");
        Assert.True(IsCached(path, a.DataOffset + 2 * Piece + Piece / 2), "a range cached before stays cached");
    }

    [Fact]
    public unsafe void Past_the_page_cache_a_cold_range_is_read_with_O_DIRECT_and_a_cached_one_takes_the_ordinary_read()
    {
        var (path, a, _) = ColdFile("odirect.safetensors");
        const long Piece = 1 << 20;
        using (var random = File.OpenHandle(path, options: FileOptions.RandomAccess)) RandomAccess.Read(random, new byte[Piece], a.DataOffset + Piece);
        using var file = File.OpenHandle(path);
        var descriptor = (int)file.DangerousGetHandle();
        using var readAhead = new BufferedReadAhead(pastPageCache: true);
        readAhead.Fetch(descriptor, "a", a.DataOffset, Piece);
        readAhead.Fetch(descriptor, "a", a.DataOffset + Piece, Piece);
        readAhead.Drain();

        AssertServedFromBuffer(readAhead, descriptor, a.DataOffset, 0, Piece);
        Assert.Null(readAhead.Take(descriptor, a.DataOffset + Piece, Piece));

        Assert.Equal(1, readAhead.Served);
        Assert.False(IsCached(path, a.DataOffset + Piece / 2), "O_DIRECT reads leave the page cache alone");
        Assert.True(IsCached(path, a.DataOffset + Piece + Piece / 2));
    }

    /// <summary>Takes range i (of <paramref name="piece"/> bytes from <paramref name="start"/>) from the read-ahead, checks it holds tensor "a"'s values there, and frees it.</summary>
    private static unsafe void AssertServedFromBuffer(BufferedReadAhead readAhead, int descriptor, long start, int i, long piece)
    {
        var range = readAhead.Take(descriptor, start + i * piece, piece);
        Assert.NotNull(range);
        var values = new float[piece / 4];
        fixed (float* destination = values) range!.CopyTo(start + i * piece, (byte*)destination, (int)piece);
        Assert.Equal(Enumerable.Range((int)(i * piece / 4), values.Length).Select(v => (float)v), values);
        readAhead.Free(range);
    }

    private static bool IsCached(string path, long offset) => PageCache.Holds(path, offset);
}
