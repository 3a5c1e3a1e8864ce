using Dare.Engine.Safetensors;
using TorchSharp;
using Xunit;
using static Dare.Engine.Tests.Safetensors.Samples;

namespace Dare.Engine.Tests.Safetensors;

/// <summary>Files written by the independent writer read back exactly through Checkpoint.Open and TensorReader.</summary>
public sealed class CheckpointReadTests : IDisposable
{
    private readonly TempDirectory _temp = new();

    public CheckpointReadTests() => TorchRuntime.EnsureInitialized();

    public void Dispose() => _temp.Dispose();

    [Fact]
    public void Every_dtype_reads_back_with_its_shape_and_the_exact_bytes_written()
    {
        var tensors = AllDTypes();
        var path = RawSafetensors.WriteFile(_temp["all.safetensors"], tensors);

        var checkpoint = Checkpoint.Open(path);
        using var reader = new TensorReader();

        Assert.Equal(tensors.Select(t => t.Name), checkpoint.Tensors.Select(t => t.Name));
        foreach (var expected in tensors)
        {
            AssertReadsBack(reader, checkpoint.Find(expected.Name)!, expected);
        }
    }

    [Fact]
    public void Tensors_come_back_in_the_matching_torch_dtype()
    {
        var checkpoint = Checkpoint.Open(RawSafetensors.WriteFile(_temp["all.safetensors"], AllDTypes()));
        using var reader = new TensorReader();
        var expected = new Dictionary<string, torch.ScalarType>
        {
            ["f32"] = torch.ScalarType.Float32, ["f64"] = torch.ScalarType.Float64, ["f16"] = torch.ScalarType.Float16,
            ["bf16"] = torch.ScalarType.BFloat16, ["i64"] = torch.ScalarType.Int64, ["i32"] = torch.ScalarType.Int32,
            ["i16"] = torch.ScalarType.Int16, ["i8"] = torch.ScalarType.Int8, ["u8"] = torch.ScalarType.Byte,
            ["bool"] = torch.ScalarType.Bool, ["fp8_e4m3"] = torch.ScalarType.Byte, ["fp8_e5m2"] = torch.ScalarType.Byte,
        };
        foreach (var (name, dtype) in expected)
        {
            using var tensor = reader.Read(checkpoint.Find(name)!);
            Assert.Equal(dtype, tensor.dtype);
        }
    }

    [Fact]
    public void Typed_values_equal_the_values_that_were_encoded()
    {
        var checkpoint = Checkpoint.Open(RawSafetensors.WriteFile(_temp["all.safetensors"], AllDTypes()));
        using var reader = new TensorReader();
        torch.Tensor Read(string name) => reader.Read(checkpoint.Find(name)!);

        using (var t = Read("f32")) Assert.Equal(F32Values.Select(BitConverter.SingleToInt32Bits), t.data<float>().ToArray().Select(BitConverter.SingleToInt32Bits));
        using (var t = Read("f64")) Assert.Equal(F64Values.Select(BitConverter.DoubleToInt64Bits), t.data<double>().ToArray().Select(BitConverter.DoubleToInt64Bits));
        using (var t = Read("i64")) Assert.Equal(I64Values, t.data<long>().ToArray());
        using (var t = Read("i32")) Assert.Equal(I32Values, t.data<int>().ToArray());
        using (var t = Read("i16")) Assert.Equal(I16Values, t.data<short>().ToArray());
        using (var t = Read("i8")) Assert.Equal(I8Values, t.data<sbyte>().ToArray());
        using (var t = Read("u8")) Assert.Equal(U8Values, t.data<byte>().ToArray());
        using (var t = Read("bool")) Assert.Equal(BoolValues, t.data<bool>().ToArray());
        using (var t = Read("f16"))
        using (var widened = t.to_type(torch.ScalarType.Float32))
        {
            Assert.Equal(F16Values.Select(h => (float)h), widened.data<float>().ToArray());
        }
        using (var t = Read("bf16"))
        using (var widened = t.to_type(torch.ScalarType.Float32))
        {
            // bfloat16 -> float32 is exact: the bf16 bits are the top half of the float32 bits.
            Assert.Equal(BF16Bits.Select(b => BitConverter.SingleToInt32Bits(RawData.BF16ToSingle(b))),
                widened.data<float>().ToArray().Select(BitConverter.SingleToInt32Bits));
        }
    }

