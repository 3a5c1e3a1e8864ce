using Dare.Engine.Safetensors;
using Xunit;
using static Dare.Engine.Tests.Safetensors.WriterHelper;

namespace Dare.Engine.Tests.Safetensors;

/// <summary>Unbuffered (O_DIRECT) and buffered output files write exactly the bytes given, whatever their length and pieces.</summary>
public sealed class OutputFileTests : IDisposable
{
    private const int Staging = DirectOutputFile.StagingSize;
    private readonly TempDirectory _temp = new();

    public void Dispose() => _temp.Dispose();

    public static TheoryData<int, int> LengthsAndPieces() => new()
    {
        { 0, 1 }, { 1, 1 }, { 4095, 1000 }, { 4096, 4096 }, { 4097, 7 }, { 512 * 3, 100 },
        { Staging - 1, 1 << 20 }, { Staging, Staging }, { Staging + 4097, 3_000_001 }, { 2 * Staging + 12_345, Staging + 1 },
    };

    [Theory]
    [MemberData(nameof(LengthsAndPieces))]
    public void Unbuffered_file_holds_exactly_the_bytes_written(int length, int piece)
    {
        var expected = RawData.Random(length, length);
        var path = _temp["direct.bin"];

        using (var file = OutputFile.Create(path, direct: true))
        {
            // This machine's temp folder is on a file system that accepts O_DIRECT; elsewhere the buffered path is expected.
            Assert.Equal(OperatingSystem.IsLinux(), file.IsDirect);
            for (var offset = 0; offset < length; offset += piece) file.Write(expected.AsSpan(offset, Math.Min(piece, length - offset)));
            file.Complete();
        }

        Assert.Equal(expected, File.ReadAllBytes(path));
    }

