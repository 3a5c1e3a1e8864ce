using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Dare.Engine.Safetensors;

namespace Dare.Engine.Merge;

/// <summary>
/// TIES's single pass (DARE-TIES whose drop leaves no more survivors than TIES keeps, TIES keeping everything, or the
/// last pass of the counted route, which trims by thresholds counted before it: <see cref="TiesTrim"/>) with
/// every step of an element in registers, as <see cref="DareLinearKernel"/> does for linear: 16 elements at a time,
/// the base widened once, each input's masked δ (<see cref="FusedInput"/>) handed straight to the sign election and
/// disjoint mean (<see cref="TiesBySumFewWideOperator{TCount}.Combine"/>). <see cref="ChunkKernels.MergeFromBFloat16"/>
/// stores each δ in a block in cache and loads it again for the combine; the same IEEE operations per element in the
/// same order give the same bits. Taken for one to four inputs electing by sum, where AVX-512 runs it natively
/// (<see cref="Takes"/>); elsewhere its 16 lanes would be emulated.
/// </summary>
internal static unsafe class DareTiesKernel
{
    /// <summary>
    /// Whether the fused pass takes a merge of <paramref name="inputs"/> inputs electing by sum (by sign count it does
    /// not) on this processor; with <paramref name="anyProcessor"/> also where its vector bodies would not run (tests:
    /// its scalar bodies then do the same work, so the routes built on it are tested on any machine).
    /// </summary>
    public static bool Takes(int inputs, bool bySignCount, bool anyProcessor = false) =>
        (anyProcessor || DareLinearKernel.Preferred) && !bySignCount && inputs is >= 1 and <= 4;

    /// <summary>
    /// Elements [first, first + count) of the chunk: the TIES of every input's masked δ, trimmed by <paramref name="trim"/>
    /// when given (else nothing is trimmed), the weighted mean of those agreeing with the elected sign when
    /// <paramref name="normalize"/>, × <paramref name="lambda"/>, through <paramref name="target"/>. Returns each
    /// input's drop count and whether the output is all finite.
    /// </summary>
    public static ChunkKernels.MergedChunk MergeChunk(StoredRange baseBits, DeltaSource[] sources, double[] weights, bool normalize, double lambda,
        CombineTarget target, long first, long count, TiesTrim? trim = null)
    {
        if (sources.Length is < 1 or > 4) throw new ArgumentException($"The fused TIES pass takes 1 to 4 inputs, not {sources.Length}.");
        var noWeights = new float[sources.Length];
        var ranges = Partition.Ranges(count);
        // Each range's tie budgets, consumed piece by piece in element order by the range's own thread.
        var budgetsLeft = trim?.BudgetsByRange(ranges.Length);
        return ChunkKernels.MergePieces(baseBits, sources, target, first, count, scratchFloats: 0, (baseValues, tuned, pieceTarget, start, end, dropped, _) =>
        {
            foreach (var (blockStart, blockEnd) in FusedInput.KeyBlocks(first, start, end))
            {
                var inputs = FusedInput.For(sources, tuned, noWeights, first + blockStart);
                if (trim is null)
                {
                    RunFor<Untrimmed>(inputs, Array.Empty<uint>(), blockStart, blockEnd);
                    continue;
                }
                // Cut where an input's tie budget runs out: in each part every input keeps all of its ties or none.
                var left = budgetsLeft![Array.FindLastIndex(ranges, r => r.Start <= blockStart)];
                var keepsTiesUntil = new long[inputs.Length];
                for (var i = 0; i < inputs.Length; i++)
                {
                    keepsTiesUntil[i] = left[i] switch
                    {
                        long.MaxValue => blockEnd,
                        0 => blockStart,
                        _ => AfterTies(inputs[i], baseValues, (uint)first, trim.KeepBits[i], ref left[i], blockStart, blockEnd),
                    };
                }
                foreach (var (partStart, partEnd, keepsTies) in CombineKernels.TieParts(keepsTiesUntil, blockStart, blockEnd))
                {
                    var keptFrom = trim.KeepBits.Select((bits, i) => TiesCombineRange.KeptFrom(bits, keepsTies[i])).ToArray();
                    RunFor<Trimmed>(inputs, keptFrom, partStart, partEnd);
                }
            }

            void RunFor<TTrim>(FusedInput[] inputs, uint[] keptFrom, long partStart, long partEnd) where TTrim : struct, ITrimFlag
            {
                switch (inputs.Length)
                {
                    case 1: RunWith<OneInput, TTrim>(inputs, keptFrom, partStart, partEnd); break;
                    case 2: RunWith<TwoInputs, TTrim>(inputs, keptFrom, partStart, partEnd); break;
                    case 3: RunWith<ThreeInputs, TTrim>(inputs, keptFrom, partStart, partEnd); break;
                    default: RunWith<FourInputs, TTrim>(inputs, keptFrom, partStart, partEnd); break;
                }
            }

            void RunWith<TCount, TTrim>(FusedInput[] inputs, uint[] keptFrom, long partStart, long partEnd) where TCount : struct, IInputCount where TTrim : struct, ITrimFlag =>
                Run(new DareTiesOperator<TCount, TTrim>(baseValues, inputs, (uint)first, weights, keptFrom, normalize, lambda, pieceTarget, dropped), partStart, partEnd);
        });
    }

