using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Dare.Engine.Merge;

/// <summary>An input count fixed when the JIT compiles a generic operator over it, so the code for inputs beyond it is compiled away.</summary>
internal interface IInputCount
{
    static abstract int Value { get; }
}

internal readonly struct OneInput : IInputCount { public static int Value => 1; }
internal readonly struct TwoInputs : IInputCount { public static int Value => 2; }
internal readonly struct ThreeInputs : IInputCount { public static int Value => 3; }
internal readonly struct FourInputs : IInputCount { public static int Value => 4; }

/// <summary>
/// <see cref="TiesBySumWideOperator"/> for one to four inputs (<typeparamref name="TCount"/>), written out input by input
/// so that each input's trimmed values and products stay in registers from the election to the mean instead of going
/// through scratch memory: about 1.6 times as fast here. The same IEEE operations in the same order, so the same bits.
/// Each input keeps all its ties or none (a budget of long.MaxValue or 0): the caller cuts a range where a budget runs
/// out (CombineKernels.TiesBySumFewInputs), so the trim is one compare, with no bookkeeping in the loop.
/// </summary>
internal readonly unsafe struct TiesBySumFewWideOperator<TCount> : IElementOperator where TCount : struct, IInputCount
{
    private readonly float* _x0, _x1, _x2, _x3;
    private readonly Vector512<double> _w0, _w1, _w2, _w3;
    private readonly Vector512<uint> _t0, _t1, _t2, _t3;
    private readonly Vector512<double> _lambda;
    private readonly bool _normalize;
    private readonly CombineTarget _target;
    private readonly TiesCombineRange _range;

    public TiesBySumFewWideOperator(TiesCombineRange range)
    {
        range.CheckFewInputs(TCount.Value);
        _range = range;
        _normalize = range.Normalize;
        _target = range.Target;
        _lambda = Vector512.Create(range.Lambda);
        _x0 = range.FewInput(0);
        _x1 = range.FewInput(1);
        _x2 = range.FewInput(2);
        _x3 = range.FewInput(3);
        (_w0, _w1, _w2, _w3) = (Vector512.Create(range.FewWeight(0)), Vector512.Create(range.FewWeight(1)), Vector512.Create(range.FewWeight(2)), Vector512.Create(range.FewWeight(3)));
        (_t0, _t1, _t2, _t3) = (Vector512.Create(range.KeptFrom(0)), Vector512.Create(range.KeptFrom(1)), Vector512.Create(range.KeptFrom(2)), Vector512.Create(range.KeptFrom(3)));
    }

    public static int Lanes => 16;
    public static bool IsVectorized => Vector512.IsHardwareAccelerated;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Vector(long j)
    {
        var kept0 = Kept(_x0, j, _t0);
        var kept1 = TCount.Value > 1 ? Kept(_x1, j, _t1) : default;
        var kept2 = TCount.Value > 2 ? Kept(_x2, j, _t2) : default;
        var kept3 = TCount.Value > 3 ? Kept(_x3, j, _t3) : default;
        var merged = Combine(kept0, kept1, kept2, kept3, _w0, _w1, _w2, _w3, _lambda, _normalize);
        _target.Store(merged.GetLower(), j);
        _target.Store(merged.GetUpper(), j + 8);
    }

    /// <summary>
    /// The sign election by Σ wᵢtᵢ and the disjoint (weighted) mean of 16 lanes of kept values, × λ, rounded to float:
    /// the operator after its trim, and the fused TIES pass after its mask and trim (<see cref="DareTiesOperator{TCount, TTrim}"/>).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Combine(Vector512<float> kept0, Vector512<float> kept1, Vector512<float> kept2, Vector512<float> kept3,
        Vector512<double> w0, Vector512<double> w1, Vector512<double> w2, Vector512<double> w3, Vector512<double> lambda, bool normalize)
    {
        var zero = Vector512<double>.Zero;
        Vector512<double> l1 = zero, h1 = zero, l2 = zero, h2 = zero, l3 = zero, h3 = zero;
        Vector512<double> p1l = zero, p1h = zero, p2l = zero, p2h = zero, p3l = zero, p3h = zero;
        var (l0, h0) = Vector512.Widen(kept0);
        var (p0l, p0h) = (w0 * l0, w0 * h0);
        var (electionLow, electionHigh) = (zero + p0l, zero + p0h);
        if (TCount.Value > 1)
        {
            (l1, h1) = Vector512.Widen(kept1);
            (p1l, p1h) = (w1 * l1, w1 * h1);
            (electionLow, electionHigh) = (electionLow + p1l, electionHigh + p1h);
        }
        if (TCount.Value > 2)
        {
            (l2, h2) = Vector512.Widen(kept2);
            (p2l, p2h) = (w2 * l2, w2 * h2);
            (electionLow, electionHigh) = (electionLow + p2l, electionHigh + p2h);
        }
        if (TCount.Value > 3)
        {
            (l3, h3) = Vector512.Widen(kept3);
            (p3l, p3h) = (w3 * l3, w3 * h3);
            (electionLow, electionHigh) = (electionLow + p3l, electionHigh + p3h);
        }
        var positiveLow = Vector512.GreaterThanOrEqual(electionLow, zero);
        var positiveHigh = Vector512.GreaterThanOrEqual(electionHigh, zero);
        Vector512<double> sumLow = zero, sumHigh = zero, weightLow = zero, weightHigh = zero;
        AddAgreeing(ref sumLow, ref weightLow, positiveLow, l0, p0l, w0);
        AddAgreeing(ref sumHigh, ref weightHigh, positiveHigh, h0, p0h, w0);
        if (TCount.Value > 1)
        {
            AddAgreeing(ref sumLow, ref weightLow, positiveLow, l1, p1l, w1);
            AddAgreeing(ref sumHigh, ref weightHigh, positiveHigh, h1, p1h, w1);
        }
        if (TCount.Value > 2)
        {
            AddAgreeing(ref sumLow, ref weightLow, positiveLow, l2, p2l, w2);
            AddAgreeing(ref sumHigh, ref weightHigh, positiveHigh, h2, p2h, w2);
        }
        if (TCount.Value > 3)
        {
            AddAgreeing(ref sumLow, ref weightLow, positiveLow, l3, p3l, w3);
            AddAgreeing(ref sumHigh, ref weightHigh, positiveHigh, h3, p3h, w3);
        }
        if (normalize)
        {
            sumLow = Vector512.ConditionalSelect(Vector512.Equals(weightLow, zero), zero, sumLow / weightLow);
            sumHigh = Vector512.ConditionalSelect(Vector512.Equals(weightHigh, zero), zero, sumHigh / weightHigh);
        }
        return Vector512.Narrow(sumLow * lambda, sumHigh * lambda);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Scalar(long j) => _range.Scalar(j, bySignCount: false);

    /// <summary>An input's values at j, zeroed where the magnitude is below what it keeps.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Kept(float* x, long j, Vector512<uint> keptFrom)
    {
        var values = Vector512.Load(x + j);
        return values & Vector512.GreaterThanOrEqual(values.AsUInt32() & Vector512.Create(0x7FFFFFFFu), keptFrom).AsSingle();
    }

    /// <summary>Adds an input's product and weight where its sign agrees with the elected one (+0.0 elsewhere, which changes no sum).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void AddAgreeing(ref Vector512<double> sum, ref Vector512<double> weight, Vector512<double> positive, Vector512<double> x,
        Vector512<double> product, Vector512<double> w)
    {
        var agree = Vector512.ConditionalSelect(positive, Vector512.GreaterThan(x, Vector512<double>.Zero), Vector512.LessThan(x, Vector512<double>.Zero));
        sum += product & agree;
        weight += w & agree;
    }
}

