using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Dare.Engine.Merge;

/// <summary>
/// Exact top-k selection by magnitude without sorting or index tensors: a coarse histogram of the upper 16 bits
/// of |x|'s IEEE bit pattern (monotonic in |x|) finds the bin holding the k-th largest magnitude, a fine histogram
/// of the lower 16 bits inside that bin finds the exact value. Memory is two 64K-entry histograms whatever the
/// tensor size; the data may arrive in chunks (each pass sees every chunk in element order).
/// A faster route to the same threshold (sample, then one bracketed pass) is in MagnitudeSelection.Bracket.cs.
/// Keep rule: every |x| above the threshold, plus the first <see cref="TiesToKeep"/> equal to it, in element order.
/// </summary>
public sealed partial class MagnitudeSelection
{
    private const uint MagnitudeMask = 0x7FFFFFFF;
    // Rented by the exact passes only (the bracketed route usually makes them unnecessary).
    private long[]? _coarse;
    private long[]? _fine;
    private readonly long _keep;
    private readonly long _elementCount;
    private long _needInBin;
    private uint _bin;

    /// <param name="keep">How many elements to keep (0 &lt;= keep).</param>
    /// <param name="elementCount">How many elements the tensor has.</param>
    public MagnitudeSelection(long keep, long elementCount)
    {
        _keep = keep;
        _elementCount = elementCount;
        KeepAll = keep >= elementCount;
        KeepNone = keep <= 0;
    }

    public bool KeepAll { get; }
    public bool KeepNone { get; }

    /// <summary>How many elements the selection keeps.</summary>
    public long KeepCount => _keep;

    /// <summary>Whether the passes are needed at all.</summary>
    public bool NeedsPasses => !KeepAll && !KeepNone;

    public uint ThresholdBits { get; private set; }
    public long TiesToKeep { get; private set; }

    /// <summary>The threshold magnitude itself.</summary>
    public float Threshold => BitConverter.UInt32BitsToSingle(ThresholdBits);

    public unsafe void AddCoarse(float* data, long count) => Histogram(data, count, _coarse ??= RentHistogram(), fineBin: null);

    public void FinishCoarse()
    {
        _coarse ??= RentHistogram();
        try
        {
            var (bin, above) = FindFromTop(_coarse, _keep) ?? throw new InvalidOperationException("The coarse pass saw fewer elements than the tensor has.");
            _bin = (uint)bin;
            _needInBin = _keep - above;
        }
        finally
        {
            ReturnHistogram(ref _coarse);
        }
    }

    public unsafe void AddFine(float* data, long count)
    {
        Histogram(data, count, _fine ??= RentHistogram(), fineBin: _bin);
    }

    public void FinishFine()
    {
        _fine ??= RentHistogram();
        try
        {
            var (f, above) = FindFromTop(_fine, _needInBin) ?? throw new InvalidOperationException("The fine pass saw fewer elements than the coarse pass.");
            ThresholdBits = (_bin << 16) | (uint)f;
            TiesToKeep = _needInBin - above;
            TieCount = _fine[f];
        }
        finally
        {
            ReturnHistogram(ref _fine);
        }
    }

    /// <summary>Scanning a 64K-entry histogram from its top bin: the bin where the count reaches <paramref name="rank"/>, and the count above that bin.</summary>
    internal static (int Bin, long Above)? FindFromTop(long[] histogram, long rank)
    {
        long above = 0;
        for (var b = (1 << 16) - 1; b >= 0; b--)
        {
            if (above + histogram[b] >= rank) return (b, above);
            above += histogram[b];
        }
        return null;
    }

    /// <summary>
    /// Zeroes what the selection drops in one chunk. <paramref name="tiesLeft"/> starts at <see cref="TiesToKeep"/>
    /// and carries across chunks in element order.
    /// </summary>
    public unsafe void Trim(float* data, long count, ref long tiesLeft)
    {
        if (KeepAll) return;
        if (KeepNone)
        {
            for (long i = 0; i < count; i++) data[i] = 0f;
            return;
        }
        Trim(data, count, ref tiesLeft, zeroBelow: true);
    }

