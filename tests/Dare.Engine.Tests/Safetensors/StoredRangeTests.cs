using System.Runtime.InteropServices;
using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using Xunit;

namespace Dare.Engine.Tests.Safetensors;

/// <summary>
/// Fused kernels read their inputs piece by piece from several threads (<see cref="StoredRange"/>): each piece holds
/// the file's bytes wherever it starts, from the file or from a read-ahead buffer; NaN/Inf in any piece is reported
/// once the kernel is done; a file that shrank fails naming file and tensor, as a plain read does.
/// </summary>
public sealed class StoredRangeTests : IDisposable
{
    private readonly TempDirectory _temp = new(PageCache.TempRoot); // where pages can be dropped

    public void Dispose() => _temp.Dispose();

    /// <summary>A file with a short tensor "pad" (so "w" starts at an offset no block size divides) and float32 "w" = 0, 1, 2, ...</summary>
    private (string Path, TensorInfo W) WriteModel(string name, int count, Action<float[]>? edit = null)
    {
        var values = Enumerable.Range(0, count).Select(i => (float)i).ToArray();
        edit?.Invoke(values);
        var path = RawSafetensors.WriteFile(_temp[name], new[]
        {
            new RawTensor("pad", "U8", new long[] { 3 }, new byte[] { 1, 2, 3 }),
            new RawTensor("w", "F32", new long[] { count }, MemoryMarshal.AsBytes(values.AsSpan()).ToArray()),
        });
        return (path, Checkpoint.Open(path).Tensors.Single(t => t.Name == "w"));
    }

    /// <summary>Elements [start, start + length) of the range through <see cref="StoredRange.Piece"/>, copied out.</summary>
    private static unsafe float[] Piece(StoredRange range, long start, int length)
    {
        var buffer = (byte*)NativeMemory.Alloc((nuint)length * sizeof(float));
        try
        {
            return new ReadOnlySpan<float>(range.Piece(start, length, buffer), length).ToArray();
        }
        finally
        {
            NativeMemory.Free(buffer);
        }
    }

    private static IEnumerable<float> Expected(long first, int count) => Enumerable.Range((int)first, count).Select(i => (float)i);

    [Fact]
    public void Pieces_read_by_several_threads_at_any_offset_hold_the_files_values()
    {
        var (_, w) = WriteModel("model.safetensors", 300_001);
        using var reader = new TensorReader();
        using var range = reader.OpenRange(w, 7, 300_000 - 7);

        // Uneven pieces over the whole range, read out of order on the thread pool; the last ends with the tensor.
        var pieces = new List<(long Start, int Length)>();
        for (long start = 0; start < range.Count; start += 12_345) pieces.Add((start, (int)Math.Min(12_345, range.Count - start)));
        var results = new float[pieces.Count][];
        Parallel.For(0, pieces.Count, new ParallelOptions { MaxDegreeOfParallelism = 4 }, p => results[p] = Piece(range, pieces[p].Start, pieces[p].Length));
        reader.Complete(range);

        for (var p = 0; p < pieces.Count; p++) Assert.Equal(Expected(7 + pieces[p].Start, pieces[p].Length), results[p]);
        Assert.Throws<ArgumentOutOfRangeException>(() => Piece(range, range.Count - 2, 3));
    }

    [Fact]
    public void A_range_read_ahead_past_the_page_cache_is_handed_out_from_its_buffer()
    {
        var (path, w) = WriteModel("cold.safetensors", 1 << 20);
        PageCache.Drop(path);
        using var reader = new TensorReader();
        Assert.True(reader.Prefetch(w, 100, 500_000, readOnce: true));
        using var range = reader.OpenRange(w, 100, 500_000);
        // Shrunk after the read ahead: every piece still comes from the buffer, none from the file.
        using (var stream = new FileStream(path, FileMode.Open)) stream.SetLength(w.DataOffset);

        Assert.Equal(1, reader.BufferedReadsServed);
        Assert.Equal(Expected(100, 1000), Piece(range, 0, 1000));
        Assert.Equal(Expected(100 + 499_000, 1000), Piece(range, 499_000, 1000));
        range.Dispose();
        Assert.Equal(0, reader.BytesInReadAheadBuffers);
    }

    [Theory]
    [InlineData(5)]
    [InlineData(250_000)]
    public void NaN_in_a_piece_fails_once_the_kernel_is_done_naming_file_tensor_and_the_whole_tensor_count(int at)
    {
        var (path, w) = WriteModel("nan.safetensors", 300_000, v => { v[at] = float.NaN; v[at + 1] = float.PositiveInfinity; });
        using var reader = new TensorReader(new NonFiniteGuard(allow: false, warn: null));
        using var range = reader.OpenRange(w, 0, w.ElementCount);
        for (long start = 0; start < range.Count; start += 65_536) Piece(range, start, (int)Math.Min(65_536, range.Count - start));

        var failure = Assert.Throws<DareException>(() => reader.Complete(range));

        Assert.Equal(DareErrorId.NonFiniteValues, failure.ErrorId);
        Assert.Equal(path, failure.FilePath);
        Assert.Equal("w", failure.TensorName);
        Assert.Contains(" 2 NaN/Inf", failure.Message);
    }

    [Fact]
    public void A_clean_range_completes_quietly()
    {
        var (_, w) = WriteModel("clean.safetensors", 70_000);
        using var reader = new TensorReader(new NonFiniteGuard(allow: false, warn: null));
        using var range = reader.OpenRange(w, 0, w.ElementCount);
        Piece(range, 0, 70_000);
        reader.Complete(range);
    }

    [Fact]
    public void A_file_that_shrank_fails_with_SafetensorsReadFailed_naming_file_and_tensor_also_from_a_kernels_threads()
    {
        var (path, w) = WriteModel("shrinking.safetensors", 300_000);
        using var reader = new TensorReader();
        using var range = reader.OpenRange(w, 0, w.ElementCount);
        using (var stream = new FileStream(path, FileMode.Open)) stream.SetLength(w.DataOffset + w.ByteLength / 2);

        Assert.Equal(Expected(0, 1000), Piece(range, 0, 1000));
        // As a fused kernel reads: one part per core, in parallel; the failure arrives unwrapped.
        var failure = Assert.Throws<DareException>(() => Partition.Run(range.Count, (_, start, end) =>
        {
            for (var piece = start; piece < end; piece += 65_536) Piece(range, piece, (int)Math.Min(65_536, end - piece));
        }));

        Assert.Equal(DareErrorId.SafetensorsReadFailed, failure.ErrorId);
        Assert.Equal(path, failure.FilePath);
        Assert.Equal("w", failure.TensorName);
    }
}