    [Fact]
    public void Fp8_tensors_pass_through_as_raw_bytes_with_their_header_shape_kept_in_TensorInfo()
    {
        var checkpoint = Checkpoint.Open(RawSafetensors.WriteFile(_temp["fp8.safetensors"], AllDTypes()));
        using var reader = new TensorReader();
        var info = checkpoint.Find("fp8_e4m3")!;
        Assert.Equal(SafetensorsDType.F8_E4M3, info.DType);
        Assert.Equal(new long[] { 2, 3 }, info.Shape);
        using var tensor = reader.Read(info);
        Assert.Equal(torch.ScalarType.Byte, tensor.dtype);
        Assert.Equal(F8E4M3Bytes, tensor.data<byte>().ToArray());
        Assert.Equal(SafetensorsDType.F8_E5M2, checkpoint.Find("fp8_e5m2")!.DType);
    }

    [Fact]
    public void TensorInfo_locates_each_tensor_at_data_start_plus_its_begin_offset()
    {
        var tensors = AllDTypes();
        var path = RawSafetensors.WriteFile(_temp["all.safetensors"], tensors);
        var raw = RawSafetensorsReader.Read(path);

        var checkpoint = Checkpoint.Open(path);
        foreach (var entry in raw.Entries)
        {
            var info = checkpoint.Find(entry.Name)!;
            Assert.Equal(raw.DataStart + entry.Begin, info.DataOffset);
            Assert.Equal(entry.End - entry.Begin, info.ByteLength);
            Assert.Equal(path, info.File);
        }
    }

    [Fact]
    public void Header_order_is_kept_when_the_data_block_is_laid_out_in_another_order()
    {
        var tensors = SmallModel(2);
        var headerOrder = tensors.Select(t => t.Name).Reverse().ToList();
        var path = RawSafetensors.WriteFile(_temp["reordered.safetensors"], tensors, headerOrder: headerOrder);

        var checkpoint = Checkpoint.Open(path);
        using var reader = new TensorReader();

        Assert.Equal(headerOrder, checkpoint.Tensors.Select(t => t.Name));
        foreach (var expected in tensors) AssertReadsBack(reader, checkpoint.Find(expected.Name)!, expected);
    }

    [Fact]
    public void Unpadded_header_is_accepted()
    {
        var tensors = SmallModel(1);
        var bytes = RawSafetensors.Build(tensors, pad: false);
        var path = _temp["unpadded.safetensors"];
        File.WriteAllBytes(path, bytes);
        Assert.NotEqual(0UL, RawSafetensorsReader.Read(path).HeaderLength % 8); // the case under test really is unaligned

        var checkpoint = Checkpoint.Open(path);
        using var reader = new TensorReader();
        foreach (var expected in tensors) AssertReadsBack(reader, checkpoint.Find(expected.Name)!, expected);
    }

    [Fact]
    public void Scalar_and_zero_element_tensors_read_back()
    {
        var tensors = new[]
        {
            new RawTensor("empty", "F32", new long[] { 0, 4 }, Array.Empty<byte>()),
            new RawTensor("scalar", "F64", Array.Empty<long>(), RawData.F64(2.5)),
            new RawTensor("also_empty", "BF16", new long[] { 3, 0 }, Array.Empty<byte>()),
            new RawTensor("empty_but_wide", "F32", new long[] { 0, 1L << 40, 1 << 20 }, Array.Empty<byte>()),
        };
        var checkpoint = Checkpoint.Open(RawSafetensors.WriteFile(_temp["odd.safetensors"], tensors));
        using var reader = new TensorReader();

        foreach (var expected in tensors) AssertReadsBack(reader, checkpoint.Find(expected.Name)!, expected);
        using var scalar = reader.Read(checkpoint.Find("scalar")!);
        Assert.Equal(2.5, scalar.item<double>());
        Assert.Equal(1, checkpoint.ParameterCount);
    }

    [Fact]
    public void A_file_path_opens_with_File_layout_and_its_full_path()
    {
        var tensors = SmallModel(1);
        var path = RawSafetensors.WriteFile(_temp["my-model.safetensors"], tensors);

        var checkpoint = Checkpoint.Open(Path.GetRelativePath(Environment.CurrentDirectory, path));

        Assert.Equal(CheckpointLayout.File, checkpoint.Layout);
        Assert.Equal(path, checkpoint.Path);
        Assert.Equal(new[] { path }, checkpoint.Files);
        Assert.Equal("my-model", checkpoint.Name);
        Assert.Equal(_temp.Path, checkpoint.Directory);
        Assert.Equal(tensors.Count, checkpoint.TensorCount);
    }

