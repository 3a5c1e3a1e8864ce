using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Dare.Engine.Merge;

/// <summary>What a selection needs next.</summary>
public enum SelectionStep
{
    /// <summary>The threshold is known.</summary>
    Done,

    /// <summary>One pass of <see cref="MagnitudeSelection.AddBracket"/>, then <see cref="MagnitudeSelection.FinishBracket"/>.</summary>
    Bracket,

    /// <summary>The exact passes: AddCoarse, FinishCoarse, AddFine, FinishFine.</summary>
    CoarseAndFine,
}

/// <summary>
/// The fast route to the same exact threshold. Counting every element into a 64K-entry histogram costs about a
/// nanosecond per element, more than computing δ. Instead, the pass that computes δ also counts the non-zero
/// elements (vector compares) and histograms every 17th element (a prime stride, so it does not alias with tensor
/// shapes). If no more than k elements are non-zero, the threshold is 0 and there is nothing else to do (the usual
/// case after a DARE drop). Otherwise the sample brackets the k-th largest magnitude within a few coarse bins, and
/// one pass counts the elements above the bracket (vector compares) and histograms only those inside it, at full
/// resolution. Both counts are exact, so the bracket either provably holds the threshold or the exact passes run.
/// When the data are in memory before the first pass (a tensor kept as stored), a sparser sample taken from them
/// first (<see cref="AddPresample"/>, <see cref="FinishPresample"/>) plans the bracket, and the δ pass counts it as
/// it computes δ (<see cref="CountsBracketWhileReading"/>): one pass fewer.
/// </summary>
public sealed partial class MagnitudeSelection
{
    /// <summary>Every SampleStride-th element of the tensor (by index) is sampled.</summary>
    internal const int SampleStride = 17;

    /// <summary>Widest bracket, in coarse bins: its histogram has this many × 64K entries.</summary>
    private const int MaxBracketBins = 16;

    /// <summary>Samples below this many give no useful bracket; the exact passes run instead.</summary>
    private const long MinSampleSize = 1024;

    private SparseCounts? _sample;
    private readonly object _sampleLock = new();
    private long _nonZero;
    private uint _bracketLow, _bracketHigh;
    private long _aboveBracket, _zerosInBracket;
    private SparseCounts? _bracket;

    // Per AddBracket call (in the executor: per chunk, in element order) and per parallel range of it, the bracket's
    // non-zero counts as sorted (entry, count) lists. Once the threshold is known they give each range's ties, so
    // the order-dependent tie rule needs no pass of its own. Not kept when they would grow too large.
    private List<(uint Entry, uint Count)[][]>? _rangeEntries = new();
    private long _recordedEntries;
    private const long MaxRecordedEntries = 1 << 20;
    private List<long[]>? _tieBudgets;

    /// <summary>
    /// Sample statistics of elements [first, first + count) of the tensor: every piece must be added once (in any
    /// order) before <see cref="FinishSample"/>.
    /// </summary>
    public unsafe void AddSample(float* data, long first, long count)
    {
        var ranges = Partition.Ranges(count);
        Parallel.For(0, ranges.Length, r =>
        {
            var (start, end) = ranges[r];
            var table = RentSampleTable();
            var nonZero = CountSample(table, (uint*)data + start, first + start, end - start);
            AddSampleCounts(table, nonZero);
        });
    }

    /// <summary>
    /// Counts the non-zero magnitudes among <paramref name="count"/> elements (tensor index <paramref name="first"/>
    /// onwards) and adds the sampled ones' coarse bins to <paramref name="table"/>; returns the non-zero count.
    /// </summary>
    internal static unsafe long CountSample(uint[] table, uint* bits, long first, long count)
    {
        var nonZero = VectorDriver.Run(new NonZeroCounter(bits), 0, count).NonZero;
        fixed (uint* t = table)
        {
            for (var j = (SampleStride - first % SampleStride) % SampleStride; j < count; j += SampleStride) CountSampleBin(t, bits[j]);
        }
        return nonZero;
    }

    /// <summary>Counts magnitude bits <paramref name="bits"/> into its coarse bin of a sample table (<see cref="RentSampleTable"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static unsafe void CountSampleBin(uint* table, uint bits) => CountEntry(table, 1 << 16, (bits & MagnitudeMask) >> 16);

    /// <summary>Counts the elements whose magnitude is not zero.</summary>
    private unsafe struct NonZeroCounter(uint* bits) : IElementOperator
    {
        public long NonZero { get; private set; }

        public static int Lanes => 8;
        public static bool IsVectorized => true;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Vector(long i)
        {
            var zero = Vector256.Equals(Vector256.Load(bits + i) & Vector256.Create(MagnitudeMask), Vector256<uint>.Zero);
            NonZero += 8 - BitOperations.PopCount(zero.ExtractMostSignificantBits());
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Scalar(long i)
        {
            if ((bits[i] & MagnitudeMask) != 0) NonZero++;
        }
    }

