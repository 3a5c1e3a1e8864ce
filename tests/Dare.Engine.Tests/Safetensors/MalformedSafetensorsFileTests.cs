using System.Buffers.Binary;
using System.Text;
using Dare.Engine.Safetensors;
using Xunit;

namespace Dare.Engine.Tests.Safetensors;

/// <summary>
/// Every way a single .safetensors file can be malformed is reported as a DareException with a stable ErrorId,
/// the file's path and, where one tensor is at fault, its name. Files are crafted by the independent writer.
/// </summary>
public sealed class MalformedSafetensorsFileTests : IDisposable
{
    private readonly TempDirectory _temp = new();

    public void Dispose() => _temp.Dispose();

    /// <summary>Writes the file, opens it, and checks the failure names the file and is reported as invalid data.</summary>
    private DareException OpenFails(byte[] bytes, DareErrorId expected, string? tensor = null)
    {
        var path = _temp["bad.safetensors"];
        File.WriteAllBytes(path, bytes);
        return OpenFails(path, expected, tensor);
    }

    private DareException OpenFails(string header, byte[] data, DareErrorId expected, string? tensor = null) =>
        OpenFails(RawSafetensors.Assemble(header, data), expected, tensor);

    private static DareException OpenFails(string path, DareErrorId expected, string? tensor)
    {
        var ex = Assert.Throws<DareException>(() => Checkpoint.Open(path));
        Assert.Equal(expected, ex.ErrorId);
        Assert.Equal(DareErrorKind.InvalidData, ex.Kind);
        Assert.Equal(path, ex.FilePath);
        Assert.Contains(path, ex.Message);
        if (tensor is not null)
        {
            Assert.Equal(tensor, ex.TensorName);
            Assert.Contains($"'{tensor}'", ex.Message);
        }
        return ex;
    }

    /// <summary>The header of a valid one-tensor file, "w": F32 [2] at [0, 8], with <paramref name="entry"/> replacing the entry when given.</summary>
    private static string Header(string entry = """{"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}""") => """{"w": """ + entry + "}";

    private static readonly byte[] EightBytes = RawData.F32(1, 2);

    [Fact]
    public void The_valid_baseline_used_by_these_tests_opens()
    {
        var path = _temp["good.safetensors"];
        File.WriteAllBytes(path, RawSafetensors.Assemble(Header(), EightBytes));
        Assert.Equal("w", Assert.Single(Checkpoint.Open(path).Tensors).Name);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(7)]
    public void File_shorter_than_8_bytes_is_SafetensorsFileTooShort(int length)
    {
        OpenFails(new byte[length], DareErrorId.SafetensorsFileTooShort);
    }

    [Theory]
    [InlineData(1UL)]
    [InlineData(1UL << 20)]
    [InlineData(100UL * 1024 * 1024)]
    public void Header_length_past_end_of_file_is_SafetensorsHeaderTooLarge(ulong pastTheEnd)
    {
        var header = Encoding.UTF8.GetBytes(Header());
        OpenFails(RawSafetensors.Assemble(header, EightBytes, lengthPrefix: (ulong)(header.Length + EightBytes.Length) + pastTheEnd),
            DareErrorId.SafetensorsHeaderTooLarge);
    }

    [Fact]
    public void Header_length_above_100MB_is_SafetensorsHeaderTooLarge_even_when_the_file_is_that_long()
    {
        // A sparse file long enough to hold the claimed header, so only the size limit can refuse it.
        const ulong claimed = 100UL * 1024 * 1024 + 1;
        var path = _temp["huge-header.safetensors"];
        using (var stream = new FileStream(path, FileMode.CreateNew))
        {
            Span<byte> prefix = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(prefix, claimed);
            stream.Write(prefix);
            stream.SetLength(8 + (long)claimed + 16);
        }
        OpenFails(path, DareErrorId.SafetensorsHeaderTooLarge, tensor: null);
    }

    [Theory]
    [InlineData(ulong.MaxValue)]
    [InlineData(1UL << 63)]
    [InlineData((1UL << 63) - 1)]
    public void Header_length_near_u64_max_is_SafetensorsHeaderTooLarge(ulong claimed)
    {
        OpenFails(RawSafetensors.Assemble(Encoding.UTF8.GetBytes(Header()), EightBytes, claimed), DareErrorId.SafetensorsHeaderTooLarge);
    }

    [Fact]
    public void A_header_length_of_zero_is_SafetensorsHeaderInvalid()
    {
        OpenFails(RawSafetensors.Assemble(Array.Empty<byte>(), EightBytes), DareErrorId.SafetensorsHeaderInvalid);
    }

