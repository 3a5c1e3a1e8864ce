using Dare.Engine.Safetensors;
using Xunit;

namespace Dare.Engine.Tests.Safetensors;

/// <summary>Checkpoint.HasSameFilesAs: the same files whatever the path that names them; a copy is another model.</summary>
public sealed class CheckpointIdentityTests : IDisposable
{
    private readonly TempDirectory _temp = new();

    public void Dispose() => _temp.Dispose();

    private static IReadOnlyList<RawTensor> Shard(string name, byte fill) => new[] { new RawTensor(name, "F32", new long[] { 2 }, Enumerable.Repeat(fill, 8).ToArray()) };

    /// <summary>A model of two shards (tensors a and b) in <paramref name="folder"/>.</summary>
    private string Sharded(string folder, byte fill = 1)
    {
        RawSafetensors.WriteShardedFolder(_temp[folder], new[] { Shard("a", fill), Shard("b", fill) });
        return _temp[folder];
    }

    [Fact]
    public void A_folder_opened_twice_or_through_a_symlink_has_the_same_files()
    {
        var model = Sharded("model");
        Directory.CreateSymbolicLink(_temp["link"], model);

        Assert.True(Checkpoint.Open(model).HasSameFilesAs(Checkpoint.Open(model)));
        Assert.True(Checkpoint.Open(_temp["link"]).HasSameFilesAs(Checkpoint.Open(model)));
        Assert.True(Checkpoint.Open(model + "/./").HasSameFilesAs(Checkpoint.Open(_temp["link"])));
    }

    [Fact]
    public void A_byte_for_byte_copy_another_model_or_one_shard_of_the_model_is_not_the_same()
    {
        var model = Sharded("model");
        var copy = _temp.CreateFolder("copy");
        foreach (var file in Directory.GetFiles(model)) File.Copy(file, Path.Combine(copy, Path.GetFileName(file)));
        var other = Sharded("other", fill: 2);
        var oneShard = Directory.GetFiles(model, "*.safetensors").Order().First();

        var opened = Checkpoint.Open(model);
        Assert.False(opened.HasSameFilesAs(Checkpoint.Open(copy)));
        Assert.False(opened.HasSameFilesAs(Checkpoint.Open(other)));
        Assert.False(opened.HasSameFilesAs(Checkpoint.Open(oneShard)));
        Assert.False(Checkpoint.Open(oneShard).HasSameFilesAs(opened));
    }
}
