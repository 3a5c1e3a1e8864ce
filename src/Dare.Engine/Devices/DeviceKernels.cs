using TorchSharp;
using static TorchSharp.torch;

namespace Dare.Engine.Merge;

/// <summary>
/// The merge's element-wise math as TorchSharp tensor operations on any device, reproducing the SIMD kernels bit for
/// bit: the DARE mask from the same counter hash (<see cref="DareMask"/>) in int64 arithmetic that never overflows,
/// TIES's exact magnitude selection as the same two 64K-bin histograms (<see cref="MagnitudeSelection"/>), and the
/// combines with the same IEEE operations in the same order (<see cref="CombineKernels"/>).
/// </summary>
internal static class DeviceKernels
{
    private const long Low32 = 0xFFFFFFFFL;

    /// <summary>
    /// Which elements [first, first + count) of a tensor DARE drops (a bool tensor on <paramref name="device"/>):
    /// hash(index) &lt; threshold, hash as in <see cref="DareMask.Hash"/>. uint32 values live in int64 lanes, masked
    /// to 32 bits after each step; the steps work in place on one int64 buffer (plus one temporary), because each
    /// int64 tensor of a 16M-element chunk is 128 MB.
    /// </summary>
    public static Tensor DropMask(ulong key, uint threshold, long first, long count, Device device) => HashesThen(key, first, count, device, h => h.lt((long)threshold));

    /// <summary>The hashes of elements [first, first + count) as int64 (uint32 values), as <see cref="DareMask.Hash"/> computes them.</summary>
    public static Tensor Hashes(ulong key, long first, long count, Device device) => HashesThen(key, first, count, device, h => h.clone());

    /// <summary>
    /// DELLA's MagPrune (<see cref="DellaDrop.Apply"/>) of whole rows of δ: each row ranked by |δ| (ties by position,
    /// as <see cref="MagnitudeOrder"/>), the entry of rank r dropped when its hash is below thresholds[r − 1], a
    /// survivor multiplied by scales[r − 1]. Returns the pruned δ (a new tensor) and the drop mask.
    /// </summary>
    public static (Tensor Delta, Tensor Dropped) DellaPrune(Tensor delta, long first, ulong key, long rowLength, uint[] thresholds, float[] scales)
    {
        using var scope = NewDisposeScope();
        var device = delta.device;
        var rows = delta.shape[0] / rowLength;
        var values = delta.view(rows, rowLength);
        var (_, order) = MagnitudeBits(values).sort(1, false, true);
        // The rank of each position: order lists positions by rank, so scattering 0, 1, … to them inverts it.
        var ranks = empty_like(order).scatter_(1, order, arange(rowLength, ScalarType.Int64, device).expand(rows, rowLength));
        var threshold = tensor(thresholds.Select(t => (long)t).ToArray(), ScalarType.Int64, device).take(ranks);
        var scale = tensor(scales, ScalarType.Float32, device).take(ranks);
        var dropped = Hashes(key, first, rows * rowLength, device).view(rows, rowLength).lt(threshold);
        var pruned = values.mul(scale).masked_fill_(dropped, 0f);
        return (pruned.view(-1).MoveToOuterDisposeScope(), dropped.view(-1).MoveToOuterDisposeScope());
    }

    /// <summary>The hash loop shared by <see cref="DropMask"/> and <see cref="Hashes"/>: <paramref name="select"/> maps each block's int64 hashes to what is kept.</summary>
    private static Tensor HashesThen(ulong key, long first, long count, Device device, Func<Tensor, Tensor> select)
    {
        using var scope = NewDisposeScope();
        var parts = new List<Tensor>();
        for (var position = 0L; position < count;)
        {
            // Split at 2^32-element block boundaries, where the per-block keys change (as DareMask.Apply does).
            var index = first + position;
            var length = DareMask.InBlock(index, count - position);
            var (k0, k1) = DareMask.BlockKeys(key, index >> 32);
            using var h = arange(index & Low32, (index & Low32) + length, 1L, ScalarType.Int64, device);
            MulLow32(h, 0x9E3779B1u);
            And(h.add_((long)k0), Low32);
            Mix(h);
            using (var k1Tensor = Scalar(k1, device)) h.bitwise_xor_(k1Tensor);
            Mix(h);
            parts.Add(select(h));
            position += length;
        }
        return (parts.Count == 1 ? parts[0] : cat(parts, 0)).MoveToOuterDisposeScope();
    }