    [Theory]
    [InlineData(new byte[] { 0xFF })]              // never valid in UTF-8
    [InlineData(new byte[] { 0xC3 })]              // truncated two-byte sequence
    [InlineData(new byte[] { 0xC0, 0xAF })]        // overlong encoding of '/'
    [InlineData(new byte[] { 0xED, 0xA0, 0x80 })]  // UTF-16 surrogate encoded in UTF-8
    public void Header_not_valid_UTF8_is_SafetensorsHeaderInvalid(byte[] invalid)
    {
        // The bad bytes sit inside a JSON string (the tensor name), where a lenient JSON parser might let them through.
        var header = Encoding.UTF8.GetBytes("{\"w").Concat(invalid)
            .Concat(Encoding.UTF8.GetBytes("\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}")).ToArray();
        OpenFails(RawSafetensors.Assemble(header, EightBytes), DareErrorId.SafetensorsHeaderInvalid);
    }

    [Theory]
    [InlineData("not json")]
    [InlineData("""{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}""")]
    [InlineData("""{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}}""")]
    [InlineData("""{'w': {'dtype': 'F32', 'shape': [2], 'data_offsets': [0, 8]}}""")]
    [InlineData("""{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8],}}""")]
    [InlineData("{}\0\0\0\0")]
    [InlineData("        ")]
    public void Header_not_JSON_is_SafetensorsHeaderInvalid(string header)
    {
        OpenFails(header, EightBytes, DareErrorId.SafetensorsHeaderInvalid);
    }

    [Theory]
    [InlineData("[]")]
    [InlineData("""[{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}]""")]
    [InlineData("42")]
    [InlineData("-1.5e3")]
    [InlineData("\"w\"")]
    [InlineData("null")]
    [InlineData("true")]
    public void Header_JSON_that_is_not_an_object_is_SafetensorsHeaderInvalid(string header)
    {
        OpenFails(header, EightBytes, DareErrorId.SafetensorsHeaderInvalid);
    }

    [Fact]
    public void Header_nested_too_deeply_is_SafetensorsHeaderInvalid()
    {
        var deep = new string('[', 200) + new string(']', 200);
        OpenFails("""{"__metadata__": {"a": """ + deep + """}, "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}""", EightBytes,
            DareErrorId.SafetensorsHeaderInvalid);
    }

    [Theory]
    [InlineData("[]")]
    [InlineData("\"text\"")]
    [InlineData("""{"format": 1}""")]
    [InlineData("""{"format": null}""")]
    [InlineData("""{"nested": {"a": "b"}}""")]
    public void Metadata_that_is_not_an_object_of_strings_is_SafetensorsHeaderInvalid(string metadata)
    {
        OpenFails("""{"__metadata__": """ + metadata + """, "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}""", EightBytes,
            DareErrorId.SafetensorsHeaderInvalid);
    }

    [Theory]
    [InlineData("5")]
    [InlineData("\"F32\"")]
    [InlineData("[\"F32\", [2], [0, 8]]")]
    [InlineData("null")]
    [InlineData("true")]
    public void Tensor_entry_not_an_object_is_SafetensorsTensorEntryInvalid(string entry)
    {
        OpenFails(Header(entry), EightBytes, DareErrorId.SafetensorsTensorEntryInvalid, tensor: "w");
    }

    [Theory]
    [InlineData("""{"shape": [2], "data_offsets": [0, 8]}""")]
    [InlineData("""{"dtype": "F32", "data_offsets": [0, 8]}""")]
    [InlineData("""{"dtype": "F32", "shape": [2]}""")]
    [InlineData("""{}""")]
    public void Tensor_entry_missing_dtype_shape_or_data_offsets_is_SafetensorsTensorEntryInvalid(string entry)
    {
        OpenFails(Header(entry), EightBytes, DareErrorId.SafetensorsTensorEntryInvalid, tensor: "w");
    }

    [Theory]
    [InlineData("""{"dtype": 4, "shape": [2], "data_offsets": [0, 8]}""")]
    [InlineData("""{"dtype": null, "shape": [2], "data_offsets": [0, 8]}""")]
    [InlineData("""{"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}""")]
    [InlineData("""{"dtype": "F32", "shape": {"0": 2}, "data_offsets": [0, 8]}""")]
    [InlineData("""{"dtype": "F32", "shape": [2], "data_offsets": "0-8"}""")]
    [InlineData("""{"dtype": "F32", "shape": [2], "data_offsets": null}""")]
    public void Tensor_entry_field_of_the_wrong_JSON_type_is_SafetensorsTensorEntryInvalid(string entry)
    {
        OpenFails(Header(entry), EightBytes, DareErrorId.SafetensorsTensorEntryInvalid, tensor: "w");
    }

