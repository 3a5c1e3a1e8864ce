using System.Text;
using System.Text.Json.Nodes;
using Dare.Engine.Safetensors;
using TorchSharp;
using Xunit;
using static Dare.Engine.Tests.Safetensors.Samples;
using static Dare.Engine.Tests.Safetensors.WriterHelper;

namespace Dare.Engine.Tests.Safetensors;

/// <summary>What CheckpointWriter produces: format, sharding, index, side files; checked by the engine and by the independent parser.</summary>
public sealed class CheckpointWriterTests : IDisposable
{
    private readonly TempDirectory _temp = new();

    public CheckpointWriterTests() => TorchRuntime.EnsureInitialized();

    public void Dispose() => _temp.Dispose();

    private static RawTensor Blob(string name, int length, int seed = 0) => new(name, "U8", new long[] { length }, RawData.Random(length, seed + length));

    [Fact]
    public void Written_checkpoint_reads_back_bit_exact_through_the_engine()
    {
        var tensors = AllDTypes().Concat(SmallModel(2)).ToList();
        var destination = _temp["out"];

        Write(destination, tensors);

        var checkpoint = Checkpoint.Open(destination);
        using var reader = new TensorReader();
        Assert.Equal(CheckpointLayout.Folder, checkpoint.Layout);
        Assert.Equal(tensors.Select(t => t.Name), checkpoint.Tensors.Select(t => t.Name));
        foreach (var expected in tensors) AssertReadsBack(reader, checkpoint.Find(expected.Name)!, expected);
    }

    [Fact]
    public void Written_files_follow_the_format_as_an_independent_parser_reads_it()
    {
        var tensors = AllDTypes().Concat(SmallModel(1)).ToList();
        var destination = _temp["out"];

        Write(destination, tensors);

        var raw = RawSafetensorsReader.Read(Path.Combine(destination, "model.safetensors")); // throws unless the tensors tile the data block
        Assert.Equal(tensors.Select(t => t.Name), raw.Entries.Select(e => e.Name));
        foreach (var expected in tensors)
        {
            var entry = raw[expected.Name];
            Assert.Equal(expected.DType, entry.DType);
            Assert.Equal(expected.Shape, entry.Shape);
            Assert.Equal(expected.Data, raw.Data(expected.Name));
        }
        Assert.Equal(tensors.Sum(t => (long)t.Data.Length), raw.DataLength);
    }

    [Fact]
    public void Tensor_bytes_may_be_appended_in_pieces()
    {
        var tensors = SmallModel(2);
        var destination = _temp["out"];
        using (var writer = CheckpointWriter.Create(destination, Plan(tensors), new CheckpointWriteOptions()))
        {
            WriteAll(writer, tensors, chunk: 7);
            writer.Commit();
        }

        var raw = RawSafetensorsReader.Read(Path.Combine(destination, "model.safetensors"));
        foreach (var expected in tensors) Assert.Equal(expected.Data, raw.Data(expected.Name));
    }

