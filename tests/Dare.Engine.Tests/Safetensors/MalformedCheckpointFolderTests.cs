using System.Text;
using Dare.Engine.Safetensors;
using Xunit;

namespace Dare.Engine.Tests.Safetensors;

/// <summary>Missing paths, folders without weights, and inconsistent shard indexes are each reported with a stable ErrorId.</summary>
public sealed class MalformedCheckpointFolderTests : IDisposable
{
    private readonly TempDirectory _temp = new();

    public void Dispose() => _temp.Dispose();

    private static RawTensor T(string name, int elements = 2) => new(name, "F32", new long[] { elements }, RawData.F32(Enumerable.Range(0, elements).Select(i => (float)i).ToArray()));

    private static DareException OpenFails(string path, DareErrorId expected, string filePath, string? tensor = null)
    {
        var ex = Assert.Throws<DareException>(() => Checkpoint.Open(path));
        Assert.Equal(expected, ex.ErrorId);
        Assert.Equal(filePath, ex.FilePath);
        if (tensor is not null)
        {
            Assert.Equal(tensor, ex.TensorName);
            Assert.Contains($"'{tensor}'", ex.Message);
        }
        return ex;
    }

    private string ShardedFolder(out IReadOnlyList<string> shards, IReadOnlyDictionary<string, string>? weightMap = null)
    {
        var folder = _temp.CreateFolder("sharded");
        shards = RawSafetensors.WriteShardedFolder(folder, new IReadOnlyList<RawTensor>[] { new[] { T("a"), T("b") }, new[] { T("c") } }, weightMap: weightMap);
        return folder;
    }

    private const string Shard1 = "model-00001-of-00002.safetensors";
    private const string Shard2 = "model-00002-of-00002.safetensors";

    [Fact]
    public void The_valid_sharded_baseline_used_by_these_tests_opens()
    {
        Assert.Equal(new[] { "a", "b", "c" }, Checkpoint.Open(ShardedFolder(out _)).Tensors.Select(t => t.Name));
    }

    [Fact]
    public void Index_pointing_at_a_missing_shard_is_SafetensorsShardMissing()
    {
        var folder = ShardedFolder(out var shards);
        File.Delete(shards[1]);

        var ex = OpenFails(folder, DareErrorId.SafetensorsShardMissing, shards[1]);
        Assert.Equal(DareErrorKind.ObjectNotFound, ex.Kind);
        Assert.Contains(Shard2, ex.Message);
    }

    [Fact]
    public void Index_mapping_a_tensor_to_a_shard_name_that_does_not_exist_is_SafetensorsShardMissing()
    {
        var folder = ShardedFolder(out _, new Dictionary<string, string> { ["a"] = Shard1, ["b"] = Shard1, ["c"] = "model-00003-of-00002.safetensors" });
        OpenFails(folder, DareErrorId.SafetensorsShardMissing, Path.Combine(folder, "model-00003-of-00002.safetensors"));
    }

    [Fact]
    public void Index_naming_a_tensor_the_shard_lacks_is_SafetensorsTensorMissingFromShard()
    {
        var folder = ShardedFolder(out var shards, new Dictionary<string, string> { ["a"] = Shard1, ["b"] = Shard1, ["c"] = Shard2, ["ghost"] = Shard2 });
        var ex = OpenFails(folder, DareErrorId.SafetensorsTensorMissingFromShard, shards[1], tensor: "ghost");
        Assert.Equal(DareErrorKind.InvalidData, ex.Kind);
    }

    [Fact]
    public void Shard_holding_a_tensor_the_index_does_not_list_is_SafetensorsIndexInvalid()
    {
        var folder = ShardedFolder(out var shards, new Dictionary<string, string> { ["a"] = Shard1, ["c"] = Shard2 });
        OpenFails(folder, DareErrorId.SafetensorsIndexInvalid, shards[0], tensor: "b");
    }

    [Fact]
    public void Index_mapping_a_tensor_to_another_shard_than_the_one_holding_it_is_SafetensorsIndexInvalid()
    {
        var folder = ShardedFolder(out var shards, new Dictionary<string, string> { ["a"] = Shard1, ["b"] = Shard2, ["c"] = Shard2 });
        OpenFails(folder, DareErrorId.SafetensorsIndexInvalid, shards[0], tensor: "b");
    }

