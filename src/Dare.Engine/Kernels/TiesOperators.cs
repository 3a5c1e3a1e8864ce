using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Dare.Engine.Merge;

/// <summary>
/// One range's TIES combine (see <see cref="CombineKernels.Ties"/>): the inputs, their weights, trim thresholds and
/// the range's tie budgets (consumed in element order, so shared by every copy of the operator), the scalar body
/// that the TIES operators share and its scratch (<paramref name="kept"/>, one value per input).
/// </summary>
internal readonly unsafe struct TiesCombineRange(IntPtr[] inputs, double[] weights, uint[] thresholds, long[] tieBudgets, bool normalize, double lambda,
    CombineTarget target, float[] kept)
{
    public IntPtr[] Inputs { get; } = inputs;
    public double[] Weights { get; } = weights;
    public uint[] Thresholds { get; } = thresholds;
    public long[] TieBudgets { get; } = tieBudgets;
    public bool Normalize { get; } = normalize;
    public double Lambda { get; } = lambda;
    public CombineTarget Target { get; } = target;

    /// <summary>Input i's values for a few-input operator (null past the inputs).</summary>
    public float* FewInput(int i) => i < Inputs.Length ? (float*)Inputs[i] : null;

    /// <summary>Input i's weight for a few-input operator (0 past the inputs).</summary>
    public double FewWeight(int i) => i < Inputs.Length ? Weights[i] : 0;

    /// <summary>The magnitude (as IEEE bits) from which input i is kept by a few-input operator: its threshold, or just above it when its budget keeps no ties.</summary>
    public uint KeptFrom(int i) => i < Inputs.Length ? KeptFrom(Thresholds[i], keepsTies: TieBudgets[i] != 0) : 0;

    /// <summary>The magnitude (as IEEE bits) from which a value is kept under <paramref name="threshold"/>: it, or just above it where ties are not kept (uint.MaxValue keeps nothing either way).</summary>
    public static uint KeptFrom(uint threshold, bool keepsTies) => keepsTies || threshold == uint.MaxValue ? threshold : threshold + 1;

    /// <summary>Throws unless there are <paramref name="count"/> inputs, each keeping all its ties or none (what the few-input operators take).</summary>
    public void CheckFewInputs(int count)
    {
        if (Inputs.Length != count) throw new ArgumentException($"Expected {count} inputs, not {Inputs.Length}.");
        if (TieBudgets.Any(b => b != 0 && b != long.MaxValue)) throw new ArgumentException("Each input must keep all its ties or none.");
    }

    /// <summary>This range with other tie budgets (for a part of it).</summary>
    public TiesCombineRange WithTieBudgets(long[] budgets) => new(Inputs, Weights, Thresholds, budgets, Normalize, Lambda, Target, kept);

    /// <summary>Element j, electing the sign by Σ wᵢtᵢ or, with <paramref name="bySignCount"/>, by #positive − #negative.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Scalar(long j, bool bySignCount)
    {
        var (inputs, thresholds, tieBudgets) = (Inputs, Thresholds, TieBudgets);
        for (var i = 0; i < inputs.Length; i++) kept[i] = Kept(((float*)inputs[i])[j], thresholds[i], ref tieBudgets[i]);
        Target.Store(Merged(kept, Weights, bySignCount, Normalize, Lambda), j);
    }

    /// <summary>
    /// One element's TIES from its inputs' kept values: the sign elected by Σ wᵢtᵢ (or, with <paramref name="bySignCount"/>,
    /// by #positive − #negative), the disjoint (weighted) mean of the agreeing values, × λ, rounded to float.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Merged(ReadOnlySpan<float> kept, double[] weights, bool bySignCount, bool normalize, double lambda)
    {
        double election = 0;
        for (var i = 0; i < kept.Length; i++) election += bySignCount ? Math.Sign(kept[i]) : weights[i] * kept[i];
        var positive = election >= 0;
        double sum = 0, weight = 0;
        for (var i = 0; i < kept.Length; i++)
        {
            var x = kept[i];
            if (positive ? x > 0 : x < 0)
            {
                sum += weights[i] * x;
                weight += weights[i];
            }
        }
        var merged = normalize ? (weight != 0 ? sum / weight : 0) : sum;
        return (float)(merged * lambda);
    }

    /// <summary>x if kept by the trim (above the threshold, or equal while the range's tie budget lasts), else 0.</summary>
    private static float Kept(float x, uint threshold, ref long tieBudget)
    {
        var magnitude = BitConverter.SingleToUInt32Bits(x) & 0x7FFFFFFF;
        if (magnitude > threshold) return x;
        if (magnitude != threshold || tieBudget == 0) return 0f;
        tieBudget--;
        return x;
    }
}

/// <summary>
/// TIES element by element: with the sign elected by #positive − #negative (the vector bodies elect by sum), or by
/// Σ wᵢtᵢ for more than <see cref="TiesBySumOperator.MaxInputs"/> inputs (the vector body's scratch is on the stack).
/// </summary>
internal readonly struct TiesScalarOperator(TiesCombineRange range, bool bySignCount) : IElementOperator
{
    public static int Lanes => 1;
    public static bool IsVectorized => false;

    public void Vector(long j) => Scalar(j);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Scalar(long j) => range.Scalar(j, bySignCount);
}