    /// <summary>
    /// The element just after the <paramref name="budget"/>-th one in [start, end) whose masked δ has magnitude
    /// <paramref name="threshold"/> (the budget then is 0), or end when there are fewer (the budget less their count).
    /// </summary>
    private static long AfterTies(FusedInput input, ushort* baseValues, uint low, uint threshold, ref long budget, long start, long end)
    {
        long noDrops = 0;
        var j = start;
        for (; j <= end - 16; j += 16)
        {
            var delta = input.Delta(j, FusedInput.Widen(baseValues + j), DareMask.GoldenProducts16(low + (uint)j), ref noDrops);
            var ties = Vector512.Equals(delta.AsUInt32() & Vector512.Create(0x7FFFFFFFu), Vector512.Create(threshold)).ExtractMostSignificantBits();
            if (CombineKernels.TiesRunOut(ties, ref budget, out var after)) return j + after;
        }
        for (; j < end; j++)
        {
            var delta = input.Delta(j, BitConverter.UInt32BitsToSingle((uint)baseValues[j] << 16), low, ref noDrops);
            if ((BitConverter.SingleToUInt32Bits(delta) & 0x7FFFFFFF) == threshold && --budget == 0) return j + 1;
        }
        return end;
    }

    /// <summary>The operator's loop, a method of its own so that the JIT's inlining budget is the loop's alone.</summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static void Run<TCount, TTrim>(DareTiesOperator<TCount, TTrim> op, long start, long end) where TCount : struct, IInputCount where TTrim : struct, ITrimFlag =>
        VectorDriver.Run(op, start, end);
}

/// <summary>
/// The trim of a chunk in the fused TIES pass: each input's threshold as magnitude bits (<see cref="MagnitudeSelection.KeepBits"/>),
/// and its tie budgets per parallel range of the chunk (<see cref="MagnitudeSelection.TieBudgets"/>; null: every range keeps all its ties).
/// </summary>
internal sealed record TiesTrim(uint[] KeepBits, long[]?[] Budgets)
{
    /// <summary>The budgets left, [range][input], for a chunk of <paramref name="ranges"/> parallel ranges.</summary>
    public long[][] BudgetsByRange(int ranges) =>
        Enumerable.Range(0, ranges).Select(r => Budgets.Select(b => b?[r] ?? long.MaxValue).ToArray()).ToArray();
}

/// <summary>Whether a fused TIES operator trims (fixed when the JIT compiles it, so the untrimmed one has no compares).</summary>
internal interface ITrimFlag
{
    static abstract bool Trims { get; }
}

internal readonly struct Untrimmed : ITrimFlag { public static bool Trims => false; }
internal readonly struct Trimmed : ITrimFlag { public static bool Trims => true; }