    [Fact]
    public void WriteTensor_stores_the_bytes_of_torch_tensors()
    {
        using var f32 = torch.tensor(new[] { 1.5f, -2f, 3.25f, 0f, 8f, -0.125f }).reshape(2, 3);
        using var bf16 = torch.tensor(new[] { 0.5f, 1f, -1.75f, 96f }).to_type(torch.ScalarType.BFloat16);
        using var i64 = torch.tensor(new long[] { -5, 1L << 50 });
        var destination = _temp["out"];
        var plan = new[]
        {
            new PlannedTensor("f32", SafetensorsDType.F32, new long[] { 2, 3 }),
            new PlannedTensor("bf16", SafetensorsDType.BF16, new long[] { 4 }),
            new PlannedTensor("i64", SafetensorsDType.I64, new long[] { 2 }),
        };
        using (var writer = CheckpointWriter.Create(destination, plan, new CheckpointWriteOptions()))
        {
            writer.WriteTensor("f32", f32);
            writer.WriteTensor("bf16", bf16);
            writer.WriteTensor("i64", i64);
            writer.Commit();
        }

        var raw = RawSafetensorsReader.Read(Path.Combine(destination, "model.safetensors"));
        Assert.Equal(RawData.F32(1.5f, -2f, 3.25f, 0f, 8f, -0.125f), raw.Data("f32"));
        // 0.5, 1, -1.75 and 96 are exact in bfloat16: 0x3F00, 0x3F80, 0xBFE0, 0x42C0.
        Assert.Equal(RawData.BF16Bits(0x3F00, 0x3F80, 0xBFE0, 0x42C0), raw.Data("bf16"));
        Assert.Equal(RawData.I64(-5, 1L << 50), raw.Data("i64"));
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    [InlineData(5)]
    [InlineData(6)]
    [InlineData(7)]
    [InlineData(8)]
    public void Header_is_padded_with_spaces_so_the_data_block_starts_on_a_4096_byte_block(int nameLength)
    {
        var tensors = new[] { new RawTensor(new string('w', nameLength), "F32", new long[] { 3 }, RawData.F32(1, 2, 3)) };
        var destination = _temp[$"out{nameLength}"];

        Write(destination, tensors);

        var raw = RawSafetensorsReader.Read(Path.Combine(destination, "model.safetensors"));
        Assert.Equal(0UL, raw.HeaderLength % 8);
        Assert.Equal(4096, raw.DataStart); // 8 bytes of length, then a header well under a block
        var text = Encoding.UTF8.GetString(raw.HeaderBytes);
        var json = text.TrimEnd(' ');
        Assert.EndsWith("}", json);
        Assert.Equal(4096 - 8, text.Length); // padding only, and only as much as needed
        Assert.Equal(RawData.F32(1, 2, 3), raw.Data(tensors[0].Name));
    }

    [Fact]
    public void A_header_of_several_blocks_is_padded_to_the_next_block_only()
    {
        // 300 entries of ~75 bytes each: a header of ~22 KB.
        var tensors = Enumerable.Range(0, 300).Select(i => new RawTensor($"model.layers.{i}.weight", "F32", new long[] { 1 }, RawData.F32(i))).ToArray();
        var destination = _temp["long-header"];

        Write(destination, tensors);

        var raw = RawSafetensorsReader.Read(Path.Combine(destination, "model.safetensors"));
        var json = Encoding.UTF8.GetString(raw.HeaderBytes).TrimEnd(' ');
        Assert.True(json.Length > 4 * 4096);
        Assert.Equal(0, raw.DataStart % 4096);
        Assert.InRange(raw.DataStart - (8 + json.Length), 0, 4095);
        Assert.Equal(RawData.F32(299), raw.Data("model.layers.299.weight"));
    }

    [Fact]
    public void Metadata_holds_format_pt_and_the_callers_entries()
    {
        var destination = _temp["out"];
        var options = new CheckpointWriteOptions
        {
            Metadata = new Dictionary<string, string> { ["merge_method"] = "dare_ties", ["format"] = "np", ["note"] = "ünïcode ✓" },
        };

        Write(destination, SmallModel(1), options);

        var raw = RawSafetensorsReader.Read(Path.Combine(destination, "model.safetensors"));
        var expected = new Dictionary<string, string> { ["format"] = "pt", ["merge_method"] = "dare_ties", ["note"] = "ünïcode ✓" };
        Assert.Equal(expected.OrderBy(p => p.Key), raw.Metadata!.OrderBy(p => p.Key));
        Assert.Equal(expected.OrderBy(p => p.Key), Checkpoint.Open(destination).Metadata.OrderBy(p => p.Key));
    }

    [Fact]
    public void Metadata_is_format_pt_alone_when_the_caller_gives_none()
    {
        var destination = _temp["out"];
        Write(destination, SmallModel(1));
        var raw = RawSafetensorsReader.Read(Path.Combine(destination, "model.safetensors"));
        Assert.Equal(new Dictionary<string, string> { ["format"] = "pt" }, raw.Metadata);
    }

    [Fact]
    public void Shards_are_filled_greedily_in_plan_order_and_indexed()
    {
        // 100 + 100 | 100 + 50 | 200 with at most 250 bytes per shard.
        var tensors = new[] { Blob("a", 100), Blob("b", 100), Blob("c", 100), Blob("d", 50), Blob("e", 200) };
        var destination = _temp["out"];

        var result = Write(destination, tensors, new CheckpointWriteOptions { MaxShardSize = 250 });

        var names = new[] { "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors" };
        Assert.Equal(names.Append("model.safetensors.index.json").Order(StringComparer.Ordinal),
            Directory.GetFiles(destination).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        Assert.Equal(new[] { "a", "b" }, RawSafetensorsReader.Read(Path.Combine(destination, names[0])).Entries.Select(e => e.Name));
        Assert.Equal(new[] { "c", "d" }, RawSafetensorsReader.Read(Path.Combine(destination, names[1])).Entries.Select(e => e.Name));
        Assert.Equal(new[] { "e" }, RawSafetensorsReader.Read(Path.Combine(destination, names[2])).Entries.Select(e => e.Name));

        var (weightMap, totalSize) = RawSafetensorsReader.ReadIndex(Path.Combine(destination, "model.safetensors.index.json"));
        Assert.Equal(550, totalSize);
        Assert.Equal(
            new Dictionary<string, string> { ["a"] = names[0], ["b"] = names[0], ["c"] = names[1], ["d"] = names[1], ["e"] = names[2] }.OrderBy(p => p.Key),
            weightMap.OrderBy(p => p.Key));

        Assert.Equal(5, result.TensorCount);
        Assert.Equal(550, result.TensorBytes);
        Assert.Equal(Path.GetFullPath(destination), result.Path);
        Assert.Equal(Directory.GetFiles(destination).Order(StringComparer.Ordinal), result.Files);

        var checkpoint = Checkpoint.Open(destination);
        using var reader = new TensorReader();
        Assert.Equal(CheckpointLayout.Sharded, checkpoint.Layout);
        Assert.Equal(tensors.Select(t => t.Name), checkpoint.Tensors.Select(t => t.Name));
        foreach (var expected in tensors) AssertReadsBack(reader, checkpoint.Find(expected.Name)!, expected);
    }

    [Fact]
    public void The_planned_shard_file_names_are_known_before_writing()
    {
        var tensors = new[] { Blob("a", 60), Blob("b", 60), Blob("c", 60) };
        using var writer = CheckpointWriter.Create(_temp["out"], Plan(tensors), new CheckpointWriteOptions { MaxShardSize = 100 });
        Assert.Equal(new[] { "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors" }, writer.ShardFileNames);
    }

    [Fact]
    public void A_tensor_larger_than_the_shard_size_gets_a_shard_of_its_own()
    {
        var tensors = new[] { Blob("small1", 10), Blob("huge", 1000), Blob("small2", 10), Blob("small3", 10) };
        var destination = _temp["out"];

        Write(destination, tensors, new CheckpointWriteOptions { MaxShardSize = 100 });

        var (weightMap, totalSize) = RawSafetensorsReader.ReadIndex(Path.Combine(destination, "model.safetensors.index.json"));
        Assert.Equal(1030, totalSize);
        var byName = weightMap.ToDictionary(p => p.Key, p => p.Value);
        Assert.Equal("model-00001-of-00003.safetensors", byName["small1"]);
        Assert.Equal("model-00002-of-00003.safetensors", byName["huge"]);
        Assert.Equal("model-00003-of-00003.safetensors", byName["small2"]);
        Assert.Equal("model-00003-of-00003.safetensors", byName["small3"]);
        Assert.Equal(tensors[1].Data, RawSafetensorsReader.Read(Path.Combine(destination, byName["huge"])).Data("huge"));
    }

    [Fact]
    public void A_checkpoint_exactly_as_large_as_the_shard_size_is_one_model_safetensors_without_index()
    {
        var tensors = new[] { Blob("a", 100), Blob("b", 150) };
        var destination = _temp["out"];

        var result = Write(destination, tensors, new CheckpointWriteOptions { MaxShardSize = 250 });

        Assert.Equal(new[] { Path.Combine(result.Path, "model.safetensors") }, result.Files);
        Assert.Equal(new[] { "a", "b" }, RawSafetensorsReader.Read(result.Files[0]).Entries.Select(e => e.Name));
        Assert.Equal(CheckpointLayout.Folder, Checkpoint.Open(destination).Layout);
    }

    [Fact]
    public void One_byte_more_than_the_shard_size_makes_two_shards()
    {
        var tensors = new[] { Blob("a", 100), Blob("b", 150) };
        var destination = _temp["out"];

        Write(destination, tensors, new CheckpointWriteOptions { MaxShardSize = 249 });

        Assert.True(File.Exists(Path.Combine(destination, "model-00001-of-00002.safetensors")));
        Assert.True(File.Exists(Path.Combine(destination, "model-00002-of-00002.safetensors")));
        Assert.True(File.Exists(Path.Combine(destination, "model.safetensors.index.json")));
        Assert.False(File.Exists(Path.Combine(destination, "model.safetensors")));
    }

    [Fact]
    public void Every_shard_carries_the_metadata()
    {
        var destination = _temp["out"];
        Write(destination, new[] { Blob("a", 100), Blob("b", 100) },
            new CheckpointWriteOptions { MaxShardSize = 100, Metadata = new Dictionary<string, string> { ["k"] = "v" } });

        foreach (var shard in Directory.GetFiles(destination, "*.safetensors"))
        {
            Assert.Equal(new Dictionary<string, string> { ["format"] = "pt", ["k"] = "v" }, RawSafetensorsReader.Read(shard).Metadata);
        }
    }

    private string SourceModelWithSideFiles(string configJson)
    {
        var source = _temp.CreateFolder("source");
        File.WriteAllText(Path.Combine(source, "config.json"), configJson);
        foreach (var name in new[] { "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                     "vocab.json", "merges.txt", "added_tokens.json", "chat_template.json", "chat_template.jinja" })
        {
            File.WriteAllText(Path.Combine(source, name), $"content of {name} ✓\n");
        }
        File.WriteAllBytes(Path.Combine(source, "tokenizer.model"), RawData.Random(300, 5));
        // Not side files: never copied.
        File.WriteAllText(Path.Combine(source, "README.md"), "readme");
        File.WriteAllBytes(Path.Combine(source, "pytorch_model.bin"), new byte[10]);
        RawSafetensors.WriteFile(Path.Combine(source, "model.safetensors"), SmallModel(1));
        return source;
    }

    [Fact]
    public void Side_files_are_copied_byte_for_byte_and_nothing_else_is()
    {
        const string config = "{\n  \"torch_dtype\": \"bfloat16\",\n  \"hidden_size\": 8\n}\n";
        var source = SourceModelWithSideFiles(config);
        var destination = _temp["out"];

        Write(destination, new[] { Blob("a", 16) }, new CheckpointWriteOptions { CopySideFilesFrom = source });

        var expected = new[] { "config.json", "generation_config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
            "special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json", "chat_template.json", "chat_template.jinja", "model.safetensors" };
        Assert.Equal(expected.Order(StringComparer.Ordinal), Directory.GetFiles(destination).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        foreach (var name in expected.Where(n => n != "model.safetensors"))
        {
            Assert.Equal(File.ReadAllBytes(Path.Combine(source, name)), File.ReadAllBytes(Path.Combine(destination, name)));
        }
        Assert.Equal(16L, RawSafetensorsReader.Read(Path.Combine(destination, "model.safetensors")).DataLength);
    }

    [Fact]
    public void Config_torch_dtype_is_rewritten_when_ConfigDType_differs_and_the_rest_is_kept()
    {
        var source = SourceModelWithSideFiles("""{"architectures": ["LlamaForCausalLM"], "torch_dtype": "float32", "hidden_size": 8, "rope_theta": 500000.0}""");
        var destination = _temp["out"];

        Write(destination, new[] { Blob("a", 16) }, new CheckpointWriteOptions { CopySideFilesFrom = source, ConfigDType = SafetensorsDType.BF16 });

        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(destination, "config.json")))!.AsObject();
        Assert.Equal("bfloat16", (string?)config["torch_dtype"]);
        Assert.Equal(8, (int)config["hidden_size"]!);
        Assert.Equal(500000.0, (double)config["rope_theta"]!);
        Assert.Equal("LlamaForCausalLM", (string?)config["architectures"]![0]);
        Assert.Equal(4, config.Count);
        Assert.Equal(8, Checkpoint.Open(destination).ConfigInt("hidden_size"));
    }

    [Theory]
    [InlineData(SafetensorsDType.F16, "float16")]
    [InlineData(SafetensorsDType.F32, "float32")]
    public void Config_gains_torch_dtype_when_it_had_none(SafetensorsDType dtype, string expected)
    {
        var source = SourceModelWithSideFiles("""{"hidden_size": 8}""");
        var destination = _temp["out"];

        Write(destination, new[] { Blob("a", 16) }, new CheckpointWriteOptions { CopySideFilesFrom = source, ConfigDType = dtype });

        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(destination, "config.json")))!.AsObject();
        Assert.Equal(expected, (string?)config["torch_dtype"]);
        Assert.Equal(8, (int)config["hidden_size"]!);
    }

    [Theory]
    [InlineData("null")]
    [InlineData("5")]
    [InlineData("[\"float32\"]")]
    [InlineData("{\"dtype\": \"float32\"}")]
    public void Config_torch_dtype_that_is_not_a_string_is_replaced_when_ConfigDType_is_set(string torchDType)
    {
        var source = SourceModelWithSideFiles($$"""{"torch_dtype": {{torchDType}}, "hidden_size": 8}""");
        var destination = _temp["out"];

        Write(destination, new[] { Blob("a", 16) }, new CheckpointWriteOptions { CopySideFilesFrom = source, ConfigDType = SafetensorsDType.BF16 });

        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(destination, "config.json")))!.AsObject();
        Assert.Equal("bfloat16", (string?)config["torch_dtype"]);
        Assert.Equal(8, (int)config["hidden_size"]!);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Config_is_copied_unchanged_when_torch_dtype_already_matches_or_no_ConfigDType_is_given(bool matchingDType)
    {
        const string config = "{ \"torch_dtype\" :   \"bfloat16\", \"hidden_size\": 8 }";
        var source = SourceModelWithSideFiles(config);
        var destination = _temp["out"];

        Write(destination, new[] { Blob("a", 16) },
            new CheckpointWriteOptions { CopySideFilesFrom = source, ConfigDType = matchingDType ? SafetensorsDType.BF16 : null });

        Assert.Equal(config, File.ReadAllText(Path.Combine(destination, "config.json")));
    }