    internal void AddSampleCounts(uint[] table, long nonZero)
    {
        lock (_sampleLock)
        {
            var sample = _sample ??= new SparseCounts(1 << 16);
            TakeCounts(table, 1 << 16, (entry, count) => sample.Add(entry, count));
            _nonZero += nonZero;
        }
        CleanArrays<uint>.Return(table);
    }

    /// <summary>After the sample: the threshold when at most k elements are non-zero, else a bracket to count, or the exact passes.</summary>
    public SelectionStep FinishSample()
    {
        _sample ??= new SparseCounts(1 << 16);
        try
        {
            return PlanFromSample(_sample, nonZeroCounted: true);
        }
        finally
        {
            _sample.Release();
            _sample = null;
        }
    }

    /// <summary>
    /// Adds to the presample: <paramref name="table"/>'s coarse-bin counts of magnitudes sampled from the data before the
    /// first pass (a few elements from all over the tensor; no non-zero count), as <see cref="RentSampleTable"/> gives it.
    /// </summary>
    internal void AddPresample(uint[] table) => AddSampleCounts(table, nonZero: 0);

    /// <summary>
    /// After the presample: whether it planned a bracket, which the first pass then counts as it computes δ
    /// (<see cref="CountsBracketWhileReading"/>) before <see cref="FinishBracket"/>. When it did not (too few samples,
    /// too wide a bracket), the first pass samples as usual.
    /// </summary>
    public bool FinishPresample()
    {
        _sample ??= new SparseCounts(1 << 16);
        try
        {
            return NeedsPasses && PlanFromSample(_sample, nonZeroCounted: false) == SelectionStep.Bracket;
        }
        finally
        {
            _sample.Release();
            _sample = null;
        }
    }

    /// <summary>Whether a bracket is planned and not yet finished: a pass that computes δ counts it instead of sampling.</summary>
    public bool CountsBracketWhileReading => _bracket is not null;

    /// <summary>The planned bracket's magnitudes as IEEE bits, [Low, High): a kernel that counts it in registers compares against them.</summary>
    internal (uint Low, uint High) BracketBits => (_bracketLow, _bracketHigh);

    private SelectionStep PlanFromSample(SparseCounts sample, bool nonZeroCounted)
    {
        if (!NeedsPasses) return SelectionStep.Done;
        // Without an exact count of the non-zero elements, a threshold of 0 shows as a bracket that starts at 0.
        if (nonZeroCounted && _nonZero <= _keep)
        {
            // The k-th largest magnitude is 0: everything non-zero is kept, and k − nonZero of the zeros.
            ThresholdBits = 0;
            TiesToKeep = _keep - _nonZero;
            TieCount = _elementCount - _nonZero;
            return SelectionStep.Done;
        }
        var size = sample.Total;
        if (size < MinSampleSize) return SelectionStep.CoarseAndFine;

        // Ranks counted from the largest magnitude; the threshold is expected at sample rank q·S. The margin is five
        // standard deviations of that rank, so the exact passes are needed about once in a million tensors.
        var q = (double)_keep / _elementCount;
        var expected = q * size;
        var margin = 5 * Math.Sqrt(size * q * (1 - q)) + 8;
        var (upperRank, lowerRank) = (expected - margin, expected + margin);
        const int highestBin = (int)(MagnitudeMask >> 16);
        int top = highestBin, bottom = 0;
        long above = 0;
        var topFound = upperRank < 0;
        // From the largest magnitude down; the ranks move only at bins with counts (lowerRank > 0), so the others are passed over.
        foreach (var b in sample.Descending())
        {
            if (b > highestBin) continue;
            above += sample[b];
            if (!topFound && above > upperRank)
            {
                top = (int)b;
                topFound = true;
            }
            if (above >= lowerRank)
            {
                bottom = (int)b;
                break;
            }
        }
        if (top - bottom + 1 > MaxBracketBins) return SelectionStep.CoarseAndFine;
        _bracketLow = (uint)bottom << 16;
        _bracketHigh = (uint)(top + 1) << 16;
        _aboveBracket = 0;
        _zerosInBracket = 0;
        _bracket = new SparseCounts((int)(_bracketHigh - _bracketLow));
        return SelectionStep.Bracket;
    }

    /// <summary>Counts one piece of the data against the bracket; every element must be added once, in any order.</summary>
    public unsafe void AddBracket(float* data, long count)
    {
        var ranges = Partition.Ranges(count);
        if (ranges.Any(r => r.End - r.Start > MaxSpan)) _rangeEntries = null;
        var recorded = BeginBracketCall(ranges.Length);
        Parallel.For(0, ranges.Length, r =>
        {
            var (rangeStart, rangeEnd) = ranges[r];
            for (var start = rangeStart; start < rangeEnd; start += MaxSpan)
            {
                var end = Math.Min(rangeEnd, start + MaxSpan);
                var table = RentBracketTable();
                long above = 0, zeros = 0;
                CountBracket(table, data + start, end - start, ref above, ref zeros);
                AddBracketCounts(table, above, zeros, recorded, r);
            }
        });
        EndBracketCall(recorded);
    }