    [Theory]
    [MemberData(nameof(LengthsAndPieces))]
    public void Buffered_file_holds_exactly_the_bytes_written(int length, int piece)
    {
        var expected = RawData.Random(length, length + 1);
        var path = _temp["buffered.bin"];

        using (var file = OutputFile.Create(path, direct: false))
        {
            Assert.False(file.IsDirect);
            for (var offset = 0; offset < length; offset += piece) file.Write(expected.AsSpan(offset, Math.Min(piece, length - offset)));
            file.Complete();
        }

        Assert.Equal(expected, File.ReadAllBytes(path));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void An_existing_file_is_never_overwritten(bool direct)
    {
        var path = _temp["taken.bin"];
        File.WriteAllBytes(path, new byte[] { 1, 2, 3 });

        Assert.Throws<IOException>(() => OutputFile.Create(path, direct).Dispose());
        Assert.Equal(new byte[] { 1, 2, 3 }, File.ReadAllBytes(path));
    }

    [Fact]
    public void A_file_disposed_without_completing_keeps_only_whole_blocks_and_no_garbage_past_them()
    {
        var data = RawData.Random(Staging + 100, 3);
        var path = _temp["abandoned.bin"];

        using (var file = OutputFile.Create(path, direct: true)) file.Write(data);

        // The writer deletes an abandoned temporary folder; what matters is that nothing beyond the data given appears.
        var written = File.ReadAllBytes(path);
        Assert.True(written.Length <= data.Length);
        Assert.Equal(data.AsSpan(0, written.Length).ToArray(), written);
    }

    [Fact]
    public void Checkpoints_written_with_and_without_the_page_cache_are_byte_identical()
    {
        // Odd tensor sizes so that shard ends fall mid-block; three shards.
        var tensors = Enumerable.Range(0, 9)
            .Select(i => new RawTensor($"t{i}", "U8", new long[] { 1_000_003 + 4097L * i }, RawData.Random(1_000_003 + 4097 * i, i)))
            .ToList();
        var options = (bool direct) => new CheckpointWriteOptions { MaxShardSize = 3_200_000, DirectWrites = direct };

        using (var writer = CheckpointWriter.Create(_temp["direct"], Plan(tensors), options(true)))
        {
            WriteAll(writer, tensors, chunk: 123_457);
            Assert.Equal(OperatingSystem.IsLinux(), writer.WritesDirect);
            writer.Commit();
        }
        using (var writer = CheckpointWriter.Create(_temp["buffered"], Plan(tensors), options(false)))
        {
            WriteAll(writer, tensors, chunk: 123_457);
            Assert.False(writer.WritesDirect);
            writer.Commit();
        }

        var direct = Snapshot(_temp["direct"]);
        var buffered = Snapshot(_temp["buffered"]);
        Assert.Equal(3 + 1, direct.Count); // shards + index
        Assert.Equal(buffered.Keys, direct.Keys);
        foreach (var (name, bytes) in buffered) Assert.Equal(bytes, direct[name]);
    }

    [Fact]
    public unsafe void Bytes_in_phase_with_the_file_are_written_from_where_they_are_and_the_rest_through_the_staging_buffer()
    {
        const int MiB = 1 << 20;
        // (length, whether its memory is in phase with the file position it lands at), and what goes in place:
        var pieces = new (int Length, bool InPhase)[]
        {
            (1000, true),          // too short to write in place: staged (position 1000)
            (MiB + 500, true),     // 3096 bytes complete the staged block, 255 whole blocks (1,044,480) in place, 1500 staged
            (MiB, false),          // out of phase: staged
            (2 * MiB, true),       // at 2,098,652 (1500 past a block): 2596 staged, 511 blocks (2,093,056) in place, 1500 staged
            (100_000, true),       // too short: staged
        };
        const long expectedInPlace = 1_044_480 + 2_093_056;
        var total = pieces.Sum(p => p.Length);
        var expected = RawData.Random(total, 11);
        var path = _temp["in-place.bin"];

        long inPlace;
        using (var file = OutputFile.Create(path, direct: true))
        {
            var direct = Assert.IsType<DirectOutputFile>(file); // this project's machines are Linux
            var position = 0;
            foreach (var (length, inPhase) in pieces)
            {
                WriteFromMemory(file, expected.AsSpan(position, length), inPhase ? position % 4096 : (position + 8) % 4096);
                position += length;
            }
            file.Complete();
            inPlace = direct.BytesWrittenInPlace;
        }

        Assert.Equal(expected, File.ReadAllBytes(path));
        Assert.Equal(expectedInPlace, inPlace);
    }

    [Fact]
    public unsafe void A_piece_whose_first_bytes_fill_the_staging_buffer_flushes_it_before_the_blocks_in_place()
    {
        var staged = Staging - 100;
        var expected = RawData.Random(staged + (1 << 20), 12);
        var path = _temp["fills-staging.bin"];

        long inPlace;
        using (var file = OutputFile.Create(path, direct: true))
        {
            var direct = Assert.IsType<DirectOutputFile>(file);
            file.Write(expected.AsSpan(0, staged));
            WriteFromMemory(file, expected.AsSpan(staged), staged % 4096);
            file.Complete();
            inPlace = direct.BytesWrittenInPlace;
        }

        Assert.Equal(expected, File.ReadAllBytes(path));
        // 100 bytes fill the staging buffer; of the 1,048,476 left, 255 whole blocks go in place and 3996 bytes are staged.
        Assert.Equal(255 * 4096, inPlace);
    }

    /// <summary>Writes <paramref name="bytes"/> from native memory starting <paramref name="offset"/> bytes past a 4096-byte boundary.</summary>
    private static unsafe void WriteFromMemory(OutputFile file, ReadOnlySpan<byte> bytes, int offset)
    {
        var memory = (byte*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc((nuint)(bytes.Length + 4096), 4096);
        try
        {
            bytes.CopyTo(new Span<byte>(memory + offset, bytes.Length));
            file.Write(new ReadOnlySpan<byte>(memory + offset, bytes.Length));
        }
        finally
        {
            System.Runtime.InteropServices.NativeMemory.AlignedFree(memory);
        }
    }

    [Fact]
    public void Direct_writes_are_on_by_default_and_switched_off_by_the_environment()
    {
        // Read, not set: the other tests run in parallel in this process and read the same variable.
        Assert.Equal("DARE_DIRECT_WRITES", OutputFile.DirectWritesVariable);
        Assert.True(OutputFile.DirectWritesFrom(null));
        Assert.True(OutputFile.DirectWritesFrom("1"));
        Assert.False(OutputFile.DirectWritesFrom("0"));
        Assert.Equal(OutputFile.DirectWritesFrom(Environment.GetEnvironmentVariable(OutputFile.DirectWritesVariable)), new CheckpointWriteOptions().DirectWrites);
    }
}