/// <summary>
/// Chunk elements j of the fused TIES pass for <typeparamref name="TCount"/> inputs: each input's masked δ
/// (<see cref="FusedInput.Delta(long, Vector512{float}, Vector512{uint}, ref long)"/>), trimmed when <typeparamref name="TTrim"/>
/// says so (kept where its magnitude as IEEE bits is at least <paramref name="keptFrom"/>[i], zero elsewhere), then
/// TIES's election and mean over them all. <see cref="TiesCombineRange.Merged"/> is the definition, which the scalar body calls;
/// <paramref name="low"/> is element 0's counter.
/// </summary>
internal readonly unsafe struct DareTiesOperator<TCount, TTrim>(ushort* baseValues, FusedInput[] inputs, uint low, double[] weights, uint[] keptFrom, bool normalize,
    double lambda, CombineTarget target, long[] dropped) : IElementOperator where TCount : struct, IInputCount where TTrim : struct, ITrimFlag
{
    private readonly Vector512<double> _w0 = Vector512.Create(weights[0]), _w1 = Weight(weights, 1), _w2 = Weight(weights, 2), _w3 = Weight(weights, 3);
    private readonly Vector512<uint> _k0 = KeptFrom(keptFrom, 0), _k1 = KeptFrom(keptFrom, 1), _k2 = KeptFrom(keptFrom, 2), _k3 = KeptFrom(keptFrom, 3);
    private readonly Vector512<double> _lambda = Vector512.Create(lambda);

    public static int Lanes => 16;
    public static bool IsVectorized => DareLinearKernel.Preferred;

    private static Vector512<double> Weight(double[] weights, int i) => Vector512.Create(i < weights.Length ? weights[i] : 0);
    private static Vector512<uint> KeptFrom(uint[] keptFrom, int i) => Vector512.Create(i < keptFrom.Length ? keptFrom[i] : 0);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Vector(long j)
    {
        var baseFloats = FusedInput.Widen(baseValues + j);
        var products = DareMask.GoldenProducts16(low + (uint)j);
        var delta0 = Kept(inputs[0].Delta(j, baseFloats, products, ref dropped[0]), _k0);
        var delta1 = TCount.Value > 1 ? Kept(inputs[1].Delta(j, baseFloats, products, ref dropped[1]), _k1) : default;
        var delta2 = TCount.Value > 2 ? Kept(inputs[2].Delta(j, baseFloats, products, ref dropped[2]), _k2) : default;
        var delta3 = TCount.Value > 3 ? Kept(inputs[3].Delta(j, baseFloats, products, ref dropped[3]), _k3) : default;
        var merged = TiesBySumFewWideOperator<TCount>.Combine(delta0, delta1, delta2, delta3, _w0, _w1, _w2, _w3, _lambda, normalize);
        target.Store(merged.GetLower(), j);
        target.Store(merged.GetUpper(), j + 8);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Scalar(long j)
    {
        var baseFloat = BitConverter.UInt32BitsToSingle((uint)baseValues[j] << 16);
        Span<float> deltas = stackalloc float[TCount.Value];
        for (var i = 0; i < deltas.Length; i++)
        {
            var delta = inputs[i].Delta(j, baseFloat, low, ref dropped[i]);
            deltas[i] = !TTrim.Trims || (BitConverter.SingleToUInt32Bits(delta) & 0x7FFFFFFF) >= keptFrom[i] ? delta : 0f;
        }
        target.Store(TiesCombineRange.Merged(deltas, weights, bySignCount: false, normalize, lambda), j);
    }

    /// <summary>The values whose magnitude (as IEEE bits) is at least <paramref name="keptFrom"/>, zero elsewhere (no compare when untrimmed).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Kept(Vector512<float> values, Vector512<uint> keptFrom) =>
        TTrim.Trims ? values & Vector512.GreaterThanOrEqual(values.AsUInt32() & Vector512.Create(0x7FFFFFFFu), keptFrom).AsSingle() : values;
}
