namespace Dare.Engine.Merge;

/// <summary>
/// Σ|x| over float32 data that does not depend on summation order, threads or chunking: the 24-bit significands
/// are summed exactly as integers per binary exponent, and only <see cref="Total"/> rounds (in a fixed order).
/// So the DARE L1 rescale factor, and hence the output, is the same whatever the chunk size.
/// </summary>
internal sealed class L1Accumulator
{
    private readonly long[] _significandSums = new long[256];
    private readonly object _lock = new();
    private double _nonFinite;

    public unsafe void Add(float* data, long count)
    {
        var ranges = Partition.Ranges(count);
        Parallel.For(0, ranges.Length, r =>
        {
            var local = new long[256];
            var nonFinite = 0.0;
            var (start, end) = ranges[r];
            var bits = (uint*)data;
            for (var i = start; i < end; i++)
            {
                var b = bits[i];
                var exponent = (b >> 23) & 0xFF;
                if (exponent == 0xFF)
                {
                    nonFinite += Math.Abs(data[i]);
                    continue;
                }
                local[exponent] += (b & 0x7FFFFF) | (exponent == 0 ? 0u : 0x800000u);
            }
            lock (_lock)
            {
                for (var e = 0; e < 256; e++) _significandSums[e] += local[e];
                _nonFinite += nonFinite;
            }
        });
    }

    /// <summary>The sum, each exponent's exact integer total scaled and added from the smallest exponent up.</summary>
    public double Total
    {
        get
        {
            double total = 0;
            for (var e = 0; e < 255; e++)
            {
                if (_significandSums[e] != 0) total += Math.ScaleB(_significandSums[e], Math.Max(e, 1) - 150);
            }
            return total + _nonFinite;
        }
    }
}
