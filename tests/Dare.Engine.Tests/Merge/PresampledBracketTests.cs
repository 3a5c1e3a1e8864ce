using System.Runtime.InteropServices;
using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using Dare.Engine.Tests.Safetensors;
using Xunit;

namespace Dare.Engine.Tests.Merge;

/// <summary>
/// A tensor kept as stored is presampled before its first pass, and that pass counts the planned bracket as it
/// computes δ (<see cref="ChunkKernels.WidenSubtractMask(StoredRange, ushort*, float*, long, long, bool, ulong, uint, float, MagnitudeSelection?)"/>).
/// The threshold, its ties and each range's tie budget must be those of δ written out and sorted.
/// </summary>
public sealed unsafe class PresampledBracketTests
{
    // Large enough that the presample (one element in 64) brackets the threshold within a few coarse bins.
    private const int N = 3_000_000;
    private static readonly int[] Chunks = { 1_250_000, 1_000_000, 750_000 };

    /// <summary>bfloat16 bits of k/64 for small k.</summary>
    private static ushort Bits(int k) => (ushort)(BitConverter.SingleToUInt32Bits(k / 64f) >> 16);

    /// <summary>bfloat16 bits of Gaussian values: over a zero base these are δ, each value shared by many elements (ties).</summary>
    private static ushort[] GaussianBits(int n, Random random) => Enumerable.Range(0, n).Select(_ =>
    {
        var gaussian = Math.Sqrt(-2 * Math.Log(1 - random.NextDouble())) * Math.Cos(2 * Math.PI * random.NextDouble());
        return (ushort)(BitConverter.SingleToUInt32Bits((float)(gaussian * 0.002)) >> 16);
    }).ToArray();

    /// <summary>δ as defined: tuned − base in float32, then DARE's drop (zero) or rescale.</summary>
    private static float[] PlainDelta(ushort[] baseBits, ushort[] tunedBits, bool dare, ulong key, uint threshold, float scale) =>
        Enumerable.Range(0, baseBits.Length).Select(j =>
        {
            var delta = BitConverter.UInt32BitsToSingle((uint)tunedBits[j] << 16) - BitConverter.UInt32BitsToSingle((uint)baseBits[j] << 16);
            return !dare ? delta : DareMask.IsDropped(key, j, threshold) ? 0f : delta * scale;
        }).ToArray();

    /// <summary>The whole tensor's presample, from memory and on one thread, added to <paramref name="selection"/>.</summary>
    private static void Presample(ushort* baseBits, ushort* tunedBits, long count, bool dare, ulong key, uint threshold, float scale, MagnitudeSelection selection) =>
        selection.AddPresample(ChunkKernels.PresampleTable(baseBits, tunedBits, count, ChunkKernels.PresampleSpacing, 0, ChunkKernels.PresampleRuns(count), dare, key, threshold, scale));

