using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace Dare.Engine.Tests.Merge;

/// <summary>
/// The executor's C# kernels replace torch ops and scalar loops; they must give the same bits. Checked here against
/// the torch ops (bf16 → f32, f32 − f32) and the scalar loops they stand in for, on data with the awkward cases:
/// ±0, denormals, infinities, NaN, runs of equal magnitudes, lengths that are not a multiple of the vector width.
/// </summary>
public sealed class ChunkKernelTests
{
    public ChunkKernelTests() => TorchRuntime.EnsureInitialized();

    private static ushort[] AwkwardBf16(Random random, int count)
    {
        var specials = new ushort[] { 0x0000, 0x8000, 0x0001, 0x807F, 0x7F80, 0xFF80, 0x7FC0, 0xFFC1, 0x3F80, 0xBF80 };
        return Enumerable.Range(0, count).Select(i => i % 7 == 0 ? specials[random.Next(specials.Length)] : (ushort)random.Next(0x3000, 0x3D00) | (ushort)(random.Next(2) << 15))
            .Select(v => (ushort)v).ToArray();
    }

    private static uint Bits(float value) => BitConverter.SingleToUInt32Bits(value);

    private static unsafe Tensor Bf16Tensor(ushort[] bits)
    {
        var result = empty(new long[] { bits.Length }, ScalarType.BFloat16);
        fixed (ushort* source = bits) Buffer.MemoryCopy(source, TensorMemory.Pointer(result), bits.Length * 2L, bits.Length * 2L);
        return result;
    }

    [Fact]
    public unsafe void Widening_bf16_matches_torch_for_every_bit_pattern()
    {
        var all = Enumerable.Range(0, 1 << 16).Select(i => (ushort)i).ToArray();
        var mine = new float[all.Length];
        fixed (ushort* source = all)
        fixed (float* destination = mine)
        {
            ChunkKernels.WidenBFloat16(source, destination, all.Length);
        }
        using var stored = Bf16Tensor(all);
        using var widened = stored.to_type(ScalarType.Float32);
        var expected = widened.data<float>().ToArray();
        for (var i = 0; i < all.Length; i++) Assert.Equal(Bits(expected[i]), Bits(mine[i]));
    }

    [Theory]
    [InlineData(1, false)]
    [InlineData(13, true)]
    [InlineData(8191, true)]
    [InlineData(300_017, false)]
    [InlineData(300_017, true)]
    public unsafe void Fused_delta_and_mask_match_torch_subtraction_then_DareMask(int count, bool dare)
    {
        var random = new Random(count);
        var tuned = AwkwardBf16(random, count);
        var baseBits = AwkwardBf16(random, count);
        using var baseStored = Bf16Tensor(baseBits);
        using var tunedStored = Bf16Tensor(tuned);
        using var baseTensor = baseStored.to_type(ScalarType.Float32);
        using var tunedTensor = tunedStored.to_type(ScalarType.Float32);
        using var torchDelta = tunedTensor.sub(baseTensor);
        var expected = torchDelta.data<float>().ToArray();
        var key = DareMask.Key(42, 1, "model.layers.0.mlp.up_proj.weight");
        var threshold = DareMask.Threshold(0.9);
        const long first = (1L << 32) - 5000; // straddles a 2^32 block boundary of the mask
        long expectedDropped = 0;
        if (dare)
        {
            fixed (float* e = expected) expectedDropped = DareMask.Apply(e, first, count, key, threshold, 10f);
        }

        var baseValues = baseTensor.data<float>().ToArray();
        var delta = new float[count];
        var deltaOverBFloat16Base = new float[count];
        long dropped, droppedOverBFloat16Base;
        fixed (ushort* t = tuned)
        fixed (ushort* bb = baseBits)
        fixed (float* b = baseValues)
        fixed (float* d = delta)
        fixed (float* db = deltaOverBFloat16Base)
        {
            // The kernel reads the fine-tuned values piece by piece; here they are in memory already.
            using var stored = new StoredRange(new TensorInfo("t", SafetensorsDType.BF16, new long[] { count }, "memory", 0, count * 2L), 0, count, (byte*)t, owned: false);
            dropped = ChunkKernels.WidenSubtractMask(stored, b, d, first, count, dare, key, threshold, 10f);
            droppedOverBFloat16Base = ChunkKernels.WidenSubtractMask(stored, bb, db, first, count, dare, key, threshold, 10f);
        }

        Assert.Equal(expectedDropped, dropped);
        Assert.Equal(expectedDropped, droppedOverBFloat16Base);
        for (var i = 0; i < count; i++)
        {
            // NaN − NaN may pick either operand's payload depending on the instruction; any NaN is the same value.
            if (float.IsNaN(expected[i]))
            {
                Assert.True(float.IsNaN(delta[i]), $"element {i}");
                Assert.True(float.IsNaN(deltaOverBFloat16Base[i]), $"element {i}, base in bfloat16");
            }
            else
            {
                Assert.Equal(Bits(expected[i]), Bits(delta[i]));
                Assert.Equal(Bits(expected[i]), Bits(deltaOverBFloat16Base[i]));
            }
        }
    }