    [Fact]
    public void A_tensor_stored_in_two_shards_is_SafetensorsDuplicateTensor()
    {
        var folder = _temp.CreateFolder("dup");
        // The index agrees with the first shard about 'b'; the second shard holds another copy of it.
        var shards = RawSafetensors.WriteShardedFolder(folder, new IReadOnlyList<RawTensor>[] { new[] { T("a"), T("b") }, new[] { T("b"), T("c") } },
            weightMap: new Dictionary<string, string> { ["a"] = Shard1, ["b"] = Shard1, ["c"] = Shard2 });
        OpenFails(folder, DareErrorId.SafetensorsDuplicateTensor, shards[1], tensor: "b");
    }

    [Fact]
    public void A_malformed_shard_is_reported_with_the_shards_path()
    {
        var folder = ShardedFolder(out var shards);
        File.WriteAllBytes(shards[1], new byte[5]);
        OpenFails(folder, DareErrorId.SafetensorsFileTooShort, shards[1]);
    }

    [Theory]
    [InlineData("not json at all")]
    [InlineData("""{"weight_map": {"a": "model-00001-of-00002.safetensors",""")]
    [InlineData("[]")]
    [InlineData("null")]
    [InlineData("""{"metadata": {"total_size": 24}}""")]
    [InlineData("""{"weight_map": ["a", "b"]}""")]
    [InlineData("""{"weight_map": {}}""")]
    [InlineData("""{"weight_map": {"a": 1}}""")]
    [InlineData("""{"weight_map": {"a": null}}""")]
    [InlineData("""{"weight_map": {"a": ""}}""")]
    [InlineData("""{"weight_map": {"a": "../model-00001-of-00002.safetensors"}}""")]
    [InlineData("""{"weight_map": {"a": "sub/model-00001-of-00002.safetensors"}}""")]
    [InlineData("""{"weight_map": {"a": "sub\\model-00001-of-00002.safetensors"}}""")]
    public void Malformed_index_is_SafetensorsIndexInvalid(string index)
    {
        var folder = ShardedFolder(out _);
        var indexPath = Path.Combine(folder, RawSafetensors.IndexFileName);
        File.WriteAllText(indexPath, index);
        OpenFails(folder, DareErrorId.SafetensorsIndexInvalid, indexPath);
    }

    [Fact]
    public void Index_not_valid_UTF8_is_SafetensorsIndexInvalid()
    {
        var folder = ShardedFolder(out _);
        var indexPath = Path.Combine(folder, RawSafetensors.IndexFileName);
        File.WriteAllBytes(indexPath, Encoding.UTF8.GetBytes("{\"weight_map\": {\"a").Concat(new byte[] { 0xFF, 0xFE })
            .Concat(Encoding.UTF8.GetBytes("\": \"" + Shard1 + "\"}}")).ToArray());
        OpenFails(folder, DareErrorId.SafetensorsIndexInvalid, indexPath);
    }

    [Fact]
    public void Index_listing_a_tensor_twice_is_refused_as_SafetensorsIndexInvalid()
    {
        var folder = ShardedFolder(out _);
        var indexPath = Path.Combine(folder, RawSafetensors.IndexFileName);
        File.WriteAllText(indexPath, $$$"""{"weight_map": {"a": "{{{Shard1}}}", "b": "{{{Shard1}}}", "c": "{{{Shard2}}}", "a": "{{{Shard2}}}"}}""");
        OpenFails(folder, DareErrorId.SafetensorsIndexInvalid, indexPath);
    }

    [Fact]
    public void Folder_with_no_safetensors_is_NoSafetensorsFound()
    {
        var folder = _temp.CreateFolder("empty-model");
        File.WriteAllText(Path.Combine(folder, "config.json"), """{"hidden_size": 8}""");
        File.WriteAllBytes(Path.Combine(folder, "pytorch_model.bin"), new byte[16]);
        Directory.CreateDirectory(Path.Combine(folder, "sub.safetensors")); // a folder, not a file

        var ex = OpenFails(folder, DareErrorId.NoSafetensorsFound, folder);
        Assert.Equal(DareErrorKind.ObjectNotFound, ex.Kind);
    }