    /// <summary>
    /// Starts one call's bracket counts (a chunk, split into <paramref name="ranges"/> parallel ranges by
    /// <see cref="Partition.Ranges"/>): where each range's counts are recorded for the tie budgets, or null when they are not kept.
    /// </summary>
    internal (uint Entry, uint Count)[][]? BeginBracketCall(int ranges) => _rangeEntries is null ? null : new (uint, uint)[ranges][];

    /// <summary>Counts <paramref name="count"/> elements against the bracket into a range's table and counts (at most <see cref="MaxSpan"/> per table).</summary>
    internal unsafe void CountBracket(uint[] table, float* data, long count, ref long above, ref long zeros)
    {
        var (a, z) = CountBracket(table, (uint*)data, count, _bracketLow, _bracketHigh);
        above += a;
        zeros += z;
    }

    /// <summary>Ends one call's bracket counts: its ranges' entries join those of the calls before it (in element order).</summary>
    internal void EndBracketCall((uint Entry, uint Count)[][]? recorded)
    {
        if (recorded is null || _rangeEntries is null) return;
        _recordedEntries += recorded.Sum(e => e?.Length ?? 0);
        if (_recordedEntries > MaxRecordedEntries) _rangeEntries = null;
        else _rangeEntries.Add(recorded);
    }

    /// <summary>
    /// After a bracket found the threshold: how many threshold ties each parallel range (see <see cref="Partition.Ranges"/>) of
    /// AddBracket call <paramref name="piece"/> keeps under the keep rule (the first <see cref="TiesToKeep"/> in
    /// element order): <see cref="long.MaxValue"/> where the range keeps all of its ties, as every range but one does;
    /// null when not recorded (then <see cref="DropExcessTies"/> applies the rule).
    /// </summary>
    public long[]? TieBudgets(int piece) => _tieBudgets is { } budgets && piece < budgets.Count ? budgets[piece] : null;

    private void PlanTieBudgets(uint entry)
    {
        var calls = _rangeEntries;
        _rangeEntries = null;
        if (calls is null) return;
        var budgets = new List<long[]>(calls.Count);
        long remaining = TiesToKeep, seen = 0;
        foreach (var call in calls)
        {
            var budget = new long[call.Length];
            for (var r = 0; r < call.Length; r++)
            {
                var ties = CountAt(call[r], entry);
                budget[r] = ties <= remaining ? long.MaxValue : remaining;
                remaining -= Math.Min(ties, remaining);
                seen += ties;
            }
            budgets.Add(budget);
        }
        // Every element must have been counted once, in pieces the caller can name again.
        _tieBudgets = seen == TieCount ? budgets : null;
    }

    private static long CountAt((uint Entry, uint Count)[] entries, uint entry)
    {
        int low = 0, high = entries.Length - 1;
        while (low <= high)
        {
            var middle = (low + high) >> 1;
            if (entries[middle].Entry == entry) return entries[middle].Count;
            if (entries[middle].Entry < entry) low = middle + 1;
            else high = middle - 1;
        }
        return 0;
    }

    /// <summary>Finds the threshold inside the bracket; <see cref="SelectionStep.CoarseAndFine"/> when the sample misled and it lies outside.</summary>
    public SelectionStep FinishBracket()
    {
        var bracket = _bracket ?? throw new InvalidOperationException("No bracket was planned.");
        _bracket = null;
        try
        {
            bracket.Add(0, _zerosInBracket);
            var need = _keep - _aboveBracket;
            if (need <= 0) return SelectionStep.CoarseAndFine;
            // From the largest magnitude down; an entry without counts cannot hold the threshold (need > 0).
            long above = 0;
            foreach (var b in bracket.Descending())
            {
                if (above + bracket[b] >= need)
                {
                    ThresholdBits = _bracketLow + b;
                    TiesToKeep = need - above;
                    TieCount = bracket[b];
                    PlanTieBudgets(b);
                    return SelectionStep.Done;
                }
                above += bracket[b];
            }
            return SelectionStep.CoarseAndFine;
        }
        finally
        {
            bracket.Release();
        }
    }

    /// <summary>
    /// True when trimming can change no value but the sign of a zero: everything is kept, or the threshold is 0
    /// (every non-zero element is above it). A merge that ignores zeros may then skip the trim.
    /// </summary>
    public bool TrimKeepsEveryNonZero => KeepAll || (!KeepNone && ThresholdBits == 0);
}
