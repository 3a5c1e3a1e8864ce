using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Dare.Engine.Safetensors;

namespace Dare.Engine.Merge;

/// <summary>
/// TIES's single pass (DARE-TIES whose drop leaves no more survivors than TIES keeps, or TIES keeping everything) with
/// every step of an element in registers, as <see cref="DareLinearKernel"/> does for linear: 16 elements at a time,
/// the base widened once, each input's masked δ (<see cref="FusedInput"/>) handed straight to the sign election and
/// disjoint mean (<see cref="TiesBySumFewWideOperator{TCount}.Combine"/>). <see cref="ChunkKernels.MergeFromBFloat16"/>
/// stores each δ in a block in cache and loads it again for the combine; the same IEEE operations per element in the
/// same order give the same bits. Taken for one to four inputs electing by sum, where AVX-512 runs it natively
/// (<see cref="Takes"/>); elsewhere its 16 lanes would be emulated.
/// </summary>
internal static unsafe class DareTiesKernel
{
    /// <summary>Whether the fused pass takes a merge of <paramref name="inputs"/> inputs electing by sum (by sign count it does not).</summary>
    public static bool Takes(int inputs, bool bySignCount) => DareLinearKernel.Preferred && !bySignCount && inputs is >= 1 and <= 4;

    /// <summary>
    /// Elements [first, first + count) of the chunk: the TIES of every input's masked δ (nothing trimmed), the weighted
    /// mean of those agreeing with the elected sign when <paramref name="normalize"/>, × <paramref name="lambda"/>,
    /// through <paramref name="target"/>. Returns each input's drop count and whether the output is all finite.
    /// </summary>
    public static ChunkKernels.MergedChunk MergeChunk(StoredRange baseBits, DeltaSource[] sources, double[] weights, bool normalize, double lambda,
        CombineTarget target, long first, long count)
    {
        if (sources.Length is < 1 or > 4) throw new ArgumentException($"The fused TIES pass takes 1 to 4 inputs, not {sources.Length}.");
        var noWeights = new float[sources.Length];
        return ChunkKernels.MergePieces(baseBits, sources, target, first, count, scratchFloats: 0, (baseValues, tuned, pieceTarget, start, end, dropped, _) =>
        {
            foreach (var (blockStart, blockEnd) in FusedInput.KeyBlocks(first, start, end))
            {
                var inputs = FusedInput.For(sources, tuned, noWeights, first + blockStart);
                switch (inputs.Length)
                {
                    case 1: RunFor<OneInput>(); break;
                    case 2: RunFor<TwoInputs>(); break;
                    case 3: RunFor<ThreeInputs>(); break;
                    default: RunFor<FourInputs>(); break;
                }

                void RunFor<TCount>() where TCount : struct, IInputCount =>
                    Run(new DareTiesOperator<TCount>(baseValues, inputs, (uint)first, weights, normalize, lambda, pieceTarget, dropped), blockStart, blockEnd);
            }
        });
    }

    /// <summary>The operator's loop, a method of its own so that the JIT's inlining budget is the loop's alone.</summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static void Run<TCount>(DareTiesOperator<TCount> op, long start, long end) where TCount : struct, IInputCount => VectorDriver.Run(op, start, end);
}

/// <summary>
/// Chunk elements j of the fused TIES pass for <typeparamref name="TCount"/> inputs: each input's masked δ
/// (<see cref="FusedInput.Delta(long, Vector512{float}, Vector512{uint}, ref long)"/>), then TIES's election and mean
/// over them all. <see cref="TiesCombineRange.Merged"/> is the definition, which the scalar body calls;
/// <paramref name="low"/> is element 0's counter.
/// </summary>
internal readonly unsafe struct DareTiesOperator<TCount>(ushort* baseValues, FusedInput[] inputs, uint low, double[] weights, bool normalize, double lambda,
    CombineTarget target, long[] dropped) : IElementOperator where TCount : struct, IInputCount
{
    private readonly Vector512<double> _w0 = Vector512.Create(weights[0]), _w1 = Weight(weights, 1), _w2 = Weight(weights, 2), _w3 = Weight(weights, 3);
    private readonly Vector512<double> _lambda = Vector512.Create(lambda);

    public static int Lanes => 16;
    public static bool IsVectorized => DareLinearKernel.Preferred;

    private static Vector512<double> Weight(double[] weights, int i) => Vector512.Create(i < weights.Length ? weights[i] : 0);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Vector(long j)
    {
        var baseFloats = FusedInput.Widen(baseValues + j);
        var products = DareMask.GoldenProducts16(low + (uint)j);
        var delta0 = inputs[0].Delta(j, baseFloats, products, ref dropped[0]);
        var delta1 = TCount.Value > 1 ? inputs[1].Delta(j, baseFloats, products, ref dropped[1]) : default;
        var delta2 = TCount.Value > 2 ? inputs[2].Delta(j, baseFloats, products, ref dropped[2]) : default;
        var delta3 = TCount.Value > 3 ? inputs[3].Delta(j, baseFloats, products, ref dropped[3]) : default;
        var merged = TiesBySumFewWideOperator<TCount>.Combine(delta0, delta1, delta2, delta3, _w0, _w1, _w2, _w3, _lambda, normalize);
        target.Store(merged.GetLower(), j);
        target.Store(merged.GetUpper(), j + 8);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Scalar(long j)
    {
        var baseFloat = BitConverter.UInt32BitsToSingle((uint)baseValues[j] << 16);
        Span<float> deltas = stackalloc float[TCount.Value];
        for (var i = 0; i < deltas.Length; i++) deltas[i] = inputs[i].Delta(j, baseFloat, low, ref dropped[i]);
        target.Store(TiesCombineRange.Merged(deltas, weights, bySignCount: false, normalize, lambda), j);
    }
}
