using Dare.Engine.Safetensors;
using TorchSharp;
using Xunit;

namespace Dare.Engine.Tests.Safetensors;

/// <summary>Known tensors of every dtype, encoded by <see cref="RawData"/>, and helpers to compare what the engine reads.</summary>
public static class Samples
{
    public static readonly float[] F32Values = { 1.5f, -2.25f, 0f, -0f, float.Epsilon, float.MaxValue, float.NegativeInfinity, 3.1415927f };
    public static readonly double[] F64Values = { Math.PI, -1e-300, 1e300, double.Epsilon, -0.0, 42 };
    public static readonly Half[] F16Values = { (Half)1.5f, (Half)(-0.333f), Half.MaxValue, Half.Epsilon, (Half)65504f, (Half)0f };
    public static readonly ushort[] BF16Bits = { 0x3FC0 /* 1.5 */, 0xC010 /* -2.25 */, 0x0001 /* subnormal */, 0x7F7F /* max */, 0x8000 /* -0 */, 0x4049 /* 3.140625 */ };
    public static readonly long[] I64Values = { long.MinValue, -1, 0, 1, long.MaxValue, 1L << 40 };
    public static readonly int[] I32Values = { int.MinValue, -7, 0, 7, int.MaxValue, 123456 };
    public static readonly short[] I16Values = { short.MinValue, -3, 0, 3, short.MaxValue, 1000 };
    public static readonly sbyte[] I8Values = { sbyte.MinValue, -1, 0, 1, sbyte.MaxValue, 42 };
    public static readonly byte[] U8Values = { 0, 1, 127, 128, 254, 255 };
    public static readonly bool[] BoolValues = { true, false, false, true, true, false };
    public static readonly byte[] F8E4M3Bytes = { 0x00, 0x38, 0x7E, 0xFE, 0x80, 0x01 };
    public static readonly byte[] F8E5M2Bytes = { 0x3C, 0xBC, 0x7B, 0x04, 0xFF, 0x00 };

    /// <summary>One tensor of each of the 12 dtypes, with assorted shapes (including a scalar and a 3-D one).</summary>
    public static IReadOnlyList<RawTensor> AllDTypes() => new[]
    {
        new RawTensor("f32", "F32", new long[] { 2, 4 }, RawData.F32(F32Values)),
        new RawTensor("f64", "F64", new long[] { 3, 2 }, RawData.F64(F64Values)),
        new RawTensor("f16", "F16", new long[] { 6 }, RawData.F16(F16Values)),
        new RawTensor("bf16", "BF16", new long[] { 2, 3 }, RawData.BF16Bits(BF16Bits)),
        new RawTensor("i64", "I64", new long[] { 1, 2, 3 }, RawData.I64(I64Values)),
        new RawTensor("i32", "I32", new long[] { 6 }, RawData.I32(I32Values)),
        new RawTensor("i16", "I16", new long[] { 3, 2 }, RawData.I16(I16Values)),
        new RawTensor("i8", "I8", new long[] { 6 }, RawData.I8(I8Values)),
        new RawTensor("u8", "U8", new long[] { 2, 3 }, RawData.U8(U8Values)),
        new RawTensor("bool", "BOOL", new long[] { 6 }, RawData.Bool(BoolValues)),
        new RawTensor("fp8_e4m3", "F8_E4M3", new long[] { 2, 3 }, F8E4M3Bytes.ToArray()),
        new RawTensor("fp8_e5m2", "F8_E5M2", new long[] { 3, 2 }, F8E5M2Bytes.ToArray()),
    };

    /// <summary>A small "model": a few BF16 and F32 tensors with distinct pseudo-random bytes.</summary>
    public static IReadOnlyList<RawTensor> SmallModel(int layers = 3)
    {
        var tensors = new List<RawTensor> { new("model.embed_tokens.weight", "BF16", new long[] { 16, 8 }, RawData.Random(16 * 8 * 2, 1)) };
        for (var layer = 0; layer < layers; layer++)
        {
            tensors.Add(new($"model.layers.{layer}.self_attn.q_proj.weight", "BF16", new long[] { 8, 8 }, RawData.Random(8 * 8 * 2, 100 + layer)));
            tensors.Add(new($"model.layers.{layer}.mlp.up_proj.weight", "BF16", new long[] { 12, 8 }, RawData.Random(12 * 8 * 2, 200 + layer)));
            tensors.Add(new($"model.layers.{layer}.input_layernorm.weight", "F32", new long[] { 8 }, RawData.Random(8 * 4, 300 + layer)));
        }
        tensors.Add(new("lm_head.weight", "BF16", new long[] { 16, 8 }, RawData.Random(16 * 8 * 2, 2)));
        return tensors;
    }

    public static byte[] Bytes(torch.Tensor tensor) => tensor.bytes.ToArray();

    /// <summary>Reads a tensor through the engine and asserts dtype, shape and bytes equal what the independent writer wrote.</summary>
    public static void AssertReadsBack(TensorReader reader, TensorInfo info, RawTensor expected)
    {
        Assert.Equal(expected.Name, info.Name);
        Assert.Equal(expected.DType, info.DType.ToString());
        Assert.Equal(expected.Shape, info.Shape);
        Assert.Equal(expected.Data.Length, info.ByteLength);
        using var tensor = reader.Read(info);
        var fp8 = expected.DType.StartsWith("F8_", StringComparison.Ordinal);
        Assert.Equal(fp8 ? new long[] { expected.Data.Length } : expected.Shape, tensor.shape);
        Assert.Equal(expected.Data, Bytes(tensor));
    }
}