/// <summary>
/// <see cref="TiesBySumFewWideOperator{TCount}"/> eight lanes wide, for processors without AVX-512 (about twice as fast
/// as <see cref="TiesBySumOperator"/> here); the same bits. A copy at the other width: .NET 8 has no width-generic vector type.
/// </summary>
internal readonly unsafe struct TiesBySumFewOperator<TCount> : IElementOperator where TCount : struct, IInputCount
{
    private readonly float* _x0, _x1, _x2, _x3;
    private readonly Vector256<double> _w0, _w1, _w2, _w3;
    private readonly Vector256<uint> _t0, _t1, _t2, _t3;
    private readonly Vector256<double> _lambda;
    private readonly bool _normalize;
    private readonly CombineTarget _target;
    private readonly TiesCombineRange _range;

    public TiesBySumFewOperator(TiesCombineRange range)
    {
        range.CheckFewInputs(TCount.Value);
        _range = range;
        _normalize = range.Normalize;
        _target = range.Target;
        _lambda = Vector256.Create(range.Lambda);
        _x0 = range.FewInput(0);
        _x1 = range.FewInput(1);
        _x2 = range.FewInput(2);
        _x3 = range.FewInput(3);
        (_w0, _w1, _w2, _w3) = (Vector256.Create(range.FewWeight(0)), Vector256.Create(range.FewWeight(1)), Vector256.Create(range.FewWeight(2)), Vector256.Create(range.FewWeight(3)));
        (_t0, _t1, _t2, _t3) = (Vector256.Create(range.KeptFrom(0)), Vector256.Create(range.KeptFrom(1)), Vector256.Create(range.KeptFrom(2)), Vector256.Create(range.KeptFrom(3)));
    }

    public static int Lanes => 8;
    public static bool IsVectorized => Vector256.IsHardwareAccelerated;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Vector(long j)
    {
        var kept0 = Kept(_x0, j, _t0);
        var kept1 = TCount.Value > 1 ? Kept(_x1, j, _t1) : default;
        var kept2 = TCount.Value > 2 ? Kept(_x2, j, _t2) : default;
        var kept3 = TCount.Value > 3 ? Kept(_x3, j, _t3) : default;
        var zero = Vector256<double>.Zero;
        Vector256<double> l1 = zero, h1 = zero, l2 = zero, h2 = zero, l3 = zero, h3 = zero;
        Vector256<double> p1l = zero, p1h = zero, p2l = zero, p2h = zero, p3l = zero, p3h = zero;
        var (l0, h0) = Vector256.Widen(kept0);
        var (p0l, p0h) = (_w0 * l0, _w0 * h0);
        var (electionLow, electionHigh) = (zero + p0l, zero + p0h);
        if (TCount.Value > 1)
        {
            (l1, h1) = Vector256.Widen(kept1);
            (p1l, p1h) = (_w1 * l1, _w1 * h1);
            (electionLow, electionHigh) = (electionLow + p1l, electionHigh + p1h);
        }
        if (TCount.Value > 2)
        {
            (l2, h2) = Vector256.Widen(kept2);
            (p2l, p2h) = (_w2 * l2, _w2 * h2);
            (electionLow, electionHigh) = (electionLow + p2l, electionHigh + p2h);
        }
        if (TCount.Value > 3)
        {
            (l3, h3) = Vector256.Widen(kept3);
            (p3l, p3h) = (_w3 * l3, _w3 * h3);
            (electionLow, electionHigh) = (electionLow + p3l, electionHigh + p3h);
        }
        var positiveLow = Vector256.GreaterThanOrEqual(electionLow, zero);
        var positiveHigh = Vector256.GreaterThanOrEqual(electionHigh, zero);
        Vector256<double> sumLow = zero, sumHigh = zero, weightLow = zero, weightHigh = zero;
        AddAgreeing(ref sumLow, ref weightLow, positiveLow, l0, p0l, _w0);
        AddAgreeing(ref sumHigh, ref weightHigh, positiveHigh, h0, p0h, _w0);
        if (TCount.Value > 1)
        {
            AddAgreeing(ref sumLow, ref weightLow, positiveLow, l1, p1l, _w1);
            AddAgreeing(ref sumHigh, ref weightHigh, positiveHigh, h1, p1h, _w1);
        }
        if (TCount.Value > 2)
        {
            AddAgreeing(ref sumLow, ref weightLow, positiveLow, l2, p2l, _w2);
            AddAgreeing(ref sumHigh, ref weightHigh, positiveHigh, h2, p2h, _w2);
        }
        if (TCount.Value > 3)
        {
            AddAgreeing(ref sumLow, ref weightLow, positiveLow, l3, p3l, _w3);
            AddAgreeing(ref sumHigh, ref weightHigh, positiveHigh, h3, p3h, _w3);
        }
        if (_normalize)
        {
            sumLow = Vector256.ConditionalSelect(Vector256.Equals(weightLow, zero), zero, sumLow / weightLow);
            sumHigh = Vector256.ConditionalSelect(Vector256.Equals(weightHigh, zero), zero, sumHigh / weightHigh);
        }
        _target.Store(Vector256.Narrow(sumLow * _lambda, sumHigh * _lambda), j);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Scalar(long j) => _range.Scalar(j, bySignCount: false);

    /// <summary>An input's values at j, zeroed where the magnitude is below what it keeps.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Kept(float* x, long j, Vector256<uint> keptFrom)
    {
        var values = Vector256.Load(x + j);
        return values & Vector256.GreaterThanOrEqual(values.AsUInt32() & Vector256.Create(0x7FFFFFFFu), keptFrom).AsSingle();
    }

    /// <summary>Adds an input's product and weight where its sign agrees with the elected one (+0.0 elsewhere, which changes no sum).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void AddAgreeing(ref Vector256<double> sum, ref Vector256<double> weight, Vector256<double> positive, Vector256<double> x,
        Vector256<double> product, Vector256<double> w)
    {
        var agree = Vector256.ConditionalSelect(positive, Vector256.GreaterThan(x, Vector256<double>.Zero), Vector256.LessThan(x, Vector256<double>.Zero));
        sum += product & agree;
        weight += w & agree;
    }
}
