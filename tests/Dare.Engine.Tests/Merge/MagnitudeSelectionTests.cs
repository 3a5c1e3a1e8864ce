using Dare.Engine.Merge;
using Xunit;

namespace Dare.Engine.Tests.Merge;

/// <summary>The histogram top-k against "sort by (|x| descending, index ascending), take the first k".</summary>
public sealed class MagnitudeSelectionTests
{
    /// <summary>
    /// Runs the selection over <paramref name="data"/> split into pieces of the given lengths, by the exact passes or
    /// (<paramref name="sampled"/>) by the sampled route, falling back as the executor does; returns the trimmed copy
    /// and the steps the sampled route took.
    /// </summary>
    private static unsafe (float[] Trimmed, MagnitudeSelection Selection, List<SelectionStep> Steps) Select(float[] data, long keep, int[] pieces, bool sampled = false)
    {
        var copy = (float[])data.Clone();
        var selection = new MagnitudeSelection(keep, copy.Length);
        var steps = new List<SelectionStep>();
        fixed (float* pinned = copy)
        {
            var start = (IntPtr)pinned;
            void EachPiece(Action<IntPtr, int> action)
            {
                var at = 0;
                foreach (var length in pieces)
                {
                    action(start + at * sizeof(float), length);
                    at += length;
                }
                Assert.Equal(copy.Length, at);
            }
            var step = selection.NeedsPasses ? SelectionStep.CoarseAndFine : SelectionStep.Done;
            if (sampled && selection.NeedsPasses)
            {
                EachPiece((q, n) => selection.AddSample((float*)q, (q - start) / sizeof(float), n));
                steps.Add(step = selection.FinishSample());
                if (step == SelectionStep.Bracket)
                {
                    EachPiece((q, n) => selection.AddBracket((float*)q, n));
                    steps.Add(step = selection.FinishBracket());
                }
            }
            if (step == SelectionStep.CoarseAndFine)
            {
                EachPiece((q, n) => selection.AddCoarse((float*)q, n));
                selection.FinishCoarse();
                EachPiece((q, n) => selection.AddFine((float*)q, n));
                selection.FinishFine();
            }
            var tiesLeft = selection.TiesToKeep;
            EachPiece((q, n) => selection.Trim((float*)q, n, ref tiesLeft));
        }
        return (copy, selection, steps);
    }

    private static int[] Pieces(int n, int pieceCount, Random random)
    {
        if (pieceCount == 1) return new[] { n };
        var cuts = Enumerable.Range(0, pieceCount - 1).Select(_ => random.Next(0, n + 1)).Append(0).Append(n).Order().ToArray();
        return cuts.Zip(cuts.Skip(1), (a, b) => b - a).ToArray();
    }

    private static float[] Data(string kind, int n, Random random)
    {
        float[] palette = { 0f, -0f, 1f, -1f, 0.5f, -0.5f, 2f, -2f, 1e-40f, -1e-40f, 1.4e-45f, -3e-39f, float.Epsilon };
        return kind switch
        {
            "duplicates" => Enumerable.Range(0, n).Select(_ => palette[random.Next(palette.Length)]).ToArray(),
            "uniform" => TestModels.RandomFloats(random, n),
            // Magnitudes spread over many binades, with repeats, so the coarse bin holding the threshold is crowded.
            "spread" => Enumerable.Range(0, n).Select(_ => (random.Next(2) == 0 ? -1 : 1) * MathF.Round(random.NextSingle() * 64) * MathF.Pow(2, random.Next(-140, 20))).ToArray(),
            "zeros" => Enumerable.Range(0, n).Select(i => i % 3 == 0 ? -0f : 0f).ToArray(),
            _ => throw new ArgumentOutOfRangeException(nameof(kind)),
        };
    }

