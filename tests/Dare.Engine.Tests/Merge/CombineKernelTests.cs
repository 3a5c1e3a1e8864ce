using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using Dare.Engine.Merge;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace Dare.Engine.Tests.Merge;

/// <summary>
/// The combine kernels write the export's bytes themselves (sum, base addition, bfloat16 rounding) in place of torch's
/// mul_/add_/copy_; they must give the same bits as those torch ops, and as the rounding rule worked by hand.
/// </summary>
public sealed class CombineKernelTests
{
    public CombineKernelTests() => TorchRuntime.EnsureInitialized();

    [Theory]
    [InlineData(0x3F800000u, (ushort)0x3F80)] // 1.0
    [InlineData(0x3F808000u, (ushort)0x3F80)] // exactly halfway, even stays
    [InlineData(0x3F818000u, (ushort)0x3F82)] // exactly halfway, odd rounds up
    [InlineData(0x3F808001u, (ushort)0x3F81)] // just above halfway
    [InlineData(0xBF807FFFu, (ushort)0xBF80)] // just below halfway, negative
    [InlineData(0x7F7FFFFFu, (ushort)0x7F80)] // largest float rounds to infinity
    [InlineData(0xFF800000u, (ushort)0xFF80)] // −infinity
    [InlineData(0x00000001u, (ushort)0x0000)] // smallest denormal rounds to zero
    [InlineData(0x80000000u, (ushort)0x8000)] // −0
    [InlineData(0x7FC00000u, (ushort)0xFFFF)] // NaN, either sign, as torch writes it
    [InlineData(0xFFC00001u, (ushort)0xFFFF)]
    public void Bfloat16_rounding_is_to_nearest_even_worked_by_hand(uint bits, ushort expected)
    {
        var value = BitConverter.UInt32BitsToSingle(bits);
        Assert.Equal(expected, CombineKernels.ToBFloat16(value));
        var lanes = CombineKernels.ToBFloat16(Vector256.Create(value));
        for (var lane = 0; lane < 8; lane++) Assert.Equal(expected, lanes.GetElement(lane));
    }

    private static float[] Awkward(Random random, int count) => Enumerable.Range(0, count).Select(i => i % 97 switch
    {
        0 => float.NaN,
        1 => float.PositiveInfinity,
        2 => -0f,
        3 => 1e-41f,
        4 => BitConverter.UInt32BitsToSingle(0x3F808000u), // a bfloat16 rounding tie
        _ => (float)((random.NextDouble() - 0.5) * Math.Pow(2, random.Next(-12, 2))),
    }).ToArray();

    private static ushort[] BFloat16Bits(Tensor t) => MemoryMarshal.Cast<byte, ushort>(t.bytes).ToArray();

    private static unsafe void WithPinned(float[][] arrays, Action<IntPtr[]> action)
    {
        var handles = arrays.Select(a => GCHandle.Alloc(a, GCHandleType.Pinned)).ToArray();
        try { action(handles.Select(h => h.AddrOfPinnedObject()).ToArray()); }
        finally { foreach (var handle in handles) handle.Free(); }
    }

    [Theory]
    [InlineData(1, 1.0, 1)]
    [InlineData(3, 1.0, 4099)]
    [InlineData(3, 0.6, 200_003)]
    [InlineData(2, 2.5, 15)]
    public unsafe void Linear_into_bfloat16_with_the_base_matches_torch_ops(int models, double scale, int count)
    {
        var random = new Random(models * 1000 + count);
        var deltas = Enumerable.Range(0, models).Select(_ => Awkward(random, count)).ToArray();
        var baseValues = Awkward(random, count);
        var weights = Enumerable.Range(0, models).Select(i => (float)(0.3 + 0.45 * i)).ToArray();

        // torch: sum = δ₀·w₀; sum += wᵢ·δᵢ; sum ·= scale; base + sum → bfloat16.
        using var sum = tensor(deltas[0]).mul_(weights[0]);
        for (var i = 1; i < models; i++) sum.add_(tensor(deltas[i]), alpha: weights[i]);
        if (scale != 1.0) sum.mul_(scale);
        using var expected = zeros(new long[] { count }, ScalarType.BFloat16).copy_(tensor(baseValues).add_(sum));

        var output = new ushort[count];
        WithPinned(deltas.Append(baseValues).ToArray(), pointers =>
        {
            fixed (ushort* o = output)
            {
                var target = new CombineTarget((float*)pointers[^1], o, bfloat16: true);
                CombineKernels.Linear(pointers[..^1], weights, scale == 1.0 ? null : (float)scale, target, count);
            }
        });

        Assert.Equal(BFloat16Bits(expected), output);
    }