    [Theory]
    [InlineData("F128")]
    [InlineData("f32")]
    [InlineData("float32")]
    [InlineData("")]
    [InlineData("F8")]
    [InlineData("1")]          // the numeric value of an enum member is not a dtype name
    [InlineData("0")]
    [InlineData(" F32")]       // nor is a name with spaces around it
    [InlineData("F32 ")]
    [InlineData("F32,F64")]    // nor a comma-separated list
    [InlineData("F32, I8")]
    public void Unknown_dtype_is_SafetensorsDTypeUnknown(string dtype)
    {
        // Each entry spans 8 bytes, so it would be valid for F64/I64 [1] or F32 [2]-sized dtypes; only the name is wrong.
        OpenFails(Header($$"""{"dtype": "{{dtype}}", "shape": [2], "data_offsets": [0, 8]}"""), EightBytes, DareErrorId.SafetensorsDTypeUnknown, tensor: "w");
    }

    [Theory]
    [InlineData("[-1]")]
    [InlineData("[-2, -1]")]
    [InlineData("[2, -1, -4]")]
    public void Negative_shape_entry_is_SafetensorsShapeInvalid(string shape)
    {
        OpenFails(Header($$"""{"dtype": "F32", "shape": {{shape}}, "data_offsets": [0, 8]}"""), EightBytes, DareErrorId.SafetensorsShapeInvalid, tensor: "w");
    }

    [Theory]
    [InlineData("[1.5]")]
    [InlineData("[\"3\"]")]
    [InlineData("[\"2\"]")]
    [InlineData("[2.0]")]
    [InlineData("[2e0]")]
    [InlineData("[null]")]
    [InlineData("[true]")]
    [InlineData("[[2]]")]
    [InlineData("[18446744073709551618]")]
    public void Non_integer_shape_entry_is_SafetensorsShapeInvalid(string shape)
    {
        OpenFails(Header($$"""{"dtype": "F32", "shape": {{shape}}, "data_offsets": [0, 8]}"""), EightBytes, DareErrorId.SafetensorsShapeInvalid, tensor: "w");
    }

    [Fact]
    public void Shape_whose_element_count_overflows_is_SafetensorsShapeInvalid()
    {
        OpenFails(Header("""{"dtype": "F32", "shape": [4294967296, 4294967296, 4], "data_offsets": [0, 8]}"""), EightBytes,
            DareErrorId.SafetensorsShapeInvalid, tensor: "w");
        OpenFails(Header("""{"dtype": "F64", "shape": [4611686018427387904], "data_offsets": [0, 8]}"""), EightBytes,
            DareErrorId.SafetensorsShapeInvalid, tensor: "w");
    }

    [Theory]
    [InlineData("[0, 4294967296, 4294967296]")]
    [InlineData("[4294967296, 0, 4294967296]")]
    [InlineData("[4294967296, 4294967296, 0]")]
    [InlineData("[0, 9223372036854775807, 2]")]
    public void Zero_element_shape_whose_other_dimensions_multiply_past_int64_is_SafetensorsShapeInvalid(string shape)
    {
        // No elements, but torch cannot lay such a tensor out (its strides overflow), so it is refused at open time.
        OpenFails(Header($$"""{"dtype": "F32", "shape": {{shape}}, "data_offsets": [0, 0]}"""), Array.Empty<byte>(),
            DareErrorId.SafetensorsShapeInvalid, tensor: "w");
    }

    [Theory]
    [InlineData("[0, 12]")]
    [InlineData("[8, 16]")]
    [InlineData("[9223372036854775800, 9223372036854775807]")]
    public void Offsets_out_of_range_are_SafetensorsOffsetsInvalid(string offsets)
    {
        // Shapes chosen so that the byte length matches the offsets: only the range is wrong.
        var length = offsets switch { "[0, 12]" => 3, "[8, 16]" => 2, _ => 7 };
        var dtype = length == 7 ? "U8" : "F32";
        OpenFails(Header($$"""{"dtype": "{{dtype}}", "shape": [{{length}}], "data_offsets": {{offsets}}}"""), EightBytes,
            DareErrorId.SafetensorsOffsetsInvalid, tensor: "w");
    }

    [Theory]
    [InlineData("[0]")]
    [InlineData("[0, 4, 8]")]
    [InlineData("[]")]
    [InlineData("[-8, 0]")]
    [InlineData("[0, 8.0]")]
    [InlineData("[\"0\", 8]")]
    [InlineData("[0, 18446744073709551616]")]
    public void Malformed_offsets_are_SafetensorsOffsetsInvalid(string offsets)
    {
        OpenFails(Header($$"""{"dtype": "F32", "shape": [2], "data_offsets": {{offsets}}}"""), EightBytes, DareErrorId.SafetensorsOffsetsInvalid, tensor: "w");
    }