    public static TheoryData<string, int, double, int> Cases()
    {
        var data = new TheoryData<string, int, double, int>();
        foreach (var kind in new[] { "duplicates", "uniform", "spread", "zeros" })
        {
            foreach (var keep in new[] { 0.0, 1e-4, 0.1, 0.3, 0.5, 0.999, 1.0 })
            {
                data.Add(kind, 1000, keep, 1);
                data.Add(kind, 1000, keep, 5);
            }
            // Above 2 × 65536 elements the passes split the work into parallel ranges.
            data.Add(kind, 200_003, 0.3, 1);
            data.Add(kind, 200_003, 0.01, 4);
        }
        data.Add("duplicates", 1, 1.0, 1);
        data.Add("duplicates", 7, 0.5, 7);
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Kept_set_equals_the_sorted_selection_whatever_the_chunks(string kind, int n, double keepRatio, int pieceCount) =>
        AssertSelectionIsExact(kind, n, keepRatio, pieceCount, sampled: false);

    [Theory]
    [MemberData(nameof(Cases))]
    public void The_sampled_route_finds_the_same_threshold_and_kept_set(string kind, int n, double keepRatio, int pieceCount) =>
        AssertSelectionIsExact(kind, n, keepRatio, pieceCount, sampled: true);

    private static void AssertSelectionIsExact(string kind, int n, double keepRatio, int pieceCount, bool sampled)
    {
        var random = new Random(kind.Sum(c => c) * 7919 + n * 31 + (int)(keepRatio * 10_000) * 17 + pieceCount);
        var data = Data(kind, n, random);
        var keep = (int)Math.Round(keepRatio * n);
        var (trimmed, selection, _) = Select(data, keep, Pieces(n, pieceCount, random), sampled);
        var expected = Reference.TopMagnitude(data, keep);
        for (var i = 0; i < n; i++)
        {
            var expectedValue = expected[i] ? data[i] : 0f;
            if (BitConverter.SingleToUInt32Bits(expectedValue) != BitConverter.SingleToUInt32Bits(trimmed[i]))
            {
                Assert.Fail($"[{i}] {data[i]:R}: expected {(expected[i] ? "kept" : "dropped")}, got {trimmed[i]:R} (threshold {selection.Threshold:R}, keep {keep})");
            }
        }
        if (selection.NeedsPasses)
        {
            // The threshold is the magnitude of the keep-th largest entry.
            var kth = data.Select(MathF.Abs).OrderDescending().ElementAt(keep - 1);
            Assert.Equal(kth, selection.Threshold);
        }
    }

    /// <summary>Gaussian magnitudes with bfloat16-like repeats (as δ of bf16 weights), a tenth of them zero unless <paramref name="zeroFraction"/> says otherwise.</summary>
    private static float[] TaskVectorLike(int n, Random random, double zeroFraction = 0.1)
    {
        return Enumerable.Range(0, n).Select(_ =>
        {
            if (random.NextDouble() < zeroFraction) return 0f;
            var gaussian = Math.Sqrt(-2 * Math.Log(1 - random.NextDouble())) * Math.Cos(2 * Math.PI * random.NextDouble());
            var value = (float)(gaussian * 0.002);
            return BitConverter.UInt32BitsToSingle(BitConverter.SingleToUInt32Bits(value) & 0xFFFF0000u); // 8 significant bits
        }).ToArray();
    }

    [Fact]
    public void A_representative_tensor_needs_only_the_sample_and_one_bracket_pass()
    {
        var random = new Random(11);
        var data = TaskVectorLike(1_000_000, random);
        var keep = 200_000;

        var (trimmed, selection, steps) = Select(data, keep, Pieces(data.Length, 3, random), sampled: true);

        Assert.Equal(new[] { SelectionStep.Bracket, SelectionStep.Done }, steps);
        var expected = Reference.TopMagnitude(data, keep);
        Assert.Equal(data.Select((x, i) => expected[i] ? x : 0f), trimmed);
        Assert.Equal(data.Select(MathF.Abs).OrderDescending().ElementAt(keep - 1), selection.Threshold);
    }

    [Fact]
    public void After_a_dare_drop_keeping_more_than_the_survivors_is_settled_by_the_sample_alone()
    {
        var random = new Random(12);
        var data = TaskVectorLike(100_000, random, zeroFraction: 0.9);
        var nonZero = data.Count(x => x != 0);

        var (trimmed, selection, steps) = Select(data, 50_000, Pieces(data.Length, 2, random), sampled: true);

        Assert.Equal(new[] { SelectionStep.Done }, steps);
        Assert.Equal(0u, selection.ThresholdBits);
        Assert.Equal(50_000 - nonZero, selection.TiesToKeep);
        Assert.True(selection.TrimKeepsEveryNonZero);
        Assert.Equal(data.Where(x => x != 0).Count(), trimmed.Count(x => x != 0));
    }

    [Fact]
    public void A_misleading_sample_falls_back_to_the_exact_passes_and_stays_exact()
    {
        // Every sampled position (index % SampleStride == 0) holds a large value, every other position a small one: the sample
        // puts the threshold among the large values, where it is not.
        var n = 200_000;
        var random = new Random(13);
        var data = Enumerable.Range(0, n).Select(i => (i % MagnitudeSelection.SampleStride == 0 ? 1000f : 1f) * (1 + random.Next(1000) / 1000f)).ToArray();
        var keep = n / 10;

        var (trimmed, selection, steps) = Select(data, keep, Pieces(n, 2, random), sampled: true);

        Assert.Equal(SelectionStep.CoarseAndFine, steps[^1]);
        var expected = Reference.TopMagnitude(data, keep);
        Assert.Equal(data.Select((x, i) => expected[i] ? x : 0f), trimmed);
        Assert.Equal(data.Select(MathF.Abs).OrderDescending().ElementAt(keep - 1), selection.Threshold);
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public unsafe void Dropping_excess_ties_then_everything_below_keep_bits_equals_the_trim(string kind, int n, double keepRatio, int pieceCount)
    {
        var random = new Random(kind.Sum(c => c) * 13 + n + (int)(keepRatio * 1000) + pieceCount);
        var data = Data(kind, n, random);
        var keep = (int)Math.Round(keepRatio * n);
        var (trimmed, selection, _) = Select(data, keep, Pieces(n, pieceCount, random), sampled: true);

        var split = (float[])data.Clone();
        var tiesLeft = selection.TiesToKeep;
        fixed (float* pinned = split)
        {
            // In two pieces, so the tie count carries across calls as it does across chunks.
            selection.DropExcessTies(pinned, n / 2, ref tiesLeft);
            selection.DropExcessTies(pinned + n / 2, n - n / 2, ref tiesLeft);
        }
        for (var i = 0; i < n; i++)
        {
            if ((BitConverter.SingleToUInt32Bits(split[i]) & 0x7FFFFFFF) < selection.KeepBits) split[i] = 0f;
        }

        Assert.Equal(trimmed.Select(BitConverter.SingleToUInt32Bits), split.Select(BitConverter.SingleToUInt32Bits));
    }

    [Fact]
    public unsafe void Tie_budgets_give_each_range_its_share_of_the_first_ties_in_element_order()
    {
        // Few distinct magnitudes, so the threshold value is shared by thousands of elements across pieces and ranges.
        var random = new Random(21);
        const int n = 600_000;
        var data = Enumerable.Range(0, n).Select(_ => (random.Next(2) == 0 ? -1 : 1) * random.Next(0, 40) / 64f).ToArray();
        var pieces = new[] { 250_000, 200_000, 150_000 };
        var keep = n / 3;

        var (_, selection, steps) = Select(data, keep, pieces, sampled: true);

        Assert.Equal(new[] { SelectionStep.Bracket, SelectionStep.Done }, steps);
        Assert.True(selection.TieCount > selection.TiesToKeep && selection.TiesToKeep > 0, "the threshold's ties are split");
        // Written out plainly: walk pieces and their ranges in element order, handing out TiesToKeep.
        var remaining = selection.TiesToKeep;
        var offset = 0;
        for (var p = 0; p < pieces.Length; p++)
        {
            var budgets = selection.TieBudgets(p);
            Assert.NotNull(budgets);
            var ranges = Partition.Ranges(pieces[p]);
            Assert.Equal(ranges.Length, budgets!.Length);
            for (var r = 0; r < ranges.Length; r++)
            {
                long ties = 0;
                for (var i = ranges[r].Start; i < ranges[r].End; i++)
                {
                    if ((BitConverter.SingleToUInt32Bits(data[offset + i]) & 0x7FFFFFFF) == selection.ThresholdBits) ties++;
                }
                // A range that keeps all its ties says so with long.MaxValue.
                Assert.Equal(ties <= remaining ? long.MaxValue : remaining, budgets[r]);
                remaining -= Math.Min(ties, remaining);
            }
            offset += pieces[p];
        }
        Assert.Equal(0, remaining);
        Assert.Null(selection.TieBudgets(pieces.Length));
    }

    [Fact]
    public void Selection_of_all_or_nothing_needs_no_passes()
    {
        Assert.True(new MagnitudeSelection(10, 10).KeepAll);
        Assert.True(new MagnitudeSelection(11, 10).KeepAll);
        Assert.True(new MagnitudeSelection(0, 10).KeepNone);
        Assert.True(new MagnitudeSelection(5, 10).NeedsPasses);
    }

    [Fact]
    public unsafe void A_bracket_table_left_with_counts_is_not_rented_again_and_the_counts_added_are_the_bracket_s()
    {
        var data = TestModels.RandomFloats(new Random(8), 200_000);
        const long Keep = 40_000;
        var (_, reference, steps) = Select(data, Keep, new[] { data.Length }, sampled: true);
        Assert.Contains(SelectionStep.Bracket, steps);

        var selection = new MagnitudeSelection(Keep, data.Length);
        fixed (float* p = data)
        {
            selection.AddSample(p, 0, data.Length);
            Assert.Equal(SelectionStep.Bracket, selection.FinishSample());
            var (low, high) = selection.BracketBits;
            // A pass cut short (an error) leaves counts and marks in its table, which is never returned to the pool.
            var dirty = selection.RentBracketTable();
            fixed (uint* t = dirty)
            {
                for (var entry = 0u; entry < 5000; entry += 7) MagnitudeSelection.CountEntry(t, high - low, entry);
            }

            var table = selection.RentBracketTable();
            Assert.NotSame(dirty, table);
            Assert.All(table, count => Assert.Equal(0u, count));
            long above = 0, zeros = 0;
            var recorded = selection.BeginBracketCall(1)!;
            selection.CountBracket(table, p, data.Length, ref above, ref zeros);
            selection.AddBracketCounts(table, above, zeros, recorded, 0);
            selection.EndBracketCall(recorded);

            // The recorded entries are the magnitudes inside the bracket, counted plainly, in order.
            var expected = data.Select(x => BitConverter.SingleToUInt32Bits(x) & 0x7FFFFFFF).Where(m => m >= low && m < high)
                .GroupBy(m => m - low).OrderBy(g => g.Key).Select(g => (g.Key, (uint)g.Count())).ToArray();
            Assert.Equal(expected, recorded[0]);
            Assert.Equal(data.LongCount(x => (BitConverter.SingleToUInt32Bits(x) & 0x7FFFFFFF) >= high), above);
        }
        Assert.Equal(SelectionStep.Done, selection.FinishBracket());
        Assert.Equal(reference.ThresholdBits, selection.ThresholdBits);
        Assert.Equal(reference.TiesToKeep, selection.TiesToKeep);
    }
}