    [Fact]
    public void Extra_files_are_written_as_utf8_without_a_byte_order_mark()
    {
        var destination = _temp["out"];
        const string recipe = "merge_method: dare_ties\nmodels:\n  - model: ✓ ünïcode\n";

        Write(destination, new[] { Blob("a", 16) },
            new CheckpointWriteOptions { ExtraFiles = new Dictionary<string, string> { ["dare_recipe.yml"] = recipe, ["NOTES.txt"] = "" } });

        Assert.Equal(new UTF8Encoding(false).GetBytes(recipe), File.ReadAllBytes(Path.Combine(destination, "dare_recipe.yml")));
        Assert.Empty(File.ReadAllBytes(Path.Combine(destination, "NOTES.txt")));
    }

    [Fact]
    public void A_plan_naming_a_tensor_twice_is_refused()
    {
        var ex = Assert.Throws<DareException>(() =>
            CheckpointWriter.Create(_temp["out"], Plan(new[] { Blob("a", 4), Blob("b", 4), Blob("a", 8) }), new CheckpointWriteOptions()));
        Assert.Equal(DareErrorId.SafetensorsDuplicateTensor, ex.ErrorId);
        Assert.Contains("'a'", ex.Message);
        Assert.False(Directory.Exists(_temp["out"]));
        Assert.Empty(LeftoversBeside(_temp["out"]));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-5)]
    public void A_non_positive_shard_size_is_InvalidParameter(long size)
    {
        var ex = Assert.Throws<DareException>(() =>
            CheckpointWriter.Create(_temp["out"], Plan(new[] { Blob("a", 4) }), new CheckpointWriteOptions { MaxShardSize = size }));
        Assert.Equal(DareErrorId.InvalidParameter, ex.ErrorId);
        Assert.Empty(LeftoversBeside(_temp["out"]));
    }

    [Fact]
    public void Tensors_must_arrive_in_plan_order()
    {
        var tensors = new[] { Blob("a", 4), Blob("b", 4) };
        using var writer = CheckpointWriter.Create(_temp["out"], Plan(tensors), new CheckpointWriteOptions());
        Assert.Throws<InvalidOperationException>(() => writer.BeginTensor("b"));
    }

    [Fact]
    public void A_tensor_cannot_receive_more_bytes_than_planned_nor_be_left_incomplete()
    {
        var tensors = new[] { Blob("a", 4), Blob("b", 4) };
        using var writer = CheckpointWriter.Create(_temp["out"], Plan(tensors), new CheckpointWriteOptions());
        Assert.Throws<InvalidOperationException>(() => WriteOne(writer, new RawTensor("a", "U8", new long[] { 5 }, new byte[5])));

        using var second = CheckpointWriter.Create(_temp["out2"], Plan(tensors), new CheckpointWriteOptions());
        WriteOne(second, tensors[0], stopAfterBytes: 3);
        Assert.Throws<InvalidOperationException>(() => second.BeginTensor("b"));
    }

    [Fact]
    public void A_torch_tensor_of_another_dtype_than_planned_is_refused()
    {
        using var f32 = torch.ones(4);
        using var writer = CheckpointWriter.Create(_temp["out"], new[] { new PlannedTensor("w", SafetensorsDType.BF16, new long[] { 4 }) }, new CheckpointWriteOptions());
        Assert.Throws<ArgumentException>(() => writer.WriteTensor("w", f32));
    }

    [Fact]
    public void Commit_before_every_planned_tensor_is_written_is_refused_and_creates_nothing()
    {
        var tensors = new[] { Blob("a", 4), Blob("b", 4) };
        var destination = _temp["out"];
        using (var writer = CheckpointWriter.Create(destination, Plan(tensors), new CheckpointWriteOptions()))
        {
            WriteOne(writer, tensors[0]);
            Assert.Throws<InvalidOperationException>(() => writer.Commit());
        }
        Assert.False(Directory.Exists(destination));
        Assert.Empty(LeftoversBeside(destination));
    }

    [Fact]
    public void More_tensors_than_planned_are_refused()
    {
        var tensors = new[] { Blob("a", 4) };
        using var writer = CheckpointWriter.Create(_temp["out"], Plan(tensors), new CheckpointWriteOptions());
        WriteAll(writer, tensors);
        Assert.Throws<InvalidOperationException>(() => writer.BeginTensor("b"));
    }
}