    /// <summary>
    /// The part of <see cref="Trim"/> that depends on element order: zeroes the elements equal to the threshold beyond
    /// the first <see cref="TiesToKeep"/>. What remains to drop is then exactly |x| below <see cref="KeepBits"/>, which a
    /// combine can test element by element as it reads the data.
    /// </summary>
    public unsafe void DropExcessTies(float* data, long count, ref long tiesLeft)
    {
        if (NeedsPasses && TiesToKeep < TieCount) Trim(data, count, ref tiesLeft, zeroBelow: false);
    }

    /// <summary>Keep |x| (as IEEE bits) at or above this once excess ties are dropped: 0 keeps everything, above any magnitude keeps nothing.</summary>
    public uint KeepBits => KeepAll ? 0 : KeepNone ? uint.MaxValue : ThresholdBits;

    /// <summary>How many elements of the tensor have the threshold magnitude.</summary>
    public long TieCount { get; private set; }

    private unsafe void Trim(float* data, long count, ref long tiesLeft, bool zeroBelow)
    {
        var threshold = ThresholdBits;
        var uints = (uint*)data;
        var ranges = Partition.Ranges(count);
        var ties = new long[ranges.Length];
        Parallel.For(0, ranges.Length, r =>
        {
            var (start, end) = ranges[r];
            ties[r] = zeroBelow
                ? VectorDriver.Run(new BelowThresholdZeroer(uints, threshold), start, end).Ties
                : VectorDriver.Run(new ThresholdTieCounter(uints, threshold), start, end).Ties;
        });
        for (var r = 0; r < ranges.Length; r++)
        {
            if (tiesLeft >= ties[r])
            {
                tiesLeft -= ties[r];
                continue;
            }
            var (start, end) = ranges[r];
            tiesLeft = VectorDriver.Run(new FirstTiesKeeper(uints, threshold, tiesLeft), start, end).TiesLeft;
        }
    }

    /// <summary>Zeroes the elements whose magnitude is below the threshold and counts those equal to it (the ties).</summary>
    private unsafe struct BelowThresholdZeroer(uint* bits, uint threshold) : IElementOperator
    {
        // The operators' broadcasts are fields: the JIT does not always hoist a broadcast out of a branchy loop.
        private readonly Vector256<uint> _limit = Vector256.Create(threshold);

        public long Ties { get; private set; }

        public static int Lanes => 8;
        public static bool IsVectorized => true;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Vector(long i)
        {
            var element = Vector256.Load(bits + i);
            var m = element & Vector256.Create(MagnitudeMask);
            var below = Vector256.LessThan(m, _limit);
            if (below != Vector256<uint>.Zero) Vector256.ConditionalSelect(below, Vector256<uint>.Zero, element).Store(bits + i);
            Ties += BitOperations.PopCount(Vector256.Equals(m, _limit).ExtractMostSignificantBits());
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Scalar(long i)
        {
            var m = bits[i] & MagnitudeMask;
            if (m < threshold) bits[i] = 0;
            else if (m == threshold) Ties++;
        }
    }

    /// <summary>Counts the elements whose magnitude equals the threshold (the ties).</summary>
    private unsafe struct ThresholdTieCounter(uint* bits, uint threshold) : IElementOperator
    {
        private readonly Vector256<uint> _limit = Vector256.Create(threshold);

        public long Ties { get; private set; }

        public static int Lanes => 8;
        public static bool IsVectorized => true;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Vector(long i)
        {
            var m = Vector256.Load(bits + i) & Vector256.Create(MagnitudeMask);
            Ties += BitOperations.PopCount(Vector256.Equals(m, _limit).ExtractMostSignificantBits());
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Scalar(long i)
        {
            if ((bits[i] & MagnitudeMask) == threshold) Ties++;
        }
    }

    /// <summary>
    /// In element order: keeps the first <paramref name="tiesLeft"/> elements whose magnitude equals the threshold and
    /// zeroes the later ones. Whole vectors are skipped or zeroed at once; only the one where the count runs out is
    /// walked element by element.
    /// </summary>
    private unsafe struct FirstTiesKeeper(uint* bits, uint threshold, long tiesLeft) : IElementOperator
    {
        private readonly Vector256<uint> _limit = Vector256.Create(threshold);

        public long TiesLeft { get; private set; } = tiesLeft;

