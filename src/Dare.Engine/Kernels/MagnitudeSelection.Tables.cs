using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Dare.Engine.Merge;

/// <summary>
/// The tables that the sample and the bracket are counted into, a range at a time, before they are added to the
/// selection, and the bracket's own counter.
/// </summary>
public sealed partial class MagnitudeSelection
{
    /// <summary>
    /// A sample table, all zeros: 64K coarse-bin counts, then a bitmap as a bracket table has (<see cref="CountSampleBin"/>
    /// counts into it; <see cref="AddSampleCounts"/> takes the counts, leaves it clean and returns it). A kernel that
    /// samples several inputs at once rents one per input.
    /// </summary>
    internal static uint[] RentSampleTable() => CleanArrays<uint>.Rent((1 << 16) + (1 << 16) / 2048);

    /// <summary>
    /// Hands each counted entry of a table of <paramref name="width"/> counts and its bitmap (see <see cref="CountEntry"/>)
    /// to <paramref name="take"/>, in order, from the blocks the bitmap marks, and leaves the table all zeros.
    /// </summary>
    private static void TakeCounts(uint[] table, int width, Action<uint, uint> take)
    {
        for (var word = 0; word < width / 2048; word++)
        {
            for (var bits = table[width + word]; bits != 0; bits &= bits - 1)
            {
                var block = (word * 32 + BitOperations.TrailingZeroCount(bits)) * 64;
                for (var b = block; b < block + 64; b++)
                {
                    if (table[b] == 0) continue;
                    take((uint)b, table[b]);
                    table[b] = 0;
                }
            }
            table[width + word] = 0;
        }
    }

    /// <summary>
    /// A bracket table, all zeros: the bracket's width of counts, then a bitmap with a bit per 64 counts, set where one
    /// was counted (<see cref="CountEntry"/>). In a large merge a bracket of ~5 coarse bins (330K counts) sees a few
    /// hundred distinct magnitudes (δ of bfloat16 weights), so <see cref="AddBracketCounts"/> walks the marked blocks
    /// and zeroes them as it goes, instead of walking and clearing the whole table for every range (0.3 s of a large
    /// TIES export), and returns it; a table whose counting was cut short (an error) is not returned.
    /// A kernel that counts several inputs at once rents one per input.
    /// </summary>
    internal uint[] RentBracketTable()
    {
        var width = (int)(_bracketHigh - _bracketLow);
        return CleanArrays<uint>.Rent(width + width / 2048);
    }

    /// <summary>Counts entry <paramref name="entry"/> of a bracket table of <paramref name="width"/> counts, marking its block of 64 in the bitmap after them.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static unsafe void CountEntry(uint* table, uint width, uint entry)
    {
        table[entry]++;
        table[width + (entry >> 11)] |= 1u << (int)((entry >> 6) & 31);
    }

    /// <summary>Adds range <paramref name="range"/>'s table and counts to the bracket, and records its entries in <paramref name="recorded"/>.</summary>
    internal void AddBracketCounts(uint[] table, long above, long zeros, (uint Entry, uint Count)[][]? recorded, int range)
    {
        var width = (int)(_bracketHigh - _bracketLow);
        // The counted entries in order; the table is left all zeros.
        var entries = new List<(uint Entry, uint Count)>();
        TakeCounts(table, width, (entry, count) => entries.Add((entry, count)));
        CleanArrays<uint>.Return(table);
        lock (_bracket!)
        {
            foreach (var (entry, count) in entries) _bracket.Add(entry, count);
            _aboveBracket += above;
            _zerosInBracket += zeros;
        }
        if (recorded is null) return;
        // Zeros were counted apart from the table; their entry is 0 (only a zero has magnitude bits 0).
        if (zeros != 0)
        {
            if (entries.Count > 0 && entries[0].Entry == 0) entries[0] = (0, entries[0].Count + (uint)zeros);
            else entries.Insert(0, (0, (uint)zeros));
        }
        recorded[range] = entries.ToArray();
    }

    /// <summary>
    /// Counts magnitudes at or above <paramref name="high"/>, and histograms those in [low, high) by their offset from
    /// <paramref name="low"/>; zeros (when low is 0) are counted apart, eight at a time. Returns (above, zeros).
    /// </summary>
    private static unsafe (long Above, long Zeros) CountBracket(uint[] table, uint* bits, long count, uint low, uint high)
    {
        fixed (uint* t = table)
        {
            var counter = VectorDriver.Run(new BracketCounter(bits, t, low, high), 0, count);
            return (counter.Above, counter.Zeros);
        }
    }

    /// <summary>
    /// Counts magnitudes at or above <paramref name="high"/> into <see cref="Above"/> and histograms those in
    /// [low, high) by their offset from <paramref name="low"/>. When low is 0 the vector body counts zeros into
    /// <see cref="Zeros"/> at once instead of one increment of t[0] each; the tail counts them in the table.
    /// </summary>
    private unsafe struct BracketCounter(uint* bits, uint* t, uint low, uint high) : IElementOperator
    {
        // Broadcast once: a loop with inner branches does not get the broadcasts hoisted out of it.
        private readonly Vector256<uint> _lowVector = Vector256.Create(low), _highVector = Vector256.Create(high);

        public long Above { get; private set; }
        public long Zeros { get; private set; }

        public static int Lanes => 8;
        public static bool IsVectorized => true;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Vector(long i)
        {
            var m = Vector256.Load(bits + i) & Vector256.Create(MagnitudeMask);
            var isAbove = Vector256.GreaterThanOrEqual(m, _highVector);
            Above += BitOperations.PopCount(isAbove.ExtractMostSignificantBits());
            var inside = (Vector256.GreaterThanOrEqual(m, _lowVector) & ~isAbove).ExtractMostSignificantBits();
            if (inside == 0) return;
            if (low == 0)
            {
                var zero = Vector256.Equals(m, Vector256<uint>.Zero).ExtractMostSignificantBits();
                Zeros += BitOperations.PopCount(zero);
                inside &= ~zero;
            }
            for (; inside != 0; inside &= inside - 1)
            {
                CountEntry(t, high - low, (bits[i + BitOperations.TrailingZeroCount(inside)] & MagnitudeMask) - low);
            }
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Scalar(long i)
        {
            var m = bits[i] & MagnitudeMask;
            if (m >= high) Above++;
            else if (m >= low) CountEntry(t, high - low, m - low);
        }
    }
}