    [Fact]
    public void Folder_with_two_safetensors_files_and_no_index_is_SafetensorsIndexInvalid()
    {
        var folder = _temp.CreateFolder("two-files");
        RawSafetensors.WriteFile(Path.Combine(folder, "model-00001-of-00002.safetensors"), new[] { T("a") });
        RawSafetensors.WriteFile(Path.Combine(folder, "model-00002-of-00002.safetensors"), new[] { T("b") });

        var ex = OpenFails(folder, DareErrorId.SafetensorsIndexInvalid, folder);
        Assert.Contains(RawSafetensors.IndexFileName, ex.Message);
    }

    [Fact]
    public void Folder_with_model_safetensors_beside_other_safetensors_files_opens_model_safetensors()
    {
        var folder = _temp.CreateFolder("preferred");
        RawSafetensors.WriteFile(Path.Combine(folder, "model.safetensors"), new[] { T("main") });
        RawSafetensors.WriteFile(Path.Combine(folder, "adapter.safetensors"), new[] { T("other") });

        Assert.Equal("main", Assert.Single(Checkpoint.Open(folder).Tensors).Name);
    }

    [Theory]
    [InlineData("missing")]
    [InlineData("missing.safetensors")]
    [InlineData("missing/deeper/model.safetensors")]
    public void Path_that_does_not_exist_is_PathNotFound(string relative)
    {
        var path = _temp[relative];
        var ex = OpenFails(path, DareErrorId.PathNotFound, path);
        Assert.Equal(DareErrorKind.ObjectNotFound, ex.Kind);
        Assert.Contains(path, ex.Message);
    }

    [Theory]
    [InlineData("{ not json")]
    [InlineData("""{"hidden_size": 8,}""")]
    public void Config_json_that_is_not_JSON_is_ConfigInvalid(string config)
    {
        var folder = _temp.CreateFolder("bad-config");
        RawSafetensors.WriteFile(Path.Combine(folder, "model.safetensors"), new[] { T("a") });
        var configPath = Path.Combine(folder, "config.json");
        File.WriteAllText(configPath, config);

        OpenFails(folder, DareErrorId.ConfigInvalid, configPath);
    }

    [Fact]
    public void Config_json_not_valid_UTF8_is_ConfigInvalid()
    {
        var folder = _temp.CreateFolder("utf8-config");
        RawSafetensors.WriteFile(Path.Combine(folder, "model.safetensors"), new[] { T("a") });
        var configPath = Path.Combine(folder, "config.json");
        File.WriteAllBytes(configPath, Encoding.UTF8.GetBytes("{\"model_type\": \"ll").Concat(new byte[] { 0xC3 }).Concat(Encoding.UTF8.GetBytes("ama\"}")).ToArray());

        OpenFails(folder, DareErrorId.ConfigInvalid, configPath);
    }

    [Fact]
    public void Config_json_with_a_duplicated_nested_key_is_ConfigInvalid()
    {
        var folder = _temp.CreateFolder("dup-nested-config");
        RawSafetensors.WriteFile(Path.Combine(folder, "model.safetensors"), new[] { T("a") });
        var configPath = Path.Combine(folder, "config.json");
        File.WriteAllText(configPath, """{"hidden_size": 8, "rope_scaling": {"factor": 8.0, "factor": 4.0}}""");

        OpenFails(folder, DareErrorId.ConfigInvalid, configPath);
    }

    [Fact]
    public void Config_json_with_a_duplicated_key_is_ConfigInvalid()
    {
        var folder = _temp.CreateFolder("dup-config");
        RawSafetensors.WriteFile(Path.Combine(folder, "model.safetensors"), new[] { T("a") });
        var configPath = Path.Combine(folder, "config.json");
        File.WriteAllText(configPath, """{"hidden_size": 8, "hidden_size": 16}""");

        OpenFails(folder, DareErrorId.ConfigInvalid, configPath);
    }
}