    /// <summary>The scalar TIES combine (sign by sum), as MergeExecutor.TiesCombine runs it.</summary>
    private static float ScalarTies(float[][] inputs, double[] weights, bool normalize, double lambda, int j)
    {
        double election = 0;
        for (var i = 0; i < inputs.Length; i++) election += weights[i] * inputs[i][j];
        var positive = election >= 0;
        double sum = 0, weight = 0;
        for (var i = 0; i < inputs.Length; i++)
        {
            var x = inputs[i][j];
            if (positive ? x > 0 : x < 0)
            {
                sum += weights[i] * x;
                weight += weights[i];
            }
        }
        var merged = normalize ? (weight != 0 ? sum / weight : 0) : sum;
        return (float)(merged * lambda);
    }

    [Theory]
    [InlineData(3, true, 1.0)]
    [InlineData(3, false, 0.7)]
    [InlineData(1, true, -1.5)]
    [InlineData(5, true, 1.0)]
    public unsafe void Vectorised_ties_combine_matches_the_scalar_loop(int models, bool normalize, double lambda)
    {
        var random = new Random(models * 31 + (normalize ? 1 : 0));
        const int count = 4099;
        var inputs = Enumerable.Range(0, models).Select(_ => Enumerable.Range(0, count).Select(j =>
            j % 5 == 0 ? 0f : j % 11 == 0 ? -0f : j % 13 == 0 ? 1e-40f : j % 17 == 0 ? float.PositiveInfinity : (float)(random.NextDouble() - 0.5)).ToArray()).ToArray();
        var weights = Enumerable.Range(0, models).Select(i => i == 1 ? 0.0 : i == 2 ? -0.5 : 0.3 + i).ToArray();
        var output = new float[count];
        var handles = inputs.Select(a => System.Runtime.InteropServices.GCHandle.Alloc(a, System.Runtime.InteropServices.GCHandleType.Pinned)).ToArray();
        try
        {
            fixed (float* o = output)
            {
                // One range (under 64K elements): the vector body up to the last whole vector, then the scalar tail.
                CombineKernels.Ties(handles.Select(h => h.AddrOfPinnedObject()).ToArray(), weights, new uint[models], new long[]?[models], bySignCount: false, normalize, lambda,
                    new CombineTarget(null, o, bfloat16: false), count);
            }
        }
        finally
        {
            foreach (var handle in handles) handle.Free();
        }

        for (var j = 0; j < count; j++)
        {
            var expected = ScalarTies(inputs, weights, normalize, lambda, j);
            if (float.IsNaN(expected)) Assert.True(float.IsNaN(output[j]), $"element {j}");
            else Assert.Equal(Bits(expected), Bits(output[j]));
        }
    }

    [Theory]
    [InlineData(0.5, 1)]
    [InlineData(0.5, 3)]
    [InlineData(0.05, 2)]
    public unsafe void Selection_over_long_ranges_with_runs_of_zeros_equals_the_sorted_selection(double keepRatio, int pieceCount)
    {
        // Long enough that each parallel range counts into the interleaved tables; 90 % zeros as after DARE p = 0.9.
        const int n = 2_600_011;
        var random = new Random(5);
        var data = Enumerable.Range(0, n).Select(_ => random.NextDouble() < 0.9 ? (random.Next(3) == 0 ? -0f : 0f) : (float)((random.Next(40) - 20) * 1e-3)).ToArray();
        var keep = (long)Math.Ceiling(keepRatio * n);

        var expected = new float[n];
        foreach (var i in Enumerable.Range(0, n).OrderByDescending(i => Math.Abs(data[i])).ThenBy(i => i).Take((int)keep)) expected[i] = data[i];

        var trimmed = (float[])data.Clone();
        var selection = new MagnitudeSelection(keep, n);
        var bounds = Enumerable.Range(0, pieceCount + 1).Select(p => (int)((long)n * p / pieceCount)).ToArray();
        fixed (float* pinned = trimmed)
        {
            for (var p = 0; p < pieceCount; p++) selection.AddCoarse(pinned + bounds[p], bounds[p + 1] - bounds[p]);
            selection.FinishCoarse();
            for (var p = 0; p < pieceCount; p++) selection.AddFine(pinned + bounds[p], bounds[p + 1] - bounds[p]);
            selection.FinishFine();
            var tiesLeft = selection.TiesToKeep;
            for (var p = 0; p < pieceCount; p++) selection.Trim(pinned + bounds[p], bounds[p + 1] - bounds[p], ref tiesLeft);
            Assert.Equal(0, tiesLeft);
        }

        for (var i = 0; i < n; i++)
        {
            if (Bits(expected[i]) != Bits(trimmed[i])) Assert.Fail($"element {i}: expected {expected[i]} ({Bits(expected[i]):X8}), got {trimmed[i]} ({Bits(trimmed[i]):X8})");
        }
    }
}