        public static int Lanes => 8;
        public static bool IsVectorized => true;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Vector(long i)
        {
            var element = Vector256.Load(bits + i);
            var equal = Vector256.Equals(element & Vector256.Create(MagnitudeMask), _limit);
            var ties = BitOperations.PopCount(equal.ExtractMostSignificantBits());
            if (ties == 0) return;
            if (ties <= TiesLeft) TiesLeft -= ties;
            else if (TiesLeft == 0) Vector256.ConditionalSelect(equal, Vector256<uint>.Zero, element).Store(bits + i);
            else
            {
                for (var k = 0; k < 8; k++) Scalar(i + k);
            }
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Scalar(long i)
        {
            if ((bits[i] & MagnitudeMask) != threshold) return;
            if (TiesLeft > 0) TiesLeft--;
            else bits[i] = 0;
        }
    }

    /// <summary>
    /// A cleared 64K-entry histogram. There is a selection per tensor and input; allocating its histograms would make
    /// large objects, which the GC reclaims late, and so raise the peak memory.
    /// </summary>
    private static long[] RentHistogram() => CleanArrays<long>.Rent(1 << 16);

    /// <summary>Clears a histogram's 64K counts (a pooled array may be longer; the rest stayed zero), returns it to the pool and clears the reference.</summary>
    private static void ReturnHistogram(ref long[]? histogram)
    {
        if (histogram is null) return;
        Array.Clear(histogram, 0, 1 << 16);
        CleanArrays<long>.Return(histogram);
        histogram = null;
    }

    /// <summary>Elements counted into the uint tables before they are added to the histogram (so no table entry can overflow).</summary>
    internal const long MaxSpan = 1L << 30;

    /// <summary>Ranges at least this long count into four interleaved tables; shorter ones into one (less to clear and add up).</summary>
    private const long InterleaveFrom = 1L << 20;

    /// <summary>
    /// Coarse (fineBin null): counts by the upper 16 bits. Fine: counts by the lower 16 bits within one coarse bin.
    /// Each core counts its range into its own tables, which are then summed into <paramref name="histogram"/>
    /// (integer sums: the result is exact whatever the order).
    /// </summary>
    private static unsafe void Histogram(float* data, long count, long[] histogram, uint? fineBin)
    {
        var ranges = Partition.Ranges(count);
        Parallel.For(0, ranges.Length, r =>
        {
            var (rangeStart, rangeEnd) = ranges[r];
            for (var start = rangeStart; start < rangeEnd; start += MaxSpan)
            {
                var end = Math.Min(rangeEnd, start + MaxSpan);
                var interleave = fineBin is null && end - start >= InterleaveFrom;
                var tables = RentTables(interleave);
                if (fineBin is { } bin) CountFine(tables, (uint*)data + start, end - start, bin);
                else CountCoarse(tables, (uint*)data + start, end - start, interleave);
                AddTables(tables, histogram, interleave);
            }
        });
    }

    /// <summary>One or four (interleaved) 64K-entry count tables, all zeros.</summary>
    private static uint[] RentTables(bool interleave) => CleanArrays<uint>.Rent((interleave ? 4 : 1) << 16);

    /// <summary>Adds the counts to <paramref name="histogram"/>, clears them and returns the tables.</summary>
    private static void AddTables(uint[] tables, long[] histogram, bool interleave)
    {
        lock (histogram)
        {
            for (var b = 0; b < 1 << 16; b++)
            {
                histogram[b] += interleave ? (long)tables[b] + tables[b | 1 << 16] + tables[b | 2 << 16] + tables[b | 3 << 16] : tables[b];
            }
        }
        Array.Clear(tables, 0, (interleave ? 4 : 1) << 16);
        CleanArrays<uint>.Return(tables);
    }

    /// <summary>
    /// Counts |x| by its upper 16 bits, zeros apart (added to bin 0 at the end). Lane i of a vector goes to table
    /// i mod 4 when interleaving, so runs of equal magnitudes do not serialise on one counter.
    /// </summary>
    private static unsafe void CountCoarse(uint[] tables, uint* uints, long count, bool interleave)
    {
        // Table offsets of lanes 1, 2 and 3 (mod 4); all 0 without interleaving.
        var (t1, t2, t3) = interleave ? (1u << 16, 2u << 16, 3u << 16) : (0u, 0u, 0u);
        fixed (uint* t = tables)
        {
            var zeros = VectorDriver.Run(new CoarseBinCounter(uints, t, t1, t2, t3), 0, count).Zeros;
            t[0] += (uint)zeros;
        }
    }

