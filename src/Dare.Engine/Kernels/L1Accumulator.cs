using System.Runtime.CompilerServices;

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
        Partition.Run(count, (_, start, end) => AddRange((uint*)data, start, end));
    }

    /// <summary>
    /// Adds sums computed elsewhere the same way (the device backend's): each exponent's significand total, and Σ|x| of
    /// the non-finite elements (∞ or NaN whatever the order, as here).
    /// </summary>
    public void AddExact(long[] significandSums, double nonFinite)
    {
        lock (_lock)
        {
            for (var e = 0; e < 256; e++) _significandSums[e] += significandSums[e];
            _nonFinite += nonFinite;
        }
    }

    private unsafe void AddRange(uint* bits, long start, long end)
    {
        var local = stackalloc long[256];
        new Span<long>(local, 256).Clear();
        var nonFinite = VectorDriver.Run(new ExponentSums(bits, local), start, end).NonFinite;
        lock (_lock)
        {
            for (var e = 0; e < 256; e++) _significandSums[e] += local[e];
            _nonFinite += nonFinite;
        }
    }

    /// <summary>
    /// Adds each finite element's 24-bit significand to its exponent's sum, and |x| of the others (∞, NaN) to
    /// <see cref="NonFinite"/> in element order. Scalar only: 256 counters indexed per element are a scatter, which
    /// AVX2 does not have.
    /// </summary>
    private unsafe struct ExponentSums(uint* bits, long* sums) : IElementOperator
    {
        public double NonFinite { get; private set; }

        public static int Lanes => 1;
        public static bool IsVectorized => false;

        public void Vector(long i) => Scalar(i);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Scalar(long i)
        {
            var b = bits[i];
            var exponent = (b >> 23) & 0xFF;
            if (exponent == 0xFF)
            {
                NonFinite += Math.Abs(BitConverter.UInt32BitsToSingle(b));
                return;
            }
            sums[exponent] += (b & 0x7FFFFF) | (exponent == 0 ? 0u : 0x800000u);
        }
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
