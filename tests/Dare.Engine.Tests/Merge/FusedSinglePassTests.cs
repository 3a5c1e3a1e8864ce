using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using Xunit;

namespace Dare.Engine.Tests.Merge;

/// <summary>
/// The fused DARE-linear and TIES single passes against their definitions written out per element (δ = tuned − base in
/// float32, the DARE mask from <see cref="DareMask.IsDropped"/>, survivors × rescale; linear: Σ wᵢ·δᵢ by fused
/// multiply-adds, × λ; TIES: the sign of Σ wᵢ·δᵢ elected and the agreeing δ averaged, in double, × λ; + base, rounded)
/// and against the block-by-block single passes they stand in for. Runs on any x64 machine: without AVX-512 their 16
/// lanes are emulated.
/// </summary>
public sealed unsafe class FusedSinglePassTests
{
    private static readonly ushort[] Specials = { 0x0000, 0x8000, 0x0001, 0x807F, 0x7F80, 0xFF80, 0x7FC0, 0x3F80, 0xBF80 };

    private static ushort[] Values(Random random, int count) => Enumerable.Range(0, count)
        .Select(i => i % 11 == 0 ? Specials[random.Next(Specials.Length)] : (ushort)(random.Next(0x3000, 0x3D00) | (random.Next(2) << 15))).ToArray();

    private static float Widen(ushort bits) => BitConverter.UInt32BitsToSingle((uint)bits << 16);

    public enum Output { BFloat16OverBase, Float32OverBase, BFloat16DeltaOnly }

    private sealed record Input(ushort[] Tuned, bool Dare, ulong Key, uint Threshold, float Scale, float Weight);

    /// <summary>Input i's δ at element j, masked (the definition).</summary>
    private static float MaskedDelta(ushort[] baseBits, Input input, long first, int j)
    {
        var delta = Widen(input.Tuned[j]) - Widen(baseBits[j]);
        if (input.Dare && !(input.Threshold == 0 && input.Scale == 1f)) delta = DareMask.IsDropped(input.Key, first + j, input.Threshold) ? 0f : delta * input.Scale;
        return delta;
    }

    /// <summary>Linear's merged δ at element j.</summary>
    private static float ExpectedLinear(ushort[] baseBits, Input[] inputs, float? lambda, long first, int j)
    {
        var sum = 0f;
        for (var i = 0; i < inputs.Length; i++)
        {
            var delta = MaskedDelta(baseBits, inputs[i], first, j);
            sum = i == 0 ? delta * inputs[i].Weight : MathF.FusedMultiplyAdd(delta, inputs[i].Weight, sum);
        }
        if (lambda is { } l) sum *= l;
        return sum;
    }

    private static CombineTarget Target(Output output, void* destination) => output switch
    {
        Output.BFloat16OverBase => CombineTarget.OverBFloat16Base(null, destination, bfloat16: true),
        Output.Float32OverBase => CombineTarget.OverBFloat16Base(null, destination, bfloat16: false),
        _ => new CombineTarget(null, destination, bfloat16: true),
    };

    /// <summary>A kernel's merge of a chunk: (base, sources, target, first, count) → drop counts, and whether the output is all finite.</summary>
    private delegate ChunkKernels.MergedChunk Kernel(StoredRange baseBits, DeltaSource[] sources, CombineTarget target, long first, long count);