    [Fact]
    public unsafe void Linear_in_place_gives_the_float32_sum_torch_gives()
    {
        var random = new Random(3);
        const int count = 70_001;
        var deltas = Enumerable.Range(0, 3).Select(_ => Awkward(random, count)).ToArray();
        var weights = new[] { 1f, 0.5f, 2f };
        using var sum = tensor(deltas[0]).mul_(weights[0]).add_(tensor(deltas[1]), alpha: weights[1]).add_(tensor(deltas[2]), alpha: weights[2]).mul_(1.0 / 3.5);
        var expected = sum.data<float>().ToArray();

        WithPinned(deltas, pointers => CombineKernels.Linear(pointers, weights, (float)(1.0 / 3.5), CombineTarget.InPlace((float*)pointers[0]), count));

        Assert.Equal(expected.Select(BitConverter.SingleToUInt32Bits), deltas[0].Select(BitConverter.SingleToUInt32Bits));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public unsafe void Ties_into_bfloat16_with_the_base_equals_the_float32_result_added_and_converted_by_torch(bool bySignCount)
    {
        var random = new Random(bySignCount ? 5 : 6);
        const int count = 33_333;
        var deltas = Enumerable.Range(0, 3).Select(_ => Awkward(random, count)).ToArray();
        var baseValues = Awkward(random, count);
        var weights = new[] { 1.0, 0.5, 2.0 };

        var merged = (float[][])deltas.Select(d => (float[])d.Clone()).ToArray();
        WithPinned(merged, pointers => CombineKernels.Ties(pointers, weights, new uint[3], new long[]?[3], bySignCount, normalize: true, lambda: 0.9, CombineTarget.InPlace((float*)pointers[0]), count));
        using var expected = zeros(new long[] { count }, ScalarType.BFloat16).copy_(tensor(baseValues).add_(tensor(merged[0])));

        var output = new ushort[count];
        WithPinned(deltas.Append(baseValues).ToArray(), pointers =>
        {
            fixed (ushort* o = output)
            {
                CombineKernels.Ties(pointers[..^1], weights, new uint[3], new long[]?[3], bySignCount, normalize: true, lambda: 0.9, new CombineTarget((float*)pointers[^1], o, bfloat16: true), count);
            }
        });

        Assert.Equal(BFloat16Bits(expected), output);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public unsafe void Thresholds_in_the_ties_combine_equal_zeroing_below_them_first(bool bySignCount)
    {
        var random = new Random(bySignCount ? 8 : 9);
        const int count = 10_007;
        var deltas = Enumerable.Range(0, 3).Select(_ => Awkward(random, count)).ToArray();
        var weights = new[] { 0.7, 1.0, 1.3 };
        var keepBits = new[] { BitConverter.SingleToUInt32Bits(0.004f), 0u, uint.MaxValue };

        var zeroed = deltas.Select((d, i) => d.Select(x => (BitConverter.SingleToUInt32Bits(x) & 0x7FFFFFFF) < keepBits[i] ? 0f : x).ToArray()).ToArray();
        WithPinned(zeroed, pointers => CombineKernels.Ties(pointers, weights, new uint[3], new long[]?[3], bySignCount, normalize: true, lambda: 1.1, CombineTarget.InPlace((float*)pointers[0]), count));
        WithPinned(deltas, pointers => CombineKernels.Ties(pointers, weights, keepBits, new long[]?[3], bySignCount, normalize: true, lambda: 1.1, CombineTarget.InPlace((float*)pointers[0]), count));

        Assert.Equal(zeroed[0].Select(BitConverter.SingleToUInt32Bits), deltas[0].Select(BitConverter.SingleToUInt32Bits));
    }

    // Each vector body by name (the enum is internal), with one to five inputs.
    public static TheoryData<string, int> BodiesAndInputCounts()
    {
        var data = new TheoryData<string, int>();
        foreach (var body in Enum.GetNames<TiesVectorBody>())
        {
            for (var inputs = 1; inputs <= 5; inputs++) data.Add(body, inputs);
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(BodiesAndInputCounts))]
    public unsafe void Ties_by_sum_in_each_vector_body_gives_the_bits_of_the_algorithm_written_out(string body, int inputs)
    {
        var random = new Random(21 + inputs);
        const int count = 4099; // a scalar tail after the vectors at both widths
        var deltas = Enumerable.Range(0, inputs).Select(_ => Enumerable.Range(0, count).Select(j => j % 13 == 0 ? 0f : j % 29 == 0 ? 1e-41f
            : (float)((random.NextDouble() - 0.5) * Math.Pow(2, random.Next(-12, 2)))).ToArray()).ToArray();
        var weights = Enumerable.Range(0, inputs).Select(i => 0.7 + 0.3 * i).ToArray();
        var expected = Reference.Ties(deltas, weights, weights.Select(_ => 1.0).ToArray(), normalize: true, lambda: 0.9).Select(v => BitConverter.SingleToUInt32Bits((float)v)).ToArray();

        WithPinned(deltas, pointers => CombineKernels.Ties(pointers, weights, new uint[inputs], new long[]?[inputs], false, normalize: true, lambda: 0.9,
            CombineTarget.InPlace((float*)pointers[0]), count, Enum.Parse<TiesVectorBody>(body)));

        Assert.Equal(expected, deltas[0].Select(BitConverter.SingleToUInt32Bits));
    }

    [Theory]
    [MemberData(nameof(BodiesAndInputCounts))]
    public unsafe void Tie_budgets_in_the_ties_combine_keep_each_ranges_first_ties_and_zero_the_rest(string body, int inputs)
    {
        var random = new Random(10 + inputs);
        const int count = 300_007; // more than one parallel range on a multi-core machine
        var deltas = Enumerable.Range(0, inputs).Select(_ => Enumerable.Range(0, count).Select(_ => (random.Next(2) == 0 ? -1 : 1) * random.Next(0, 9) / 8f).ToArray()).ToArray();
        var weights = Enumerable.Range(0, inputs).Select(i => 1.0 + 0.2 * (i % 3 - 1)).ToArray();
        // Input i by i mod 4: ties kept up to a budget in each range; none kept; all kept (no budgets); the largest threshold, nothing kept.
        var thresholds = Enumerable.Range(0, inputs).Select(i => (i % 4) switch
        {
            0 => BitConverter.SingleToUInt32Bits(0.5f),
            1 => BitConverter.SingleToUInt32Bits(0.25f),
            2 => 0u,
            _ => uint.MaxValue,
        }).ToArray();
        var ranges = Partition.Ranges(count);
        var budgets = Enumerable.Range(0, inputs).Select(i => (i % 4) switch
        {
            0 => ranges.Select((_, r) => (long)(100 * r + 7)).ToArray(),
            1 or 3 => ranges.Select(_ => 0L).ToArray(),
            _ => null,
        }).ToArray();

        // The trim written out: per range, keep |x| above the threshold and the first budget ties; zero the rest.
        var trimmed = deltas.Select((d, i) =>
        {
            var copy = (float[])d.Clone();
            for (var r = 0; r < ranges.Length; r++)
            {
                var left = budgets[i]?[r] ?? long.MaxValue;
                for (var j = ranges[r].Start; j < ranges[r].End; j++)
                {
                    var magnitude = BitConverter.SingleToUInt32Bits(copy[j]) & 0x7FFFFFFF;
                    if (magnitude > thresholds[i]) continue;
                    if (magnitude == thresholds[i] && left > 0) left--;
                    else copy[j] = 0f;
                }
            }
            return copy;
        }).ToArray();
        var expected = Reference.Ties(trimmed, weights, weights.Select(_ => 1.0).ToArray(), normalize: true, lambda: 1.0).Select(v => BitConverter.SingleToUInt32Bits((float)v)).ToArray();
        WithPinned(deltas, pointers => CombineKernels.Ties(pointers, weights, thresholds, budgets, false, normalize: true, lambda: 1.0, CombineTarget.InPlace((float*)pointers[0]), count, Enum.Parse<TiesVectorBody>(body)));

        Assert.Equal(expected, deltas[0].Select(BitConverter.SingleToUInt32Bits));
    }

    [Theory]
    [InlineData(nameof(TiesVectorBody.Fastest))]
    [InlineData(nameof(TiesVectorBody.EightLanes))]
    [InlineData(nameof(TiesVectorBody.EightLanesFewInputs))]
    [InlineData(nameof(TiesVectorBody.SixteenLanes))]
    [InlineData(nameof(TiesVectorBody.SixteenLanesFewInputs))]
    public unsafe void A_tie_budget_that_runs_out_in_the_scalar_tail_or_outlasts_the_ties_keeps_the_first_ties(string body)
    {
        // One range of 1,005 elements: 62 vectors of 16 then a scalar tail from element 992, or 125 of 8 and a tail from 1,000.
        const int count = 1005;
        const float tie = 0.5f;
        var tiesAt = new[] { 3, 17, 500, 991, 993, 1000, 1004 }; // of opposite signs in input 2, so that keeping one too many shows
        var deltas = Enumerable.Range(0, 3).Select(i => Enumerable.Range(0, count).Select(j => tiesAt.Contains(j) ? ((j + i / 2) % 2 == 0 ? tie : -tie) : j % 7 == i ? 0.75f : 0.25f).ToArray()).ToArray();
        // Input 0's budget runs out at its 5th tie (element 993), input 1's outlasts its 7 ties, input 2's runs out at the 6th (element 1,000).
        var budgets = new long[]?[] { new[] { 5L }, new[] { 100L }, new[] { 6L } };
        var threshold = BitConverter.SingleToUInt32Bits(tie);
        var weights = new[] { 1.0, 0.5, 2.0 };

        var trimmed = deltas.Select((d, i) =>
        {
            var left = budgets[i]![0];
            return d.Select(x => Math.Abs(x) > tie ? x : Math.Abs(x) == tie && left-- > 0 ? x : 0f).ToArray();
        }).ToArray();
        Assert.Equal(tiesAt.Take(5).Select(j => deltas[0][j]), tiesAt.Take(5).Select(j => trimmed[0][j]));
        Assert.Equal(new[] { 0f, 0f }, tiesAt.Skip(5).Select(j => trimmed[0][j]));
        var expected = Reference.Ties(trimmed, weights, new[] { 1.0, 1.0, 1.0 }, normalize: true, lambda: 1.0).Select(v => BitConverter.SingleToUInt32Bits((float)v)).ToArray();
        WithPinned(deltas, pointers => CombineKernels.Ties(pointers, weights, new[] { threshold, threshold, threshold }, budgets, false, normalize: true, lambda: 1.0,
            CombineTarget.InPlace((float*)pointers[0]), count, Enum.Parse<TiesVectorBody>(body)));

        Assert.Equal(expected, deltas[0].Select(BitConverter.SingleToUInt32Bits));
    }
}
