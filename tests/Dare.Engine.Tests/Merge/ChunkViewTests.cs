using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using Xunit;
using static TorchSharp.torch;

namespace Dare.Engine.Tests.Merge;

/// <summary>
/// The CPU path's element-wise operations on <see cref="ChunkView"/> replaced torch ops (to_type, copy_, mul_ with a
/// scalar, sub_, add_); outputs stay byte for byte the same only if they round exactly as torch does. Each is checked
/// against torch itself on values with the awkward cases: ±0, subnormals, ties to even, overflow, infinities and every
/// float16 bit pattern.
/// </summary>
public sealed unsafe class ChunkViewTests : IDisposable
{
    private readonly ChunkWorkspace _workspace = new();

    public ChunkViewTests() => TorchRuntime.EnsureInitialized();

    public void Dispose() => _workspace.Dispose();

    /// <summary>Floats of every kind: signed zeros, subnormals, infinities, values at float16's and bfloat16's rounding ties and range ends.</summary>
    private static float[] AwkwardFloats(int count)
    {
        var random = new Random(12);
        var specials = new[]
        {
            0f, -0f, float.Epsilon, -float.Epsilon, 1e-40f, 65504f, 65520f, 65519.99f, -65536f, 6.1e-5f, 5.96e-8f, 2.98e-8f, 3e-8f,
            1.00048828125f, 1.00146484375f, 1.0009765625f, 1.00390625f, 1.005859375f, 3.4e38f, -3.4e38f, float.MaxValue,
            float.PositiveInfinity, float.NegativeInfinity,
        };
        return Enumerable.Range(0, count).Select(i => i < specials.Length ? specials[i]
            : (float)((random.NextDouble() * 2 - 1) * Math.Pow(2, random.Next(-30, 30)))).ToArray();
    }

    private ChunkView Floats(float[] values, int slot = 0)
    {
        var view = _workspace.Floats(slot, values.Length);
        values.AsSpan().CopyTo(new Span<float>(view.Floats, values.Length));
        return view;
    }

    private static byte[] Bytes(ChunkView view) => new ReadOnlySpan<byte>(view.Data, (int)view.ByteLength).ToArray();

    private static byte[] Bytes(Tensor tensor) => tensor.bytes.ToArray();

    private static Tensor FloatTensor(float[] values) => tensor(values);

    [Theory]
    [InlineData(SafetensorsDType.F16)]
    [InlineData(SafetensorsDType.BF16)]
    [InlineData(SafetensorsDType.F64)]
    public void Narrowing_float32_rounds_as_torch_to_type(SafetensorsDType type)
    {
        var values = AwkwardFloats(4099);
        var view = _workspace.NextOutput(type, values.Length).CopyFrom(Floats(values));
        using var source = FloatTensor(values);
        using var expected = source.to_type(type.ToScalarType());
        Assert.Equal(Bytes(expected), Bytes(view));
    }

    [Fact]
    public void Widening_every_float16_bit_pattern_matches_torch()
    {
        using var scope = NewDisposeScope();
        var patterns = Enumerable.Range(0, 1 << 16).Select(i => (short)i).ToArray();
        var raw = _workspace.Staging(patterns.Length * 2L);
        fixed (short* p = patterns) Buffer.MemoryCopy(p, raw.Data, raw.ByteLength, raw.ByteLength);
        using var stored = empty(new long[] { patterns.Length }, ScalarType.Float16);
        Buffer.MemoryCopy(raw.Data, TensorMemory.Pointer(stored), raw.ByteLength, raw.ByteLength);
        var widened = _workspace.Floats(0, patterns.Length).CopyFrom(new ChunkView(raw.Data, patterns.Length, SafetensorsDType.F16));
        using var expected = stored.to_type(ScalarType.Float32);
        Assert.Equal(Bytes(expected), Bytes(widened));
    }

    [Fact]
    public void Widening_float64_rounds_as_torch()
    {
        using var scope = NewDisposeScope();
        var random = new Random(3);
        var values = Enumerable.Range(0, 1027).Select(i => i == 0 ? 1e300 : i == 1 ? 1.0000000596046448 : (random.NextDouble() - 0.5) * Math.Pow(2, random.Next(-140, 120))).ToArray();
        var raw = _workspace.Staging(values.Length * 8L);
        fixed (double* p = values) Buffer.MemoryCopy(p, raw.Data, raw.ByteLength, raw.ByteLength);
        var widened = _workspace.Floats(0, values.Length).CopyFrom(new ChunkView(raw.Data, values.Length, SafetensorsDType.F64));
        using var expected = tensor(values).to_type(ScalarType.Float32);
        Assert.Equal(Bytes(expected), Bytes(widened));
    }

    [Theory]
    [InlineData(0.1)]
    [InlineData(1.0 / 3.0)]
    [InlineData(1.0000000596046448)] // halfway between two floats: the factor is rounded to float before multiplying
    [InlineData(12345.678901234)]
    public void Scaling_rounds_as_torch_mul_with_a_double_scalar(double factor)
    {
        using var scope = NewDisposeScope();
        var values = AwkwardFloats(1031);
        var scaled = Floats(values).Scale(factor);
        using var expected = FloatTensor(values).mul_(factor);
        Assert.Equal(Bytes(expected), Bytes(scaled));
    }

    [Fact]
    public void Subtracting_and_adding_match_torch_including_a_bfloat16_addend()
    {
        using var scope = NewDisposeScope();
        var a = AwkwardFloats(1029);
        var b = AwkwardFloats(1029).Reverse().ToArray();
        var difference = Floats(a).Subtract(Floats(b, slot: 1));
        using var expectedDifference = FloatTensor(a).sub_(FloatTensor(b));
        Assert.Equal(Bytes(expectedDifference), Bytes(difference));

        var bits = _workspace.Raw(2, b.Length).CopyFrom(Floats(b, slot: 1));
        var sum = Floats(a).Add(bits);
        using var expectedSum = FloatTensor(b).to_type(ScalarType.BFloat16).to_type(ScalarType.Float32).add_(FloatTensor(a));
        Assert.Equal(Bytes(expectedSum), Bytes(sum));
    }

    [Fact]
    public void Views_check_their_type_length_and_bounds()
    {
        var view = _workspace.Floats(0, 10);
        Assert.Throws<InvalidOperationException>(() => (IntPtr)view.BFloat16Bits);
        Assert.Throws<ArgumentOutOfRangeException>(() => view.Slice(8, 3));
        Assert.Equal(3, view.Slice(7, 3).Count);
        Assert.Throws<ArgumentException>(() => view.Add(_workspace.Floats(1, 9)));
        Assert.Throws<InvalidOperationException>(() => view.AsTensor());
    }
}