    [Fact]
    public void Reversed_offsets_are_SafetensorsOffsetsInvalid()
    {
        OpenFails(Header("""{"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}"""), EightBytes, DareErrorId.SafetensorsOffsetsInvalid, tensor: "w");
    }

    [Fact]
    public void Overlapping_tensors_are_SafetensorsOffsetsInvalid()
    {
        // a = [0, 8), b = [4, 12) in a 12-byte block.
        var ex = OpenFails("""{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}""",
            new byte[12], DareErrorId.SafetensorsOffsetsInvalid, tensor: "b");
        Assert.Contains("overlap", ex.Message);
    }

    [Fact]
    public void Two_tensors_sharing_the_same_bytes_are_SafetensorsOffsetsInvalid()
    {
        OpenFails("""{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "I32", "shape": [2], "data_offsets": [0, 8]}}""",
            EightBytes, DareErrorId.SafetensorsOffsetsInvalid);
    }

    [Fact]
    public void Gap_in_the_data_block_is_SafetensorsOffsetsInvalid()
    {
        // a = [0, 4), b = [8, 12): bytes 4..8 belong to no tensor.
        var ex = OpenFails("""{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}""",
            new byte[12], DareErrorId.SafetensorsOffsetsInvalid, tensor: "b");
        Assert.Contains("gap", ex.Message);
    }

    [Fact]
    public void Gap_at_the_start_of_the_data_block_is_SafetensorsOffsetsInvalid()
    {
        OpenFails(Header("""{"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}"""), EightBytes, DareErrorId.SafetensorsOffsetsInvalid, tensor: "w");
    }

    [Theory]
    [InlineData(1)]
    [InlineData(8)]
    [InlineData(4096)]
    public void Data_block_longer_than_the_tensors_cover_is_SafetensorsOffsetsInvalid(int extra)
    {
        OpenFails(Header(), EightBytes.Concat(new byte[extra]).ToArray(), DareErrorId.SafetensorsOffsetsInvalid);
    }

    [Fact]
    public void Data_after_a_header_with_no_tensors_is_SafetensorsOffsetsInvalid()
    {
        OpenFails("""{"__metadata__": {"format": "pt"}}""", EightBytes, DareErrorId.SafetensorsOffsetsInvalid);
    }

    [Theory]
    [InlineData("F32", "[2]", "[0, 4]")]     // needs 8 bytes
    [InlineData("F32", "[1]", "[0, 8]")]     // needs 4
    [InlineData("BF16", "[2]", "[0, 8]")]    // needs 4
    [InlineData("F64", "[2]", "[0, 8]")]     // needs 16
    [InlineData("U8", "[2, 2]", "[0, 8]")]   // needs 4
    [InlineData("F32", "[0]", "[0, 8]")]     // needs 0
    [InlineData("F32", "[]", "[0, 8]")]      // a scalar needs 4
    public void Byte_length_other_than_shape_times_element_size_is_SafetensorsOffsetsInvalid(string dtype, string shape, string offsets)
    {
        var end = int.Parse(offsets.Split(',')[1].TrimEnd(']'));
        OpenFails(Header($$"""{"dtype": "{{dtype}}", "shape": {{shape}}, "data_offsets": {{offsets}}}"""), new byte[end],
            DareErrorId.SafetensorsOffsetsInvalid, tensor: "w");
    }

    [Fact]
    public void Duplicate_tensor_names_in_one_header_are_SafetensorsDuplicateTensor()
    {
        // Both entries are individually valid and together tile the 16-byte block.
        OpenFails("""{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}""",
            new byte[16], DareErrorId.SafetensorsDuplicateTensor, tensor: "w");
    }

    [Fact]
    public void Duplicate_metadata_in_one_header_is_refused()
    {
        var ex = Assert.Throws<DareException>(() => Checkpoint.Open(RawSafetensors.WriteFile(_temp["dup-meta.safetensors"],
            """{"__metadata__": {"a": "1"}, "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "__metadata__": {"a": "2"}}""", EightBytes)));
        Assert.Equal(DareErrorKind.InvalidData, ex.Kind);
    }

    [Fact]
    public void A_malformed_file_inside_a_model_folder_is_reported_with_that_files_path()
    {
        var folder = _temp.CreateFolder("model");
        var path = Path.Combine(folder, "model.safetensors");
        File.WriteAllBytes(path, RawSafetensors.Assemble(Header("""{"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}"""), EightBytes));
        var ex = Assert.Throws<DareException>(() => Checkpoint.Open(folder));
        Assert.Equal(DareErrorId.SafetensorsOffsetsInvalid, ex.ErrorId);
        Assert.Equal(path, ex.FilePath);
        Assert.Equal("w", ex.TensorName);
    }
}
