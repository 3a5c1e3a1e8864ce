using System.Runtime.Intrinsics;

namespace Dare.Engine.Merge;

/// <summary>
/// The figures Measure-TaskVector reports for a float32 chunk of δ (and the guidance's sample its natural sparsity): the
/// largest |x|, Σ|x| and Σx² (float64), and how many |x| lie below a limit. Blocks of 64K elements are summed on every core and their sums added in block order,
/// so the figures do not depend on the number of cores.
/// </summary>
internal static unsafe class DeltaMoments
{
    private const int Block = 1 << 16;

    /// <summary>max |x|, Σ|x| and Σx² over data[0..count).</summary>
    public static (double MaxAbs, double Sum, double SumSquares) Of(float* data, long count)
    {
        var blocks = (int)((count + Block - 1) / Block);
        var partials = new (uint MaxBits, double Sum, double SumSquares)[blocks];
        Parallel.For(0, blocks, b =>
        {
            var start = (long)b * Block;
            partials[b] = OfBlock(data + start, (int)Math.Min(Block, count - start));
        });
        uint maxBits = 0;
        double sum = 0, squares = 0;
        foreach (var (blockMax, blockSum, blockSquares) in partials)
        {
            maxBits = Math.Max(maxBits, blockMax);
            sum += blockSum;
            squares += blockSquares;
        }
        return (BitConverter.UInt32BitsToSingle(maxBits), sum, squares);
    }

    /// <summary>
    /// The naturally sparse entries of data[0..count): |x| below <paramref name="fraction"/> of its tensor's max |x|
    /// (<paramref name="tensorMax"/>), or every entry when that max is 0 (a tensor the fine-tune left alone).
    /// </summary>
    public static long CountSparse(float* data, long count, double tensorMax, double fraction) =>
        tensorMax == 0 ? count : CountBelow(data, count, fraction * tensorMax);

    /// <summary>How many of data[0..count) have (double)|x| &lt; <paramref name="limit"/>.</summary>
    public static long CountBelow(float* data, long count, double limit)
    {
        // Non-negative floats order as their bits: |x| < limit exactly when its bits are below those of the first
        // float not below the limit.
        if (!(limit > 0)) return 0;
        var nearest = (float)limit;
        var firstNotBelow = (double)nearest < limit ? BitConverter.SingleToUInt32Bits(nearest) + 1 : BitConverter.SingleToUInt32Bits(nearest);
        var blocks = (int)((count + Block - 1) / Block);
        var counts = new long[blocks];
        Parallel.For(0, blocks, b =>
        {
            var start = (long)b * Block;
            counts[b] = CountBelowBlock((uint*)(data + start), (int)Math.Min(Block, count - start), firstNotBelow);
        });
        return counts.Sum();
    }

    private static (uint MaxBits, double Sum, double SumSquares) OfBlock(float* data, int n)
    {
        var bits = (uint*)data;
        var i = 0;
        uint maxBits = 0;
        double sum = 0, squares = 0;
        if (Vector256.IsHardwareAccelerated && n >= 8)
        {
            var mask = Vector256.Create(0x7FFFFFFFu);
            var max = Vector256<uint>.Zero;
            Vector256<double> sumLow = Vector256<double>.Zero, sumHigh = Vector256<double>.Zero;
            Vector256<double> squaresLow = Vector256<double>.Zero, squaresHigh = Vector256<double>.Zero;
            for (; i <= n - 8; i += 8)
            {
                var magnitude = Vector256.Load(bits + i) & mask;
                max = Vector256.Max(max, magnitude);
                var (low, high) = Vector256.Widen(magnitude.AsSingle());
                (sumLow, sumHigh) = (sumLow + low, sumHigh + high);
                (squaresLow, squaresHigh) = (squaresLow + low * low, squaresHigh + high * high);
            }
            for (var lane = 0; lane < 8; lane++) maxBits = Math.Max(maxBits, max[lane]);
            sum = Vector256.Sum(sumLow + sumHigh);
            squares = Vector256.Sum(squaresLow + squaresHigh);
        }
        for (; i < n; i++)
        {
            var magnitude = bits[i] & 0x7FFFFFFF;
            maxBits = Math.Max(maxBits, magnitude);
            double value = BitConverter.UInt32BitsToSingle(magnitude);
            sum += value;
            squares += value * value;
        }
        return (maxBits, sum, squares);
    }

    private static long CountBelowBlock(uint* bits, int n, uint firstNotBelow)
    {
        var i = 0;
        long below = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var (mask, limit) = (Vector256.Create(0x7FFFFFFFu), Vector256.Create(firstNotBelow));
            for (; i <= n - 8; i += 8) below += System.Numerics.BitOperations.PopCount(Vector256.LessThan(Vector256.Load(bits + i) & mask, limit).ExtractMostSignificantBits());
        }
        for (; i < n; i++) below += (bits[i] & 0x7FFFFFFF) < firstNotBelow ? 1 : 0;
        return below;
    }
}
