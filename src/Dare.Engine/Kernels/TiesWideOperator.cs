using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Dare.Engine.Merge;

/// <summary>
/// <see cref="TiesBySumOperator"/> sixteen elements at a time with AVX-512: the same IEEE operations per lane in the
/// same order, so the same bits; only the vector width differs (.NET 8 has no width-generic vector type to share one
/// body). <paramref name="low"/> and <paramref name="high"/> are the caller's scratch, one vector per input each.
/// </summary>
internal readonly unsafe struct TiesBySumWideOperator(TiesCombineRange range, Vector512<double>* low, Vector512<double>* high) : IElementOperator
{
    private static readonly Vector512<uint> LaneBits = Vector512.Create(1u, 2u, 4u, 8u, 16u, 32u, 64u, 128u, 256u, 512u, 1024u, 2048u, 4096u, 8192u, 16384u, 32768u);

    private readonly Vector512<double> _lambda = Vector512.Create(range.Lambda);

    public static int Lanes => 16;
    public static bool IsVectorized => Vector512.IsHardwareAccelerated;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Vector(long j)
    {
        var inputs = range.Inputs;
        var weights = range.Weights;
        var thresholds = range.Thresholds;
        var tieBudgets = range.TieBudgets;
        var count = inputs.Length;
        var zero = Vector512<double>.Zero;
        Vector512<double> electionLow = zero, electionHigh = zero;
        for (var i = 0; i < count; i++)
        {
            var x = Vector512.Load((float*)inputs[i] + j);
            var magnitude = x.AsUInt32() & Vector512.Create(0x7FFFFFFFu);
            var threshold = Vector512.Create(thresholds[i]);
            var budget = tieBudgets[i];
            Vector512<uint> kept;
            if (budget == long.MaxValue) kept = Vector512.GreaterThanOrEqual(magnitude, threshold);
            else
            {
                kept = Vector512.GreaterThan(magnitude, threshold);
                if (budget > 0)
                {
                    var ties = (uint)Vector512.Equals(magnitude, threshold).ExtractMostSignificantBits();
                    if (ties != 0) kept |= KeptTies(ties, ref tieBudgets[i]);
                }
            }
            (low[i], high[i]) = Vector512.Widen(x & kept.AsSingle());
            var w = Vector512.Create(weights[i]);
            electionLow += w * low[i];
            electionHigh += w * high[i];
        }
        var positiveLow = Vector512.GreaterThanOrEqual(electionLow, zero);
        var positiveHigh = Vector512.GreaterThanOrEqual(electionHigh, zero);
        Vector512<double> sumLow = zero, sumHigh = zero, weightLow = zero, weightHigh = zero;
        for (var i = 0; i < count; i++)
        {
            var w = Vector512.Create(weights[i]);
            var agreeLow = Vector512.ConditionalSelect(positiveLow, Vector512.GreaterThan(low[i], zero), Vector512.LessThan(low[i], zero));
            var agreeHigh = Vector512.ConditionalSelect(positiveHigh, Vector512.GreaterThan(high[i], zero), Vector512.LessThan(high[i], zero));
            sumLow += (w * low[i]) & agreeLow;
            sumHigh += (w * high[i]) & agreeHigh;
            weightLow += w & agreeLow;
            weightHigh += w & agreeHigh;
        }
        if (range.Normalize)
        {
            sumLow = Vector512.ConditionalSelect(Vector512.Equals(weightLow, zero), zero, sumLow / weightLow);
            sumHigh = Vector512.ConditionalSelect(Vector512.Equals(weightHigh, zero), zero, sumHigh / weightHigh);
        }
        var merged = Vector512.Narrow(sumLow * _lambda, sumHigh * _lambda);
        range.Target.Store(merged.GetLower(), j);
        range.Target.Store(merged.GetUpper(), j + 8);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Scalar(long j) => range.Scalar(j, bySignCount: false);

    /// <summary>The lanes of <paramref name="ties"/> (a lane bit mask) that the tie budget still keeps, in lane order, as a vector mask.</summary>
    private static Vector512<uint> KeptTies(uint ties, ref long tieBudget) =>
        ~Vector512.Equals(Vector512.Create(TiesBySumOperator.KeptTieLanes(ties, ref tieBudget)) & LaneBits, Vector512<uint>.Zero);
}