    /// <summary>δ × scale with dropped elements zeroed (the order of <see cref="DareMask.Apply"/>: multiply, then select); a new tensor.</summary>
    public static Tensor ApplyDrop(Tensor delta, Tensor dropped, float scale) =>
        scale == 1f ? delta.masked_fill(dropped, 0f) : delta.mul(scale).masked_fill_(dropped, 0f);

    // In place: x ^= x >> 16; x *= 0x85EBCA6B; x ^= x >> 13; x *= 0xC2B2AE35; x ^= x >> 16 (uint32, as DareMask.Mix).
    private static void Mix(Tensor x)
    {
        XorShift(x, 16);
        MulLow32(x, 0x85EBCA6Bu);
        XorShift(x, 13);
        MulLow32(x, 0xC2B2AE35u);
        XorShift(x, 16);
    }

    // Non-negative values only, so the arithmetic shift is the logical one.
    private static void XorShift(Tensor x, int bits)
    {
        using var amount = Scalar(bits, x.device);
        using var shifted = x.bitwise_right_shift(amount);
        x.bitwise_xor_(shifted);
    }

    /// <summary>x = (x · c) mod 2^32 in place, for x in [0, 2^32): c in 16-bit halves, so no int64 product exceeds 2^49 (no signed overflow on any device).</summary>
    private static void MulLow32(Tensor x, uint c)
    {
        using var high = x.mul((long)(c >> 16));
        And(high, 0xFFFF).mul_(65536L);
        And(x.mul_((long)(c & 0xFFFF)).add_(high), Low32);
    }

    private static Tensor And(Tensor x, long mask)
    {
        using var value = Scalar(mask, x.device);
        return x.bitwise_and_(value);
    }

    private static Tensor Scalar(long value, Device device) => tensor(value, ScalarType.Int64, device);

