using System.Numerics;

namespace Dare.Engine.Merge;

/// <summary>
/// Counts over a wide range of entries of which few are used: a TIES sample's 64K coarse bins, or a bracket's few
/// coarse bins at full resolution (~330K entries), where bfloat16 δ take a few hundred distinct magnitudes. A bit per
/// block of 64 entries is set where a count was added, so reading the counts and clearing them cost what they hold,
/// not their width (clearing and reading whole tables was 0.2–0.3 s of a large TIES export, on its pipeline thread).
/// The arrays come from <see cref="CleanArrays{T}"/>: <see cref="Release"/> clears the marked blocks before returning
/// one (an instance never released leaves its array to the collector).
/// </summary>
internal sealed class SparseCounts
{
    /// <summary>The widest counts: a bracket of 16 coarse bins.</summary>
    private const int MaxWidth = 16 << 16;

    private long[]? _counts;
    private readonly ulong[] _blocks;

    /// <param name="width">Entries [0, width), a multiple of 4096 up to 16 × 65536.</param>
    public SparseCounts(int width)
    {
        if (width <= 0 || width > MaxWidth || width % 4096 != 0) throw new ArgumentOutOfRangeException(nameof(width));
        _counts = CleanArrays<long>.Rent(width);
        _blocks = new ulong[width / 4096];
    }

    /// <summary>The sum of every count added.</summary>
    public long Total { get; private set; }

    public long this[uint entry] => Counts[entry];

    private long[] Counts => _counts ?? throw new ObjectDisposedException(nameof(SparseCounts));

    /// <summary>Adds <paramref name="count"/> to <paramref name="entry"/>.</summary>
    public void Add(uint entry, long count)
    {
        if (count == 0) return;
        Counts[entry] += count;
        _blocks[entry >> 12] |= 1UL << (int)((entry >> 6) & 63);
        Total += count;
    }

    /// <summary>
    /// The entries that may hold counts (every entry of a marked block), from the highest down: a scan for the k-th
    /// largest that passes over entries without counts comes to the same entry.
    /// </summary>
    public IEnumerable<uint> Descending()
    {
        for (var word = _blocks.Length - 1; word >= 0; word--)
        {
            for (var bits = _blocks[word]; bits != 0; bits &= ~(1UL << (63 - BitOperations.LeadingZeroCount(bits))))
            {
                var block = (uint)(word * 64 + 63 - BitOperations.LeadingZeroCount(bits)) * 64;
                for (var offset = 64u; offset-- > 0;) yield return block + offset;
            }
        }
    }

    /// <summary>Clears the marked blocks and returns the array to the pool; the counts are gone afterwards.</summary>
    public void Release()
    {
        if (_counts is not { } counts) return;
        _counts = null;
        for (var word = 0; word < _blocks.Length; word++)
        {
            for (var bits = _blocks[word]; bits != 0; bits &= bits - 1) Array.Clear(counts, (word * 64 + BitOperations.TrailingZeroCount(bits)) * 64, 64);
        }
        CleanArrays<long>.Return(counts);
    }
}