    private static (uint[] Bits, long[] Dropped, bool OutputFinite) Run(Kernel kernel, ushort[] baseBits, Input[] inputs, Output output, long first)
    {
        var count = baseBits.Length;
        var result = new uint[count];
        var handles = inputs.Select(i => System.Runtime.InteropServices.GCHandle.Alloc(i.Tuned, System.Runtime.InteropServices.GCHandleType.Pinned)).ToArray();
        try
        {
            fixed (ushort* b = baseBits)
            fixed (uint* r = result)
            {
                var info = new TensorInfo("t", SafetensorsDType.BF16, new long[] { count }, "memory", 0, count * 2L);
                using var baseRange = new StoredRange(info, 0, count, (byte*)b, owned: false);
                var ranges = handles.Select(h => new StoredRange(info, 0, count, (byte*)h.AddrOfPinnedObject(), owned: false)).ToArray();
                var sources = inputs.Select((input, i) => new DeltaSource(ranges[i], input.Dare, input.Key, input.Threshold, input.Scale)).ToArray();
                var (dropped, outputFinite) = kernel(baseRange, sources, Target(output, r), first, count);
                foreach (var range in ranges) range.Dispose();
                // bfloat16 results fill the first half of the buffer's bytes: spread them to one per element.
                if (output == Output.Float32OverBase) return (result, dropped, outputFinite);
                var spread = new uint[count];
                for (var j = 0; j < count; j++) spread[j] = ((ushort*)r)[j];
                return (spread, dropped, outputFinite);
            }
        }
        finally
        {
            foreach (var handle in handles) handle.Free();
        }
    }

    /// <summary>Element counts, inputs (see <see cref="Inputs"/>), a flag each test reads its own way, and the output.</summary>
    public static TheoryData<int, string, bool, Output> Cases => new()
    {
        { 1, "dare3", false, Output.BFloat16OverBase },
        { 15, "dare3", true, Output.BFloat16OverBase },
        { 17, "mixed", true, Output.Float32OverBase },
        { 200_003, "dare3", false, Output.BFloat16OverBase }, // both cores, several 64K pieces, across a 2^32 boundary
        { 200_003, "mixed", true, Output.BFloat16DeltaOnly },
        { 70_001, "one", false, Output.Float32OverBase },
        { 70_001, "two", true, Output.BFloat16OverBase },
        { 33, "four", false, Output.BFloat16OverBase },
    };