    [Fact]
    public void A_folder_with_model_safetensors_opens_with_Folder_layout()
    {
        var folder = _temp.CreateFolder("tiny-llama");
        var tensors = SmallModel(2);
        var file = RawSafetensors.WriteFile(Path.Combine(folder, "model.safetensors"), tensors);

        var checkpoint = Checkpoint.Open(folder + Path.DirectorySeparatorChar);
        using var reader = new TensorReader();

        Assert.Equal(CheckpointLayout.Folder, checkpoint.Layout);
        Assert.Equal(new[] { file }, checkpoint.Files);
        Assert.Equal("tiny-llama", checkpoint.Name);
        Assert.Equal(tensors.Select(t => t.Name), checkpoint.Tensors.Select(t => t.Name));
        foreach (var expected in tensors) AssertReadsBack(reader, checkpoint.Find(expected.Name)!, expected);
    }

    [Fact]
    public void A_folder_with_one_differently_named_safetensors_file_opens_that_file()
    {
        var folder = _temp.CreateFolder("other-name");
        var tensors = SmallModel(1);
        var file = RawSafetensors.WriteFile(Path.Combine(folder, "weights.safetensors"), tensors);

        var checkpoint = Checkpoint.Open(folder);

        Assert.Equal(CheckpointLayout.Folder, checkpoint.Layout);
        Assert.Equal(new[] { file }, checkpoint.Files);
        Assert.Equal(tensors.Count, checkpoint.TensorCount);
    }

    [Fact]
    public void A_sharded_folder_lists_tensors_shard_by_shard_in_header_order()
    {
        var folder = _temp.CreateFolder("sharded");
        var tensors = SmallModel(3);
        var shards = new IReadOnlyList<RawTensor>[] { tensors.Take(4).ToList(), tensors.Skip(4).Take(5).ToList(), tensors.Skip(9).ToList() };
        var shardPaths = RawSafetensors.WriteShardedFolder(folder, shards);

        var checkpoint = Checkpoint.Open(folder);
        using var reader = new TensorReader();

        Assert.Equal(CheckpointLayout.Sharded, checkpoint.Layout);
        Assert.Equal(shardPaths, checkpoint.Files);
        Assert.Equal(tensors.Select(t => t.Name), checkpoint.Tensors.Select(t => t.Name));
        for (var shard = 0; shard < shards.Length; shard++)
        {
            foreach (var expected in shards[shard])
            {
                var info = checkpoint.Find(expected.Name)!;
                Assert.Equal(shardPaths[shard], info.File);
                AssertReadsBack(reader, info, expected);
            }
        }
    }

    [Fact]
    public void The_weight_map_decides_which_shard_a_tensor_is_read_from()
    {
        // Non-standard shard names, an index listed in a scrambled order, and a stray .safetensors file that the
        // index does not mention: only the shards the weight_map names are opened.
        var folder = _temp.CreateFolder("custom-shards");
        var tensors = SmallModel(2);
        var first = tensors.Where((_, i) => i % 2 == 0).ToList();
        var second = tensors.Where((_, i) => i % 2 == 1).ToList();
        var paths = RawSafetensors.WriteShardedFolder(folder, new IReadOnlyList<RawTensor>[] { first, second },
            shardFileNames: new[] { "part-a.safetensors", "part-b.safetensors" },
            weightMap: tensors.Select((t, i) => KeyValuePair.Create(t.Name, i % 2 == 0 ? "part-a.safetensors" : "part-b.safetensors"))
                .Reverse().ToDictionary());
        RawSafetensors.WriteFile(Path.Combine(folder, "stray.safetensors"), new[] { new RawTensor("stray", "F32", new long[] { 1 }, RawData.F32(9f)) });

        var checkpoint = Checkpoint.Open(folder);
        using var reader = new TensorReader();

        Assert.Equal(paths, checkpoint.Files);
        Assert.False(checkpoint.Contains("stray"));
        Assert.Equal(tensors.Count, checkpoint.TensorCount);
        foreach (var expected in first)
        {
            Assert.Equal(paths[0], checkpoint.Find(expected.Name)!.File);
            AssertReadsBack(reader, checkpoint.Find(expected.Name)!, expected);
        }
        foreach (var expected in second)
        {
            Assert.Equal(paths[1], checkpoint.Find(expected.Name)!.File);
            AssertReadsBack(reader, checkpoint.Find(expected.Name)!, expected);
        }
    }