    /// <summary>The presample, then the δ pass over the chunks with the selection; returns δ as the kernel wrote it.</summary>
    private static float[] PresampleThenDeltaPass(ushort[] baseBits, ushort[] tunedBits, MagnitudeSelection selection, bool dare, ulong key, uint threshold, float scale,
        Func<bool> afterPresample)
    {
        var n = baseBits.Length;
        var info = new TensorInfo("t", SafetensorsDType.BF16, new long[] { n }, "t.safetensors", 0, 2L * n);
        var delta = new float[n];
        fixed (ushort* b = baseBits, t = tunedBits)
        fixed (float* d = delta)
        {
            Presample(b, t, n, dare, key, threshold, scale, selection);
            if (!afterPresample()) return delta;
            long first = 0;
            foreach (var count in Chunks)
            {
                using var tuned = new StoredRange(info, first, count, (byte*)(t + first), owned: false);
                ChunkKernels.WidenSubtractMask(tuned, b + first, d + first, first, count, dare, key, threshold, scale, selection);
                first += count;
            }
            Assert.Equal(n, first);
        }
        return delta;
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_presampled_bracket_counted_in_the_delta_pass_gives_the_sorted_threshold_and_each_ranges_tie_budget(bool dare)
    {
        var random = new Random(dare ? 31 : 32);
        var baseBits = new ushort[N];
        var tunedBits = GaussianBits(N, random);
        var (key, threshold, scale) = (DareMask.Key(42, 0, "t"), DareMask.Threshold(0.3), 1 / 0.7f);
        var plain = PlainDelta(baseBits, tunedBits, dare, key, threshold, scale);
        const long keep = N / 5;
        var selection = new MagnitudeSelection(keep, N);

        var delta = PresampleThenDeltaPass(baseBits, tunedBits, selection, dare, key, threshold, scale, () =>
        {
            Assert.True(selection.FinishPresample());
            Assert.True(selection.CountsBracketWhileReading);
            return true;
        });
        var step = selection.FinishBracket();

        Assert.Equal(plain.Select(BitConverter.SingleToUInt32Bits), delta.Select(BitConverter.SingleToUInt32Bits));
        Assert.Equal(SelectionStep.Done, step);
        Assert.False(selection.CountsBracketWhileReading);
        var magnitudes = plain.Select(x => BitConverter.SingleToUInt32Bits(x) & 0x7FFFFFFF).ToArray();
        var kth = magnitudes.OrderDescending().ElementAt((int)keep - 1);
        Assert.Equal(kth, selection.ThresholdBits);
        Assert.Equal(keep - magnitudes.Count(m => m > kth), selection.TiesToKeep);
        Assert.Equal(magnitudes.Count(m => m == kth), selection.TieCount);
        Assert.True(selection.TieCount > selection.TiesToKeep && selection.TiesToKeep > 0, "the threshold's ties are split");

        // Each chunk's ranges hand out the first TiesToKeep ties in element order; long.MaxValue where a range keeps all of its own.
        var remaining = selection.TiesToKeep;
        long offset = 0;
        for (var c = 0; c < Chunks.Length; c++)
        {
            var ranges = Partition.Ranges(Chunks[c]);
            var budgets = selection.TieBudgets(c);
            Assert.NotNull(budgets);
            Assert.Equal(ranges.Length, budgets!.Length);
            for (var r = 0; r < ranges.Length; r++)
            {
                var ties = Enumerable.Range((int)(offset + ranges[r].Start), (int)(ranges[r].End - ranges[r].Start)).LongCount(j => magnitudes[j] == kth);
                Assert.Equal(ties <= remaining ? long.MaxValue : remaining, budgets[r]);
                remaining -= Math.Min(ties, remaining);
            }
            offset += Chunks[c];
        }
        Assert.Equal(0, remaining);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void The_presample_of_runs_read_from_files_counts_what_the_presample_of_the_tensor_in_memory_and_a_plain_loop_count(bool dare)
    {
        // The last run is cut at the end of the tensor (100 of its 256 elements); the data start at an odd offset.
        const int n = 60 * ChunkKernels.PresampleSpacing + 100;
        const int offset = 102;
        var random = new Random(21);
        var baseBits = GaussianBits(n, random);
        var tunedBits = GaussianBits(n, random);
        const ulong key = 0x1234_5678_9ABC_DEF0;
        var threshold = (uint)(0.9 * 4294967296.0);
        const float scale = 10f;
        using var folder = new TempDirectory();
        TensorInfo Stored(string name, ushort[] bits)
        {
            var path = folder[name];
            File.WriteAllBytes(path, new byte[offset].Concat(MemoryMarshal.AsBytes(bits.AsSpan()).ToArray()).ToArray());
            return new TensorInfo(name, SafetensorsDType.BF16, new long[] { n }, path, offset, 2L * n);
        }
        var (baseInfo, tunedInfo) = (Stored("base.bin", baseBits), Stored("tuned.bin", tunedBits));

        // The plain loop: every element whose index is within a run's first 256 of each 16,411.
        var delta = PlainDelta(baseBits, tunedBits, dare, key, threshold, scale);
        var expected = new uint[1 << 16];
        for (var j = 0; j < n; j++)
        {
            if (j % 16_411 < 256) expected[(BitConverter.SingleToUInt32Bits(delta[j]) & 0x7FFFFFFF) >> 16]++;
        }
        Assert.Equal(61L * 256 - 156, expected.Sum(c => (long)c));

        const int runs = 61;
        var baseRuns = new ushort[runs * ChunkKernels.PresampleRun];
        var tunedRuns = new ushort[runs * ChunkKernels.PresampleRun];
        using (var reader = new TensorReader())
        {
            fixed (ushort* b = baseRuns, t = tunedRuns)
            {
                reader.ReadRuns(baseInfo, ChunkKernels.PresampleSpacing, ChunkKernels.PresampleRun, 0, runs, (byte*)b);
                reader.ReadRuns(tunedInfo, ChunkKernels.PresampleSpacing, ChunkKernels.PresampleRun, 0, runs, (byte*)t);
            }
        }
        Assert.Equal(baseBits.AsSpan(60 * 16_411, 100).ToArray(), baseRuns.AsSpan(60 * 256, 100).ToArray());
        uint[] fromMemory, fromRuns;
        fixed (ushort* b = baseBits, t = tunedBits) fromMemory = ChunkKernels.PresampleTable(b, t, n, ChunkKernels.PresampleSpacing, 0, runs, dare, key, threshold, scale).AsSpan(0, 1 << 16).ToArray();
        fixed (ushort* b = baseRuns, t = tunedRuns) fromRuns = ChunkKernels.PresampleTable(b, t, n, ChunkKernels.PresampleRun, 0, runs, dare, key, threshold, scale).AsSpan(0, 1 << 16).ToArray();

        Assert.Equal(expected, fromMemory);
        Assert.Equal(expected, fromRuns);

        // Split between cores as FilePresample and the stored tensor's presample split it: runs [0, 23) and [23, 61),
        // each read (or pointed at) from its own first run; the DARE mask must still see each element's tensor index.
        var split = new uint[1 << 16];
        var partRuns = new ushort[2 * runs * ChunkKernels.PresampleRun];
        foreach (var (first, count) in new[] { (0L, 23L), (23L, runs - 23L) })
        {
            using var reader = new TensorReader();
            fixed (ushort* b = partRuns, m = baseBits, t = tunedBits)
            {
                var tunedPart = b + runs * ChunkKernels.PresampleRun;
                reader.ReadRuns(baseInfo, ChunkKernels.PresampleSpacing, ChunkKernels.PresampleRun, first, count, (byte*)b);
                reader.ReadRuns(tunedInfo, ChunkKernels.PresampleSpacing, ChunkKernels.PresampleRun, first, count, (byte*)tunedPart);
                var table = ChunkKernels.PresampleTable(b, tunedPart, n, ChunkKernels.PresampleRun, first, count, dare, key, threshold, scale);
                for (var e = 0; e < split.Length; e++) split[e] += table[e];
                var at = first * ChunkKernels.PresampleSpacing;
                table = ChunkKernels.PresampleTable(m + at, t + at, n, ChunkKernels.PresampleSpacing, first, count, dare, key, threshold, scale);
                for (var e = 0; e < split.Length; e++) split[e] += table[e];
            }
        }
        Assert.Equal(expected.Select(c => 2 * c).ToArray(), split);
    }

    [Fact]
    public void A_presample_that_misleads_leaves_the_bracket_missed_and_the_exact_passes_find_the_threshold()
    {
        // Large δ where the presample's runs fall (16 elements every PresampleSpacing), small everywhere else: the
        // presample puts the threshold among the large values, where it is not.
        var random = new Random(33);
        var sampled = Enumerable.Range(0, N).Select(j => j % ChunkKernels.PresampleSpacing < ChunkKernels.PresampleRun).ToArray();
        var baseBits = Enumerable.Range(0, N).Select(_ => Bits(0)).ToArray();
        var tunedBits = Enumerable.Range(0, N).Select(j => Bits(sampled[j] ? 40 + random.Next(8) : 1 + random.Next(8))).ToArray();
        const long keep = N / 10;
        var selection = new MagnitudeSelection(keep, N);

        var delta = PresampleThenDeltaPass(baseBits, tunedBits, selection, false, 0, 0, 1f, () => selection.FinishPresample());
        Assert.Equal(SelectionStep.CoarseAndFine, selection.FinishBracket());
        fixed (float* d = delta)
        {
            selection.AddCoarse(d, N);
            selection.FinishCoarse();
            selection.AddFine(d, N);
            selection.FinishFine();
        }

        Assert.Equal(delta.Select(MathF.Abs).OrderDescending().ElementAt((int)keep - 1), selection.Threshold);
    }

    [Fact]
    public void A_presample_too_small_to_plan_a_bracket_leaves_the_delta_pass_sampling_as_before()
    {
        var random = new Random(34);
        const int n = 20_000; // ~310 presampled elements: fewer than a bracket needs
        var baseBits = new ushort[n];
        var tunedBits = GaussianBits(n, random);
        var selection = new MagnitudeSelection(n / 5, n);
        var info = new TensorInfo("t", SafetensorsDType.BF16, new long[] { n }, "t.safetensors", 0, 2L * n);
        var delta = new float[n];

        fixed (ushort* b = baseBits, t = tunedBits)
        fixed (float* d = delta)
        {
            Presample(b, t, n, false, 0, 0, 1f, selection);
            Assert.False(selection.FinishPresample());
            Assert.False(selection.CountsBracketWhileReading);
            using var tuned = new StoredRange(info, 0, n, (byte*)t, owned: false);
            ChunkKernels.WidenSubtractMask(tuned, b, d, 0, n, false, 0, 0, 1f, selection);
            // The pass took the ordinary sample (every 17th element), and its route finds the threshold as ever.
            var step = selection.FinishSample();
            if (step == SelectionStep.Bracket)
            {
                selection.AddBracket(d, n);
                step = selection.FinishBracket();
            }
            if (step == SelectionStep.CoarseAndFine)
            {
                selection.AddCoarse(d, n);
                selection.FinishCoarse();
                selection.AddFine(d, n);
                selection.FinishFine();
            }
        }
        Assert.Equal(delta.Select(MathF.Abs).OrderDescending().ElementAt(n / 5 - 1), selection.Threshold);
    }
}