    /// <summary>A case's base, inputs and first tensor index (near a 2^32 boundary for the large ones).</summary>
    private static (ushort[] BaseBits, Input[] Inputs, long First) Case(int count, string kind)
    {
        var random = new Random(count + kind.Length);
        return (Values(random, count), Inputs(random, count, kind), count > 100_000 ? (1L << 32) - 70_001 : 12_345);
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Fused_linear_matches_the_definition_and_the_block_by_block_pass(int count, string kind, bool lambda, Output output)
    {
        var (baseBits, inputs, first) = Case(count, kind);
        float? scale = lambda ? 0.7f : null;
        var weights = inputs.Select(i => i.Weight).ToArray();

        var fused = Run((b, s, t, f, c) => DareLinearKernel.MergeChunk(b, s, weights, scale, t, f, c), baseBits, inputs, output, first);
        var blocks = Run((b, s, t, f, c) => ChunkKernels.MergeFromBFloat16(b, s, (deltas, blockTarget, start, end) => CombineKernels.LinearRange(deltas, weights, scale, blockTarget, start, end), t, f, c),
            baseBits, inputs, output, first);

        AssertSame(baseBits, inputs, output, first, j => ExpectedLinear(baseBits, inputs, scale, first, j), fused, blocks);
    }

    /// <summary>TIES's merged δ at element j with nothing trimmed: the sign of Σ wᵢδᵢ (in double) elected, the agreeing δ summed (and divided by their weights' sum), × λ.</summary>
    private static float ExpectedTies(ushort[] baseBits, Input[] inputs, bool normalize, double lambda, long first, int j) =>
        ExpectedTies(inputs.Select(input => MaskedDelta(baseBits, input, first, j)).ToArray(), inputs, normalize, lambda);

    /// <summary>TIES's merged δ of one element's (kept) δ of each input.</summary>
    private static float ExpectedTies(float[] deltas, Input[] inputs, bool normalize, double lambda)
    {
        double election = 0;
        for (var i = 0; i < inputs.Length; i++) election += (double)inputs[i].Weight * deltas[i];
        double sum = 0, weight = 0;
        for (var i = 0; i < inputs.Length; i++)
        {
            var agrees = election >= 0 ? deltas[i] > 0 : deltas[i] < 0;
            if (!agrees) continue;
            sum += (double)inputs[i].Weight * deltas[i];
            weight += inputs[i].Weight;
        }
        var merged = normalize ? (weight == 0 ? 0 : sum / weight) : sum;
        return (float)(merged * lambda);
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Fused_ties_matches_the_definition_and_the_block_by_block_pass(int count, string kind, bool normalize, Output output)
    {
        var (baseBits, inputs, first) = Case(count, kind);
        var lambda = normalize ? 1.0 : 0.7;
        var weights = inputs.Select(i => (double)i.Weight).ToArray();

        var fused = Run((b, s, t, f, c) => DareTiesKernel.MergeChunk(b, s, weights, normalize, lambda, t, f, c), baseBits, inputs, output, first);
        var blocks = Run((b, s, t, f, c) => ChunkKernels.MergeFromBFloat16(b, s, (deltas, blockTarget, start, end) => CombineKernels.TiesRange(deltas, weights, false, normalize, lambda, blockTarget, start, end), t, f, c),
            baseBits, inputs, output, first);

        AssertSame(baseBits, inputs, output, first, j => ExpectedTies(baseBits, inputs, normalize, lambda, first, j), fused, blocks);
    }

    [Fact]
    public void The_block_by_block_ties_combine_allocates_nothing_once_warm_and_gives_the_same_result_each_time()
    {
        // It runs once per 8K-element block (~115K times in a large DARE-TIES export): its arrays are the thread's own.
        var random = new Random(12);
        const int count = 4096;
        var deltas = Enumerable.Range(0, 3).Select(_ => Enumerable.Range(0, count).Select(j => j % 7 == 0 ? 0f : (float)(random.NextDouble() - 0.5)).ToArray()).ToArray();
        var weights = new[] { 1.0, 0.5, 2.0 };
        var first = new float[count];
        var again = new float[count];
        var handles = deltas.Select(d => System.Runtime.InteropServices.GCHandle.Alloc(d, System.Runtime.InteropServices.GCHandleType.Pinned)).ToArray();
        try
        {
            var pointers = handles.Select(h => h.AddrOfPinnedObject()).ToArray();
            fixed (float* output = first) CombineKernels.TiesRange(pointers, weights, false, true, 0.7, CombineTarget.InPlace(output), 0, count);
            var before = GC.GetAllocatedBytesForCurrentThread();
            fixed (float* output = again)
            {
                for (var block = 0; block < 100; block++) CombineKernels.TiesRange(pointers, weights, false, true, 0.7, CombineTarget.InPlace(output), 0, count);
            }
            Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
            Assert.Equal(first, again);
            Assert.Equal(ExpectedTiesOf(deltas, weights, 0.7, 17), first[17]);
        }
        finally
        {
            foreach (var handle in handles) handle.Free();
        }
    }

    /// <summary>TIES of plain float δ at element j, electing by sum and averaging the agreeing inputs (normalized), × λ.</summary>
    private static float ExpectedTiesOf(float[][] deltas, double[] weights, double lambda, int j)
    {
        var election = deltas.Select((d, i) => weights[i] * d[j]).Sum();
        var sign = election >= 0 ? 1 : -1;
        var agreeing = Enumerable.Range(0, deltas.Length).Where(i => deltas[i][j] != 0 && Math.Sign(deltas[i][j]) == sign).ToArray();
        return agreeing.Length == 0 ? 0f : (float)(agreeing.Sum(i => weights[i] * deltas[i][j]) / agreeing.Sum(i => weights[i]) * lambda);
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Fused_ties_with_a_trim_matches_the_definition(int count, string kind, bool normalize, Output output)
    {
        var (baseBits, inputs, first) = Case(count, kind);
        var lambda = normalize ? 1.0 : 0.7;
        var weights = inputs.Select(i => (double)i.Weight).ToArray();
        var deltas = inputs.Select(input => Enumerable.Range(0, count).Select(j => MaskedDelta(baseBits, input, first, j)).ToArray()).ToArray();
        static uint Magnitude(float x) => BitConverter.SingleToUInt32Bits(x) & 0x7FFFFFFF;

        // Each input's threshold is a magnitude its δ takes often, so that ties matter; input 0 keeps every tie, input 1
        // half of each range's, input 2 none in the first range and all in the others, input 3 one per range.
        var ranges = Partition.Ranges(count);
        var keepBits = deltas.Select(d => d.Select(Magnitude).Where(m => m is not 0 and < 0x7F800000).GroupBy(m => m)
            .OrderByDescending(g => g.Count()).ThenBy(g => g.Key).Select(g => g.Key).DefaultIfEmpty(0u).First()).ToArray();
        long TiesIn(int i, (long Start, long End) range) => Enumerable.Range((int)range.Start, (int)(range.End - range.Start)).LongCount(j => Magnitude(deltas[i][j]) == keepBits[i]);
        var budgets = inputs.Select((_, i) => i switch
        {
            0 => null,
            1 => ranges.Select(r => TiesIn(1, r) / 2).ToArray(),
            2 => ranges.Select((_, r) => r == 0 ? 0L : long.MaxValue).ToArray(),
            _ => ranges.Select(_ => 1L).ToArray(),
        }).ToArray();

        // The definition: in each range, in element order, keep |δ| above the threshold and ties while the range's budget lasts.
        var kept = deltas.Select(d => (float[])d.Clone()).ToArray();
        for (var i = 0; i < inputs.Length; i++)
        {
            for (var r = 0; r < ranges.Length; r++)
            {
                var left = budgets[i]?[r] ?? long.MaxValue;
                for (var j = (int)ranges[r].Start; j < ranges[r].End; j++)
                {
                    var m = Magnitude(deltas[i][j]);
                    if (m > keepBits[i] || (m == keepBits[i] && left-- > 0)) continue;
                    kept[i][j] = 0f;
                }
            }
        }
        if (count > 100_000)
        {
            // The large cases cut input 1's ties: some kept, some trimmed.
            var ties = Enumerable.Range(0, count).Where(j => Magnitude(deltas[1][j]) == keepBits[1]).ToArray();
            Assert.Contains(ties, j => kept[1][j] != 0);
            Assert.Contains(ties, j => kept[1][j] == 0);
        }

        var trim = new TiesTrim(keepBits, budgets);
        var fused = Run((b, s, t, f, c) => DareTiesKernel.MergeChunk(b, s, weights, normalize, lambda, t, f, c, trim), baseBits, inputs, output, first);

        AssertSame(baseBits, inputs, output, first, j => ExpectedTies(kept.Select(k => k[j]).ToArray(), inputs, normalize, lambda), fused, blocksRun: null);
    }

    private static Input[] Inputs(Random random, int count, string kind)
    {
        var p9 = DareMask.Threshold(0.9);
        return kind switch
        {
            "dare3" => Enumerable.Range(0, 3).Select(i => new Input(Values(random, count), true, DareMask.Key(42, i, "w"), p9, 10f, 1f / 3)).ToArray(),
            // DARE at 0.5, no DARE step, and a mask that drops nothing and scales by 1 (skipped, as DareMask.Apply skips it).
            "mixed" => new[]
            {
                new Input(Values(random, count), true, DareMask.Key(7, 0, "w"), DareMask.Threshold(0.5), 2f, 0.6f),
                new Input(Values(random, count), false, 0, 0, 1f, -0.25f),
                new Input(Values(random, count), true, DareMask.Key(7, 2, "w"), 0, 1f, 1.5f),
            },
            "two" => new[]
            {
                new Input(Values(random, count), true, DareMask.Key(5, 0, "w"), DareMask.Threshold(0.2), 1.25f, 0.5f),
                new Input(Values(random, count), true, DareMask.Key(5, 1, "w"), DareMask.Threshold(0.7), 1 / 0.3f, 2f),
            },
            "four" => Enumerable.Range(0, 4).Select(i => new Input(Values(random, count), i != 2, DareMask.Key(9, i, "w"), DareMask.Threshold(0.6), 2.5f, 0.25f * (i + 1))).ToArray(),
            _ => new[] { new Input(Values(random, count), true, DareMask.Key(3, 0, "w"), DareMask.Threshold(0.3), 1 / 0.7f, 1f) },
        };
    }

    /// <summary>Every element of both kernels' outputs equals the definition's, and the drop counts equal the mask's.</summary>
    private static void AssertSame(ushort[] baseBits, Input[] inputs, Output output, long first, Func<int, float> mergedDelta,
        (uint[] Bits, long[] Dropped, bool OutputFinite) fusedRun, (uint[] Bits, long[] Dropped, bool OutputFinite)? blocksRun)
    {
        var count = baseBits.Length;
        var (fused, fusedDropped, fusedFinite) = fusedRun;
        var (blocks, blocksDropped, blocksFinite) = blocksRun ?? fusedRun;
        var nonFinite = 0;

        Assert.Equal(blocksDropped, fusedDropped);
        for (var i = 0; i < inputs.Length; i++)
        {
            var masks = inputs[i].Dare && inputs[i].Threshold != 0;
            var expectedDropped = masks ? Enumerable.Range(0, count).LongCount(j => DareMask.IsDropped(inputs[i].Key, first + j, inputs[i].Threshold)) : 0;
            Assert.Equal(expectedDropped, fusedDropped[i]);
        }
        for (var j = 0; j < count; j++)
        {
            var merged = mergedDelta(j);
            if (output != Output.BFloat16DeltaOnly) merged += Widen(baseBits[j]);
            var expected = output == Output.Float32OverBase ? BitConverter.SingleToUInt32Bits(merged) : CombineKernels.ToBFloat16(merged);
            // All exponent bits set: NaN or ±Inf (a finite float32 sum can also round to a bfloat16 infinity).
            if (output == Output.Float32OverBase ? (expected & 0x7F800000u) == 0x7F800000u : (expected & 0x7F80u) == 0x7F80u) nonFinite++;
            // NaN payloads may differ between instructions; any NaN is the same value.
            if (float.IsNaN(merged) && output == Output.Float32OverBase)
            {
                Assert.True(float.IsNaN(BitConverter.UInt32BitsToSingle(fused[j])), $"element {j}");
                continue;
            }
            Assert.True(expected == fused[j], $"element {j}: expected {expected:X}, fused kernel {fused[j]:X}");
            Assert.True(blocks[j] == fused[j], $"element {j}: block-by-block pass {blocks[j]:X}, fused kernel {fused[j]:X}");
        }
        Assert.Equal(nonFinite == 0, fusedFinite);
        Assert.Equal(nonFinite == 0, blocksFinite);
    }

    [Theory]
    [InlineData(-1)]
    [InlineData(0)]
    [InlineData(65_536)]   // the second piece of the first core's range
    [InlineData(199_999)]  // the last piece of the second core's range
    public void Single_passes_report_whether_any_output_value_is_NaN_or_infinite(int infinityAt)
    {
        const int Count = 200_003;
        var random = new Random(5);
        ushort[] Finite() => Enumerable.Range(0, Count).Select(_ => (ushort)(random.Next(0x3000, 0x3D00) | (random.Next(2) << 15))).ToArray();
        var baseBits = Finite();
        if (infinityAt >= 0) baseBits[infinityAt] = 0x7F80; // +Inf in the base: +Inf in the output over it
        var inputs = Enumerable.Range(0, 3).Select(i => new Input(Finite(), true, DareMask.Key(42, i, "w"), DareMask.Threshold(0.9), 10f, 1f / 3)).ToArray();
        var weights = inputs.Select(i => i.Weight).ToArray();

        var fused = Run((b, s, t, f, c) => DareLinearKernel.MergeChunk(b, s, weights, null, t, f, c), baseBits, inputs, Output.BFloat16OverBase, 0);
        var blocks = Run((b, s, t, f, c) => ChunkKernels.MergeFromBFloat16(b, s, (deltas, blockTarget, start, end) => CombineKernels.LinearRange(deltas, weights, null, blockTarget, start, end), t, f, c),
            baseBits, inputs, Output.BFloat16OverBase, 0);

        Assert.Equal(infinityAt < 0, fused.OutputFinite);
        Assert.Equal(infinityAt < 0, blocks.OutputFinite);
        if (infinityAt >= 0) Assert.Equal(0x7F80u, fused.Bits[infinityAt]);
    }
}