/// <summary>
/// TIES with the sign elected by Σ wᵢtᵢ, eight elements at a time in double precision. Each lane does exactly the
/// scalar body's IEEE operations in the same order (a disagreeing input adds +0.0, which leaves the sums unchanged:
/// they start at +0.0 and so are never −0.0), and the tie budgets are consumed in lane order, as the scalar body
/// consumes them in element order. <paramref name="low"/> and <paramref name="high"/> are the caller's scratch, one
/// vector per input each, for the inputs' trimmed values widened to double.
/// </summary>
internal readonly unsafe struct TiesBySumOperator(TiesCombineRange range, Vector256<double>* low, Vector256<double>* high) : IElementOperator
{
    /// <summary>The most inputs the vector body takes.</summary>
    public const int MaxInputs = 16;

    private static readonly Vector256<uint> LaneBits = Vector256.Create(1u, 2u, 4u, 8u, 16u, 32u, 64u, 128u);

    private readonly Vector256<double> _lambda = Vector256.Create(range.Lambda);

    public static int Lanes => 8;
    public static bool IsVectorized => true;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Vector(long j)
    {
        var inputs = range.Inputs;
        var weights = range.Weights;
        var thresholds = range.Thresholds;
        var tieBudgets = range.TieBudgets;
        var count = inputs.Length;
        var zero = Vector256<double>.Zero;
        Vector256<double> electionLow = zero, electionHigh = zero;
        for (var i = 0; i < count; i++)
        {
            var x = Vector256.Load((float*)inputs[i] + j);
            var magnitude = x.AsUInt32() & Vector256.Create(0x7FFFFFFFu);
            var threshold = Vector256.Create(thresholds[i]);
            // Only the one range where an input's tie budget runs out needs the bookkeeping; elsewhere all ties
            // are kept (no budget) or none are (budget 0), which a plain compare decides.
            var budget = tieBudgets[i];
            Vector256<uint> kept;
            if (budget == long.MaxValue) kept = Vector256.GreaterThanOrEqual(magnitude, threshold);
            else
            {
                kept = Vector256.GreaterThan(magnitude, threshold);
                if (budget > 0)
                {
                    var ties = Vector256.Equals(magnitude, threshold).ExtractMostSignificantBits();
                    if (ties != 0) kept |= KeptTies(ties, ref tieBudgets[i]);
                }
            }
            (low[i], high[i]) = Vector256.Widen(x & kept.AsSingle());
            var w = Vector256.Create(weights[i]);
            electionLow += w * low[i];
            electionHigh += w * high[i];
        }
        var positiveLow = Vector256.GreaterThanOrEqual(electionLow, zero);
        var positiveHigh = Vector256.GreaterThanOrEqual(electionHigh, zero);
        Vector256<double> sumLow = zero, sumHigh = zero, weightLow = zero, weightHigh = zero;
        for (var i = 0; i < count; i++)
        {
            var w = Vector256.Create(weights[i]);
            var agreeLow = Vector256.ConditionalSelect(positiveLow, Vector256.GreaterThan(low[i], zero), Vector256.LessThan(low[i], zero));
            var agreeHigh = Vector256.ConditionalSelect(positiveHigh, Vector256.GreaterThan(high[i], zero), Vector256.LessThan(high[i], zero));
            sumLow += (w * low[i]) & agreeLow;
            sumHigh += (w * high[i]) & agreeHigh;
            weightLow += w & agreeLow;
            weightHigh += w & agreeHigh;
        }
        if (range.Normalize)
        {
            sumLow = Vector256.ConditionalSelect(Vector256.Equals(weightLow, zero), zero, sumLow / weightLow);
            sumHigh = Vector256.ConditionalSelect(Vector256.Equals(weightHigh, zero), zero, sumHigh / weightHigh);
        }
        range.Target.Store(Vector256.Narrow(sumLow * _lambda, sumHigh * _lambda), j);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Scalar(long j) => range.Scalar(j, bySignCount: false);

    /// <summary>The lanes of <paramref name="ties"/> (a lane bit mask) that the tie budget still keeps, in lane order, as a vector mask.</summary>
    private static Vector256<uint> KeptTies(uint ties, ref long tieBudget) =>
        ~Vector256.Equals(Vector256.Create(KeptTieLanes(ties, ref tieBudget)) & LaneBits, Vector256<uint>.Zero);

    /// <summary>The lanes of <paramref name="ties"/> (a lane bit mask) that the tie budget still keeps, lowest lanes first; the budget is reduced by them.</summary>
    internal static uint KeptTieLanes(uint ties, ref long tieBudget)
    {
        var count = BitOperations.PopCount(ties);
        if (tieBudget >= count)
        {
            tieBudget -= count;
            return ties;
        }
        var kept = 0u;
        for (; tieBudget > 0; tieBudget--)
        {
            kept |= ties & (uint)-(int)ties;
            ties &= ties - 1;
        }
        return kept;
    }
}