    [Fact]
    public void The_same_tensors_in_different_shard_layouts_read_identically()
    {
        var tensors = SmallModel(3);
        var single = RawSafetensors.WriteFile(_temp["single.safetensors"], tensors);
        var threeShards = _temp.CreateFolder("three");
        RawSafetensors.WriteShardedFolder(threeShards, new IReadOnlyList<RawTensor>[] { tensors.Take(2).ToList(), tensors.Skip(2).Take(7).ToList(), tensors.Skip(9).ToList() });
        var twoShards = _temp.CreateFolder("two");
        // Different grouping and a different order inside each shard.
        RawSafetensors.WriteShardedFolder(twoShards, new IReadOnlyList<RawTensor>[] { tensors.Skip(6).Reverse().ToList(), tensors.Take(6).ToList() });

        var checkpoints = new[] { Checkpoint.Open(single), Checkpoint.Open(threeShards), Checkpoint.Open(twoShards) };
        using var reader = new TensorReader();

        foreach (var checkpoint in checkpoints)
        {
            Assert.Equal(tensors.Select(t => t.Name).Order(), checkpoint.Tensors.Select(t => t.Name).Order());
            Assert.Equal(checkpoints[0].SizeBytes, checkpoint.SizeBytes);
        }
        foreach (var tensor in tensors)
        {
            var reads = checkpoints.Select(c =>
            {
                using var t = reader.Read(c.Find(tensor.Name)!);
                return (Shape: t.shape, Dtype: t.dtype, Bytes: Bytes(t));
            }).ToList();
            Assert.All(reads, r =>
            {
                Assert.Equal(tensor.Shape, r.Shape);
                Assert.Equal(reads[0].Dtype, r.Dtype);
                Assert.Equal(tensor.Data, r.Bytes);
            });
        }
    }

    [Fact]
    public void ReadRange_returns_exactly_the_requested_elements_as_a_flat_tensor()
    {
        var values = Enumerable.Range(0, 24).Select(i => i * 0.5f - 3f).ToArray();
        var bf16 = Enumerable.Range(0, 24).Select(i => (ushort)(0x3F80 + i)).ToArray();
        var tensors = new[]
        {
            new RawTensor("head", "U8", new long[] { 3 }, RawData.U8(7, 8, 9)),
            new RawTensor("w", "F32", new long[] { 4, 6 }, RawData.F32(values)),
            new RawTensor("b", "BF16", new long[] { 2, 12 }, RawData.BF16Bits(bf16)),
        };
        var checkpoint = Checkpoint.Open(RawSafetensors.WriteFile(_temp["range.safetensors"], tensors));
        using var reader = new TensorReader();

        using (var middle = reader.ReadRange(checkpoint.Find("w")!, 5, 7))
        {
            Assert.Equal(new long[] { 7 }, middle.shape);
            Assert.Equal(values[5..12], middle.data<float>().ToArray());
        }
        using (var tail = reader.ReadRange(checkpoint.Find("w")!, 20, 4))
        {
            Assert.Equal(values[20..], tail.data<float>().ToArray());
        }
        using (var range = reader.ReadRange(checkpoint.Find("b")!, 11, 3))
        {
            Assert.Equal(torch.ScalarType.BFloat16, range.dtype);
            Assert.Equal(RawData.BF16Bits(bf16[11..14]), Bytes(range));
        }
        using (var none = reader.ReadRange(checkpoint.Find("w")!, 24, 0))
        {
            Assert.Equal(0, none.NumberOfElements);
        }
    }