    /// <summary>
    /// Counts magnitudes by their upper 16 bits. Zeros (most of a DARE-dropped tensor) are counted eight at a time with
    /// a vector compare, into <see cref="Zeros"/>; only non-zero lanes touch the tables, lane i at table offset
    /// (0, t1, t2, t3)[i mod 4]. The tail counts every element into table 0.
    /// </summary>
    private unsafe struct CoarseBinCounter(uint* bits, uint* t, uint t1, uint t2, uint t3) : IElementOperator
    {
        public long Zeros { get; private set; }

        public static int Lanes => 8;
        public static bool IsVectorized => true;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Vector(long i)
        {
            var m = Vector256.Load(bits + i) & Vector256.Create(MagnitudeMask);
            var nonZero = ~Vector256.Equals(m, Vector256<uint>.Zero).ExtractMostSignificantBits() & 0xFF;
            if (nonZero == 0xFF)
            {
                var u = bits + i;
                t[(u[0] & MagnitudeMask) >> 16]++;
                t[t1 | (u[1] & MagnitudeMask) >> 16]++;
                t[t2 | (u[2] & MagnitudeMask) >> 16]++;
                t[t3 | (u[3] & MagnitudeMask) >> 16]++;
                t[(u[4] & MagnitudeMask) >> 16]++;
                t[t1 | (u[5] & MagnitudeMask) >> 16]++;
                t[t2 | (u[6] & MagnitudeMask) >> 16]++;
                t[t3 | (u[7] & MagnitudeMask) >> 16]++;
                return;
            }
            Zeros += 8 - BitOperations.PopCount(nonZero);
            for (; nonZero != 0; nonZero &= nonZero - 1)
            {
                var lane = BitOperations.TrailingZeroCount(nonZero);
                t[(lane & 3) switch { 0 => 0, 1 => t1, 2 => t2, _ => t3 } | (bits[i + lane] & MagnitudeMask) >> 16]++;
            }
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Scalar(long i) => t[(bits[i] & MagnitudeMask) >> 16]++;
    }

    /// <summary>Counts, by their lower 16 bits, the |x| whose upper 16 bits are <paramref name="bin"/>.</summary>
    private static unsafe void CountFine(uint[] tables, uint* uints, long count, uint bin)
    {
        fixed (uint* t = tables)
        {
            var zeros = VectorDriver.Run(new FineBinCounter(uints, t, bin), 0, count).Zeros;
            t[0] += (uint)zeros;
        }
    }

    /// <summary>
    /// Counts, by their lower 16 bits, the magnitudes in coarse bin <paramref name="bin"/>: a vector compare skips the
    /// rest. In bin 0 the vector body counts zeros into <see cref="Zeros"/> at once rather than one increment of t[0] each.
    /// </summary>
    private unsafe struct FineBinCounter(uint* bits, uint* t, uint bin) : IElementOperator
    {
        private readonly Vector256<uint> _binVector = Vector256.Create(bin);

        public long Zeros { get; private set; }

        public static int Lanes => 8;
        public static bool IsVectorized => true;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Vector(long i)
        {
            var m = Vector256.Load(bits + i) & Vector256.Create(MagnitudeMask);
            var inBin = Vector256.Equals(Vector256.ShiftRightLogical(m, 16), _binVector).ExtractMostSignificantBits();
            if (inBin == 0) return;
            if (bin == 0)
            {
                var zero = Vector256.Equals(m, Vector256<uint>.Zero).ExtractMostSignificantBits();
                Zeros += BitOperations.PopCount(zero);
                inBin &= ~zero;
            }
            for (; inBin != 0; inBin &= inBin - 1)
            {
                t[bits[i + BitOperations.TrailingZeroCount(inBin)] & 0xFFFF]++;
            }
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Scalar(long i)
        {
            var m = bits[i] & MagnitudeMask;
            if (m >> 16 == bin) t[m & 0xFFFF]++;
        }
    }
}
