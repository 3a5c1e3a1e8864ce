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