    /// <summary>
    /// |x|'s float32 IEEE bit pattern (monotonic in |x|) as int64, the quantity TIES ranks by. TorchSharp cannot view a
    /// tensor as another dtype, so the bits are rebuilt exactly in float64 from frexp (|x| = m·2^e, m in [0.5, 1)): a
    /// normal number has exponent field e + 126 and mantissa bits (2m − 1)·2^23; a subnormal (or zero) is |x| / 2^-149.
    /// NaN becomes the canonical quiet NaN's bits (the CPU kernels keep its payload; NaN inputs are refused unless allowed).
    /// </summary>
    public static Tensor MagnitudeBits(Tensor delta)
    {
        using var scope = NewDisposeScope();
        var magnitude = delta.abs().to_type(ScalarType.Float64);
        var (mantissa, exponent) = magnitude.frexp();
        var isNormal = exponent.gt(-126).logical_and_(magnitude.ne(0.0));
        var isInfinite = magnitude.isinf();
        var isNaN = magnitude.isnan();
        var bits = exponent.to_type(ScalarType.Float64).add_(126.0).mul_(8388608.0).add_(mantissa.mul_(16777216.0).sub_(8388608.0));
        mantissa.Dispose();
        exponent.Dispose();
        bits = bits.where(isNormal, magnitude.mul_(Math.Pow(2, 149)));
        return bits.masked_fill_(isInfinite, 0x7F800000).masked_fill_(isNaN, 0x7FC00000).to_type(ScalarType.Int64).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Σ|x| as <see cref="L1Accumulator"/> keeps it, so the L1 rescale is the CPU's to the bit: int64[256] of each
    /// exponent's summed 24-bit significands (exact in any order), and Σ|x| of the non-finite elements in float64.
    /// </summary>
    public static (Tensor SignificandSums, Tensor NonFinite) L1Sums(Tensor delta)
    {
        using var scope = NewDisposeScope();
        var bits = MagnitudeBits(delta.view(-1));
        var exponent = bits.bitwise_right_shift(23L);
        var finite = exponent.lt(255L);
        var significand = bits.bitwise_and(0x7FFFFFL).bitwise_or_(exponent.gt(0L).to_type(ScalarType.Int64).mul_(0x800000L));
        var sums = zeros(256, ScalarType.Int64, delta.device).index_add_(0, exponent.masked_select(finite), significand.masked_select(finite), 1L);
        var nonFinite = delta.view(-1).masked_select(finite.logical_not()).abs().to_type(ScalarType.Float64).sum();
        return (sums.MoveToOuterDisposeScope(), nonFinite.MoveToOuterDisposeScope());
    }

    /// <summary>The row of each element [first, first + count) for rows of <paramref name="rowLength"/>, int64 on the device.</summary>
    public static Tensor RowIndex(long first, long count, long rowLength, Device device) =>
        arange(first, first + count, 1L, ScalarType.Int64, device).div_(rowLength, RoundingMode.floor);

    /// <summary>
    /// The chunk of elements [first, first + n) as the rows of <paramref name="rowLength"/> it touches ([rows, row length],
    /// from row <c>FirstRow</c>), the parts of its first and last rows outside the chunk filled with
    /// <paramref name="fill"/>: per-row reductions are then a reduction along dimension 1, with no index per element
    /// (and, on a GPU, no atomic additions to one row's total).
    /// </summary>
    public static (long FirstRow, Tensor Rows) Rows(Tensor values, long first, long rowLength, double fill)
    {
        var n = values.shape[0];
        var firstRow = first / rowLength;
        var lastRow = (first + n - 1) / rowLength;
        var before = first - firstRow * rowLength;
        var after = (lastRow + 1) * rowLength - first - n;
        if (before == 0 && after == 0) return (firstRow, values.view(-1, rowLength));
        var padded = full((lastRow - firstRow + 1) * rowLength, fill, values.dtype, values.device);
        padded.narrow(0, before, n).copy_(values);
        return (firstRow, padded.view(-1, rowLength));
    }

    /// <summary>Counts of the upper 16 bits of |x| (the coarse histogram of <see cref="MagnitudeSelection"/>), int64[65536].</summary>
    public static Tensor CoarseHistogram(Tensor magnitudeBits)
    {
        using var scope = NewDisposeScope();
        return magnitudeBits.div(65536L, rounding_mode: RoundingMode.floor).bincount(null, 1 << 16).MoveToOuterDisposeScope();
    }

    /// <summary>Counts of the lower 16 bits of |x| among elements whose upper 16 bits are <paramref name="bin"/> (the fine histogram), int64[65536].</summary>
    public static Tensor FineHistogram(Tensor magnitudeBits, uint bin)
    {
        using var scope = NewDisposeScope();
        var inBin = magnitudeBits.ge((long)bin << 16).logical_and_(magnitudeBits.lt(((long)bin + 1) << 16));
        // Elements outside the bin go to an extra last bin, dropped after counting.
        var low = magnitudeBits.remainder(65536L).masked_fill_(inBin.logical_not(), 1L << 16);
        return low.bincount(null, (1 << 16) + 1).narrow(0, 0, 1 << 16).MoveToOuterDisposeScope();
    }

    /// <summary>Σ wᵢ·δᵢ, then × scale: mul(w₀), then add(δᵢ, alpha: wᵢ) per input (the fused multiply-add of <see cref="LinearOperator"/>).</summary>
    public static Tensor Linear(Tensor[] deltas, float[] weights, float? scale)
    {
        var sum = deltas[0].mul(weights[0]);
        for (var i = 1; i < deltas.Length; i++) sum.add_(deltas[i], weights[i]);
        return scale is { } s ? sum.mul_(s) : sum;
    }

    /// <summary>
    /// TIES's sign election and disjoint mean over trimmed δs, in float64 with the scalar kernel's operations in its
    /// order (<see cref="CombineKernels.Ties"/>): election Σ wᵢ·xᵢ (or Σ sign xᵢ), ties to +; Σ wᵢ·xᵢ over agreeing
    /// inputs, over Σ wᵢ when normalizing (0 where none agree); × λ; rounded to float32.
    /// </summary>
    public static Tensor Ties(Tensor[] kept, double[] weights, bool bySignCount, bool normalize, double lambda)
    {
        using var scope = NewDisposeScope();
        var values = kept.Select(k => k.to_type(ScalarType.Float64)).ToArray();
        var election = zeros_like(values[0]);
        for (var i = 0; i < values.Length; i++)
        {
            using var term = bySignCount ? values[i].sign() : values[i].mul(weights[i]);
            election.add_(term);
        }
        var positive = election.ge(0.0);
        election.Dispose();
        var sum = zeros_like(values[0]);
        var weight = zeros_like(values[0]);
        for (var i = 0; i < values.Length; i++)
        {
            // Disagreeing inputs add +0.0 (as the vector kernel's masked terms), which leaves the sums unchanged.
            using var agree = where(positive, values[i].gt(0.0), values[i].lt(0.0));
            using var disagree = agree.logical_not();
            using (var term = values[i].mul(weights[i]).masked_fill_(disagree, 0.0)) sum.add_(term);
            using (var share = full_like(sum, weights[i]).masked_fill_(disagree, 0.0)) weight.add_(share);
            values[i].Dispose();
        }
        if (normalize)
        {
            using var none = weight.eq(0.0);
            sum.div_(weight).masked_fill_(none, 0.0);
        }
        return sum.mul_(lambda).to_type(ScalarType.Float32).MoveToOuterDisposeScope();
    }
}
