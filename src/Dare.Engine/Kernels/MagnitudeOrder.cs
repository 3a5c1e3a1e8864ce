namespace Dare.Engine.Merge;

/// <summary>
/// A row's positions in order of magnitude, equal magnitudes by position: the order of sorting (|bits| &lt;&lt; 32 | position),
/// found by a stable least-significant-digit radix sort over the 31 magnitude bits, one byte per pass. That is a few
/// linear passes where a comparison sort of a 2048-entry row does eleven, and a pass whose byte is the same in every
/// entry is skipped (δ of two bfloat16 values has a zero low byte). One instance per thread: it keeps its buffers.
/// </summary>
internal sealed unsafe class MagnitudeOrder
{
    private ulong[] _entries = [], _spare = [];
    private readonly int[] _counts = new int[4 * 256];

    /// <summary>(|bits| &lt;&lt; 32 | position) of row[0..n), ascending; valid until the next call.</summary>
    public ReadOnlySpan<ulong> Sort(float* row, int n)
    {
        if (n == 0) return [];
        if (_entries.Length < n) (_entries, _spare) = (new ulong[n], new ulong[n]);
        var (source, target, counts) = (_entries, _spare, _counts);
        Array.Clear(counts);
        var bits = (uint*)row;
        fixed (int* histograms = counts)
        {
            // One read of the row fills the entries and the four bytes' histograms.
            for (var i = 0; i < n; i++)
            {
                var magnitude = bits[i] & 0x7FFFFFFF;
                source[i] = ((ulong)magnitude << 32) | (uint)i;
                histograms[magnitude & 0xFF]++;
                histograms[256 + ((magnitude >> 8) & 0xFF)]++;
                histograms[512 + ((magnitude >> 16) & 0xFF)]++;
                histograms[768 + (magnitude >> 24)]++;
            }
            for (var digit = 0; digit < 4; digit++)
            {
                var shift = 32 + 8 * digit;
                var histogram = histograms + 256 * digit;
                if (histogram[(int)(source[0] >> shift) & 0xFF] == n) continue;
                // Counts become each byte value's first slot; a stable scatter keeps earlier passes' order within a value.
                for (int value = 0, offset = 0; value < 256; value++) (histogram[value], offset) = (offset, offset + histogram[value]);
                for (var i = 0; i < n; i++)
                {
                    var entry = source[i];
                    target[histogram[(int)(entry >> shift) & 0xFF]++] = entry;
                }
                (source, target) = (target, source);
            }
        }
        return source.AsSpan(0, n);
    }
}
