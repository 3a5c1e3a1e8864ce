using System.Runtime.CompilerServices;
using System.Numerics;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Dare.Engine.Safetensors;

namespace Dare.Engine.Merge;

/// <summary>
/// Where a combine kernel puts the merged δ, eight elements at a time while they are in registers: float32 in
/// place (over the first input, which each element is read from before it is written), or base + δ (or δ alone)
/// converted to bfloat16 or float32 in the export's output buffer. The additions and the conversion are the ones
/// torch does (one float32 addition; bfloat16 rounded to nearest even, NaN as 0xFFFF), so the bytes are the same.
/// </summary>
internal readonly unsafe struct CombineTarget
{
    private readonly float* _base;
    private readonly ushort* _baseBFloat16;
    private readonly bool _addsBFloat16Base;
    private readonly void* _output;
    private readonly bool _bfloat16;

    /// <param name="baseValues">The base chunk in float32 to add, or null to write δ alone.</param>
    /// <param name="output">Where element j of the chunk goes (float32 or bfloat16 per <paramref name="bfloat16"/>).</param>
    public CombineTarget(float* baseValues, void* output, bool bfloat16)
    {
        _base = baseValues;
        _output = output;
        _bfloat16 = bfloat16;
    }

    private CombineTarget(ushort* baseBFloat16, void* output, bool bfloat16)
    {
        _baseBFloat16 = baseBFloat16;
        _addsBFloat16Base = true;
        _output = output;
        _bfloat16 = bfloat16;
    }

    /// <summary>
    /// A target whose base is still in its stored bfloat16 (widening is exact, so the sum is the same); with
    /// <paramref name="baseBits"/> null, a kernel that reads the base piece by piece supplies it (<see cref="WithBFloat16Base"/>).
    /// </summary>
    public static CombineTarget OverBFloat16Base(ushort* baseBits, void* output, bool bfloat16) => new(baseBits, output, bfloat16);

    /// <summary>This target with its bfloat16 base at <paramref name="baseBits"/> (element j of the chunk at baseBits[j]); a target that adds no base stays as it is.</summary>
    public CombineTarget WithBFloat16Base(ushort* baseBits) => _addsBFloat16Base ? new(baseBits, _output, _bfloat16) : this;

    public static CombineTarget InPlace(float* delta) => new((float*)null, delta, false);

    /// <summary>Whether any of output elements [start, start + count) is NaN or ±Inf.</summary>
    public bool AnyNonFinite(long start, long count) => _bfloat16
        ? FiniteCheck.AnyNonFinite((byte*)((ushort*)_output + start), count * sizeof(ushort), SafetensorsDType.BF16)
        : FiniteCheck.AnyNonFinite((byte*)((float*)_output + start), count * sizeof(float), SafetensorsDType.F32);

    // Inlined into each combine operator's body: called per vector, it would otherwise run in tier 0 (the driver is
    // compiled optimised at once, but what it calls is tiered as usual) until call counting promoted it.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Store(Vector256<float> merged, long j)
    {
        if (_base is not null) merged += Vector256.Load(_base + j);
        if (_addsBFloat16Base)
        {
            var (low, high) = Vector128.Widen(Vector128.Load(_baseBFloat16 + j));
            merged += Vector256.ShiftLeft(Vector256.Create(low, high), 16).AsSingle();
        }
        if (_bfloat16) CombineKernels.ToBFloat16(merged).Store((ushort*)_output + j);
        else merged.Store((float*)_output + j);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Store(float merged, long j)
    {
        if (_base is not null) merged += _base[j];
        if (_addsBFloat16Base) merged += BitConverter.UInt32BitsToSingle((uint)_baseBFloat16[j] << 16);
        if (_bfloat16) ((ushort*)_output)[j] = CombineKernels.ToBFloat16(merged);
        else ((float*)_output)[j] = merged;
    }
}

/// <summary>
/// Which vector body runs the sign-by-sum TIES combine. The bits are the same whichever runs; the tests run each. A
/// few-input body takes up to four inputs (the general one of its width runs for more).
/// </summary>
internal enum TiesVectorBody
{
    /// <summary>The widest the processor has (16 lanes with AVX-512, else 8), written out input by input for up to four inputs.</summary>
    Fastest,

    /// <summary>Eight lanes (AVX2), any number of inputs.</summary>
    EightLanes,

    /// <summary>Eight lanes, written out input by input.</summary>
    EightLanesFewInputs,

    /// <summary>Sixteen lanes (AVX-512), any number of inputs.</summary>
    SixteenLanes,

    /// <summary>Sixteen lanes, written out input by input.</summary>
    SixteenLanesFewInputs,
}

/// <summary>The merge combines, one pass over a chunk per call, split over the cores.</summary>
internal static unsafe class CombineKernels
{
    /// <summary>float32 → bfloat16 bits, rounded to nearest even; NaN becomes 0xFFFF (what torch's conversion writes).</summary>
    public static ushort ToBFloat16(float value)
    {
        if (float.IsNaN(value)) return 0xFFFF;
        var bits = BitConverter.SingleToUInt32Bits(value);
        return (ushort)((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<ushort> ToBFloat16(Vector256<float> values)
    {
        var bits = values.AsUInt32();
        var lowestKept = Vector256.ShiftRightLogical(bits, 16) & Vector256.Create(1u);
        var rounded = Vector256.ShiftRightLogical(bits + Vector256.Create(0x7FFFu) + lowestKept, 16);
        var isNaN = ~Vector256.Equals(values, values).AsUInt32();
        rounded = Vector256.ConditionalSelect(isNaN, Vector256.Create(0xFFFFu), rounded);
        return Vector128.Narrow(rounded.GetLower(), rounded.GetUpper());
    }

    /// <summary>
    /// Σ wᵢ·δᵢ, then × <paramref name="scale"/> when given, computed as torch's mul_(w₀), add_(δᵢ, alpha: wᵢ) (a fused
    /// multiply-add per input) and mul_(scale) compute it.
    /// </summary>
    public static void Linear(IntPtr[] inputs, float[] weights, float? scale, CombineTarget target, long count)
    {
        VectorDriver.RunParallel(new LinearOperator(inputs, weights, scale, target), count);
    }

    /// <summary><see cref="Linear"/> over elements [start, end) on the calling thread.</summary>
    public static void LinearRange(IntPtr[] inputs, float[] weights, float? scale, CombineTarget target, long start, long end)
    {
        var op = new LinearOperator(inputs, weights, scale, target);
        VectorDriver.Run(op, start, end);
    }

    /// <summary>
    /// TIES sign election and disjoint mean: γ = sign(Σ wᵢtᵢ) (or of #positive − #negative), ties to +; the result is
    /// Σ wᵢtᵢ over the inputs whose sign agrees with γ, divided by Σ wᵢ over them when normalizing (0 where none
    /// agree), times λ. This applies the TIES trim as it reads: input i keeps |x| (as IEEE bits) above
    /// <paramref name="thresholds"/>[i] (see <see cref="MagnitudeSelection.KeepBits"/>) and, of those equal to it,
    /// the first <paramref name="tieBudgets"/>[i][r] in range r (<see cref="Partition.Ranges"/>), or all of
    /// them when that budget is long.MaxValue or the input has no budgets (excess ties already dropped); the others
    /// count as zero. With AVX-512 the sign-by-sum election runs 16 lanes wide, written out input by input for up to
    /// four inputs; <paramref name="body"/> picks another vector body, for the tests to check each: the bits are the same.
    /// </summary>
    public static void Ties(IntPtr[] inputs, double[] weights, uint[] thresholds, long[]?[] tieBudgets, bool bySignCount, bool normalize, double lambda,
        CombineTarget target, long count, TiesVectorBody body = TiesVectorBody.Fastest)
    {
        var ranges = Partition.Ranges(count);
        Parallel.For(0, ranges.Length, r =>
        {
            var (start, end) = ranges[r];
            var budgets = tieBudgets.Select(b => b?[r] ?? long.MaxValue).ToArray();
            RunTies(new TiesCombineRange(inputs, weights, thresholds, budgets, normalize, lambda, target, new float[inputs.Length]), start, end, bySignCount, body);
        });
    }

    /// <summary>
    /// <see cref="Ties"/> over elements [start, end) on the calling thread, for inputs whose trim keeps every non-zero
    /// value (no thresholds, no tie budgets): the combine of the single-pass bfloat16 route.
    /// </summary>
    public static void TiesRange(IntPtr[] inputs, double[] weights, bool bySignCount, bool normalize, double lambda, CombineTarget target, long start, long end)
    {
        var (noThresholds, noBudgets, kept) = RangeArrays(inputs.Length);
        RunTies(new TiesCombineRange(inputs, weights, noThresholds, noBudgets, normalize, lambda, target, kept), start, end, bySignCount, TiesVectorBody.Fastest);
    }

    // TiesRange runs once per block of a single pass (~115K times in a large DARE-TIES export on 8 lanes), so its
    // arrays are the thread's own, reused: allocated each time they were 14 MB of garbage per export.
    [ThreadStatic] private static (uint[] Thresholds, long[] Budgets, float[] Kept) t_rangeArrays;

    /// <summary>The calling thread's zero thresholds, budgets reset to keep every tie, and scratch for <paramref name="n"/> inputs.</summary>
    private static (uint[] Thresholds, long[] Budgets, float[] Kept) RangeArrays(int n)
    {
        if (t_rangeArrays.Budgets?.Length != n) t_rangeArrays = (new uint[n], new long[n], new float[n]);
        Array.Fill(t_rangeArrays.Budgets, long.MaxValue);
        return t_rangeArrays;
    }

    private static void RunTies(TiesCombineRange range, long start, long end, bool bySignCount, TiesVectorBody body)
    {
        if (bySignCount || range.Inputs.Length > TiesBySumOperator.MaxInputs) VectorDriver.Run(new TiesScalarOperator(range, bySignCount), start, end);
        else
        {
            if (body == TiesVectorBody.Fastest) body = TiesBySumWideOperator.IsVectorized ? TiesVectorBody.SixteenLanesFewInputs : TiesVectorBody.EightLanesFewInputs;
            var wide = body is TiesVectorBody.SixteenLanes or TiesVectorBody.SixteenLanesFewInputs;
            if (body is TiesVectorBody.EightLanes or TiesVectorBody.SixteenLanes || range.Inputs.Length > 4) TiesBySum(range, start, end, wide);
            else TiesBySumFewInputs(range, start, end, wide);
        }
    }

    /// <summary>
    /// The few-input operator over [start, end), in parts: the range is cut where each input's tie budget runs out, so
    /// that in each part every input keeps all of its ties or none, as in element order under the budgets.
    /// </summary>
    private static void TiesBySumFewInputs(TiesCombineRange range, long start, long end, bool wide)
    {
        var n = range.Inputs.Length;
        if (!Array.Exists(range.TieBudgets, budget => budget is not (long.MaxValue or 0)))
        {
            RunFewInputs(range, start, end, wide);
            return;
        }
        // Input i keeps its ties before keepsTiesUntil[i] and none from there on.
        var keepsTiesUntil = new long[n];
        for (var i = 0; i < n; i++)
        {
            var budget = range.TieBudgets[i];
            keepsTiesUntil[i] = budget switch
            {
                long.MaxValue => end,
                0 => start,
                _ => AfterTies((uint*)range.Inputs[i], range.Thresholds[i], budget, start, end),
            };
        }
        foreach (var (partStart, partEnd, keepsTies) in TieParts(keepsTiesUntil, start, end))
        {
            RunFewInputs(range.WithTieBudgets(keepsTies.Select(keeps => keeps ? long.MaxValue : 0L).ToArray()), partStart, partEnd, wide);
        }
    }

    /// <summary>
    /// [start, end) cut where each input's tie budget runs out (input i keeps its ties before <paramref name="keepsTiesUntil"/>[i]
    /// and none from there on): each part, and whether each input keeps its ties in it.
    /// </summary>
    internal static IEnumerable<(long Start, long End, bool[] KeepsTies)> TieParts(long[] keepsTiesUntil, long start, long end)
    {
        var cuts = keepsTiesUntil.Append(start).Append(end).Distinct().Order().ToArray();
        for (var c = 0; c + 1 < cuts.Length; c++)
        {
            var partStart = cuts[c];
            yield return (partStart, cuts[c + 1], keepsTiesUntil.Select(until => partStart < until).ToArray());
        }
    }

    private static void RunFewInputs(TiesCombineRange range, long start, long end, bool wide)
    {
        switch (range.Inputs.Length, wide)
        {
            case (1, true): VectorDriver.Run(new TiesBySumFewWideOperator<OneInput>(range), start, end); break;
            case (2, true): VectorDriver.Run(new TiesBySumFewWideOperator<TwoInputs>(range), start, end); break;
            case (3, true): VectorDriver.Run(new TiesBySumFewWideOperator<ThreeInputs>(range), start, end); break;
            case (_, true): VectorDriver.Run(new TiesBySumFewWideOperator<FourInputs>(range), start, end); break;
            case (1, false): VectorDriver.Run(new TiesBySumFewOperator<OneInput>(range), start, end); break;
            case (2, false): VectorDriver.Run(new TiesBySumFewOperator<TwoInputs>(range), start, end); break;
            case (3, false): VectorDriver.Run(new TiesBySumFewOperator<ThreeInputs>(range), start, end); break;
            default: VectorDriver.Run(new TiesBySumFewOperator<FourInputs>(range), start, end); break;
        }
    }

    /// <summary>The element just after the <paramref name="budget"/>-th one in [start, end) whose magnitude is <paramref name="threshold"/>, or end when there are fewer.</summary>
    private static long AfterTies(uint* bits, uint threshold, long budget, long start, long end)
    {
        var limit = Vector256.Create(threshold);
        var j = start;
        for (; j <= end - 8; j += 8)
        {
            var ties = Vector256.Equals(Vector256.Load(bits + j) & Vector256.Create(0x7FFFFFFFu), limit).ExtractMostSignificantBits();
            if (TiesRunOut(ties, ref budget, out var after)) return j + after;
        }
        for (; j < end; j++)
        {
            if ((bits[j] & 0x7FFFFFFF) == threshold && --budget == 0) return j + 1;
        }
        return end;
    }

    /// <summary>
    /// Consumes one vector's ties (a bit per lane whose magnitude is the threshold) from <paramref name="budget"/>:
    /// false while the budget outlasts them; true where it runs out, with <paramref name="after"/> the lane just after
    /// its budget-th tie (the budget then is 0). Both cuts of a tie budget use it: here over stored δ, and in the fused
    /// TIES pass over δ computed in registers (<see cref="DareTiesKernel"/>).
    /// </summary>
    internal static bool TiesRunOut(ulong ties, ref long budget, out int after)
    {
        after = 0;
        var count = BitOperations.PopCount(ties);
        if (count < budget)
        {
            budget -= count;
            return false;
        }
        for (; budget > 1; budget--) ties &= ties - 1;
        budget = 0;
        after = BitOperations.TrailingZeroCount(ties) + 1;
        return true;
    }

    /// <summary>The sign-by-sum TIES combine of elements [start, end) for any number of inputs, with the vector scratch allocated once for the range.</summary>
    private static void TiesBySum(TiesCombineRange range, long start, long end, bool wide)
    {
        var count = range.Inputs.Length;
        if (wide)
        {
            var wideLow = stackalloc Vector512<double>[count];
            var wideHigh = stackalloc Vector512<double>[count];
            VectorDriver.Run(new TiesBySumWideOperator(range, wideLow, wideHigh), start, end);
            return;
        }
        var low = stackalloc Vector256<double>[count];
        var high = stackalloc Vector256<double>[count];
        VectorDriver.Run(new TiesBySumOperator(range, low, high), start, end);
    }
}

/// <summary>Σ wᵢ·δᵢ (a fused multiply-add per input after the first product), × scale when given, stored through the target.</summary>
internal readonly unsafe struct LinearOperator(IntPtr[] inputs, float[] weights, float? scale, CombineTarget target) : IElementOperator
{
    public static int Lanes => 8;
    public static bool IsVectorized => Fma.IsSupported;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Vector(long j)
    {
        var sum = Vector256.Load((float*)inputs[0] + j) * Vector256.Create(weights[0]);
        for (var i = 1; i < inputs.Length; i++)
        {
            sum = Fma.MultiplyAdd(Vector256.Load((float*)inputs[i] + j), Vector256.Create(weights[i]), sum);
        }
        if (scale is { } s) sum *= Vector256.Create(s);
        target.Store(sum, j);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Scalar(long j)
    {
        var sum = ((float*)inputs[0])[j] * weights[0];
        for (var i = 1; i < inputs.Length; i++) sum = MathF.FusedMultiplyAdd(((float*)inputs[i])[j], weights[i], sum);
        if (scale is { } s) sum *= s;
        target.Store(sum, j);
    }
}