    [Fact]
    public void ReadRange_outside_the_tensor_is_refused()
    {
        var checkpoint = Checkpoint.Open(RawSafetensors.WriteFile(_temp["range.safetensors"],
            new[] { new RawTensor("w", "F32", new long[] { 4 }, RawData.F32(1, 2, 3, 4)), new RawTensor("next", "F32", new long[] { 1 }, RawData.F32(5)) }));
        using var reader = new TensorReader();
        var info = checkpoint.Find("w")!;

        Assert.Throws<ArgumentOutOfRangeException>(() => reader.ReadRange(info, 3, 2)); // would read into 'next'
        Assert.Throws<ArgumentOutOfRangeException>(() => reader.ReadRange(info, -1, 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => reader.ReadRange(info, 0, -1));
        Assert.Throws<ArgumentOutOfRangeException>(() => reader.ReadRange(info, 5, 0));
        // Refused before any allocation: these counts would ask torch for exabytes.
        Assert.Throws<ArgumentOutOfRangeException>(() => reader.ReadRange(info, 0, long.MaxValue / 8));
        Assert.Throws<ArgumentOutOfRangeException>(() => reader.ReadRange(info, 2, long.MaxValue));
    }

    [Fact]
    public void Metadata_is_the_header_metadata_and_empty_when_absent()
    {
        var metadata = new Dictionary<string, string> { ["format"] = "pt", ["merged_by"] = "someone", ["ünïcode"] = "✓ value" };
        var with = Checkpoint.Open(RawSafetensors.WriteFile(_temp["with.safetensors"], SmallModel(1), metadata));
        var without = Checkpoint.Open(RawSafetensors.WriteFile(_temp["without.safetensors"], SmallModel(1)));

        Assert.Equal(metadata.OrderBy(p => p.Key), with.Metadata.OrderBy(p => p.Key));
        Assert.Empty(without.Metadata);
    }

    [Fact]
    public void Metadata_of_a_sharded_checkpoint_comes_from_its_shards()
    {
        var folder = _temp.CreateFolder("sharded");
        var tensors = SmallModel(1);
        RawSafetensors.WriteShardedFolder(folder, new IReadOnlyList<RawTensor>[] { tensors.Take(2).ToList(), tensors.Skip(2).ToList() },
            metadata: new Dictionary<string, string> { ["format"] = "pt" });

        Assert.Equal("pt", Checkpoint.Open(folder).Metadata["format"]);
    }

    [Fact]
    public void Config_json_beside_the_weights_is_parsed_and_ConfigInt_reads_integers_only()
    {
        var folder = _temp.CreateFolder("with-config");
        RawSafetensors.WriteFile(Path.Combine(folder, "model.safetensors"), SmallModel(1));
        File.WriteAllText(Path.Combine(folder, "config.json"),
            """{"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "rms_norm_eps": 1e-05, "vocab_size": 128256, "rope_scaling": null}""");

        foreach (var checkpoint in new[] { Checkpoint.Open(folder), Checkpoint.Open(Path.Combine(folder, "model.safetensors")) })
        {
            Assert.NotNull(checkpoint.Config);
            Assert.Equal("llama", (string?)checkpoint.Config!["model_type"]);
            Assert.Equal(4096, checkpoint.ConfigInt("hidden_size"));
            Assert.Equal(32, checkpoint.ConfigInt("num_hidden_layers"));
            Assert.Equal(128256, checkpoint.ConfigInt("vocab_size"));
            Assert.Null(checkpoint.ConfigInt("model_type"));
            Assert.Null(checkpoint.ConfigInt("rms_norm_eps"));
            Assert.Null(checkpoint.ConfigInt("rope_scaling"));
            Assert.Null(checkpoint.ConfigInt("missing"));
        }
    }

    [Fact]
    public void Without_config_json_Config_is_null()
    {
        var checkpoint = Checkpoint.Open(RawSafetensors.WriteFile(_temp["model.safetensors"], SmallModel(1)));
        Assert.Null(checkpoint.Config);
        Assert.Null(checkpoint.ConfigInt("hidden_size"));
    }

    [Fact]
    public void Counts_add_up_over_every_tensor_of_every_shard()
    {
        var folder = _temp.CreateFolder("counted");
        var tensors = new[]
        {
            new RawTensor("a", "BF16", new long[] { 4, 8 }, new byte[64]),
            new RawTensor("b", "F32", new long[] { 5 }, new byte[20]),
            new RawTensor("c", "BF16", new long[] { 3 }, new byte[6]),
            new RawTensor("d", "I64", new long[] { 2, 2 }, new byte[32]),
            new RawTensor("e", "BF16", new long[] { 1, 1, 7 }, new byte[14]),
            new RawTensor("f", "F32", new long[] { 10 }, new byte[40]),
            new RawTensor("g", "F8_E4M3", new long[] { 3, 3 }, new byte[9]),
        };
        RawSafetensors.WriteShardedFolder(folder, new IReadOnlyList<RawTensor>[] { tensors[..3], tensors[3..] });

        var checkpoint = Checkpoint.Open(folder);

        Assert.Equal(7, checkpoint.TensorCount);
        Assert.Equal(32 + 5 + 3 + 4 + 7 + 10 + 9, checkpoint.ParameterCount);
        Assert.Equal(64 + 20 + 6 + 32 + 14 + 40 + 9, checkpoint.SizeBytes);
        Assert.Equal("BF16 (3), F32 (2), I64 (1), F8_E4M3 (1)", checkpoint.DTypeSummary);
        Assert.True(checkpoint.Contains("d"));
        Assert.False(checkpoint.Contains("D"));
        Assert.Null(checkpoint.Find("missing"));
        Assert.Equal(new long[] { 1, 1, 7 }, checkpoint.Find("e")!.Shape);
        Assert.Equal(7, checkpoint.Find("e")!.ElementCount);
    }

    [Fact]
    public void A_file_truncated_while_being_read_fails_with_SafetensorsReadFailed_naming_file_and_tensor()
    {
        var tensors = SmallModel(1);
        var path = RawSafetensors.WriteFile(_temp["shrinking.safetensors"], tensors);
        var checkpoint = Checkpoint.Open(path);
        var last = checkpoint.Tensors.MaxBy(t => t.DataOffset)!;
        var first = checkpoint.Tensors.MinBy(t => t.DataOffset)!;
        using var reader = new TensorReader();
        // The reader has the file open (its identity checked) before it shrinks; a file changed before the first read is InputChanged (DataCheckTests).
        AssertReadsBack(reader, first, tensors.Single(t => t.Name == first.Name));
        using (var stream = new FileStream(path, FileMode.Open)) stream.SetLength(last.DataOffset + last.ByteLength / 2);

        var ex = Assert.Throws<DareException>(() => reader.Read(last));

        Assert.Equal(DareErrorId.SafetensorsReadFailed, ex.ErrorId);
        Assert.Equal(path, ex.FilePath);
        Assert.Equal(last.Name, ex.TensorName);
        // Tensors still wholly inside the file read as before.
        AssertReadsBack(reader, first, tensors.Single(t => t.Name == first.Name));
    }

    [Fact]
    public void Prefetch_advises_the_os_for_ranges_inside_the_tensor_and_never_throws()
    {
        var tensors = SmallModel(1);
        var path = RawSafetensors.WriteFile(_temp["prefetched.safetensors"], tensors);
        var checkpoint = Checkpoint.Open(path);
        var info = checkpoint.Tensors.MaxBy(t => t.ElementCount)!;
        using var reader = new TensorReader();

        Assert.Equal(OperatingSystem.IsLinux(), reader.Prefetch(info, 0, info.ElementCount));
        Assert.Equal(OperatingSystem.IsLinux(), reader.Prefetch(info, 1, info.ElementCount - 1));
        Assert.False(reader.Prefetch(info, 1, info.ElementCount)); // past the end
        Assert.False(reader.Prefetch(info, 0, 0));
        AssertReadsBack(reader, info, tensors.Single(t => t.Name == info.Name));

        File.Delete(path);
        using var fresh = new TensorReader();
        Assert.False(fresh.Prefetch(info, 0, info.ElementCount)); // the read itself reports a missing file
    }

    [Fact]
    public void A_file_deleted_after_open_fails_to_read_with_PathNotFound()
    {
        var path = RawSafetensors.WriteFile(_temp["vanishing.safetensors"], SmallModel(1));
        var checkpoint = Checkpoint.Open(path);
        File.Delete(path);
        using var reader = new TensorReader();

        var ex = Assert.Throws<DareException>(() => reader.Read(checkpoint.Tensors[0]));

        Assert.Equal(DareErrorId.PathNotFound, ex.ErrorId);
        Assert.Equal(path, ex.FilePath);
    }

    [Fact]
    public void One_reader_reads_from_several_checkpoints_and_files_interleaved()
    {
        var a = SmallModel(1);
        var b = AllDTypes();
        var ca = Checkpoint.Open(RawSafetensors.WriteFile(_temp["a.safetensors"], a));
        var cb = Checkpoint.Open(RawSafetensors.WriteFile(_temp["b.safetensors"], b));
        using var reader = new TensorReader();

        for (var i = 0; i < Math.Max(a.Count, b.Count); i++)
        {
            if (i < a.Count) AssertReadsBack(reader, ca.Find(a[i].Name)!, a[i]);
            if (i < b.Count) AssertReadsBack(reader, cb.Find(b[i].Name)!, b[i]);
        }
    }
}
