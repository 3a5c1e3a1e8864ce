using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Dare.Engine.Safetensors;

namespace Dare.Engine.Merge;

/// <summary>
/// Linear's single pass (DARE-linear, task arithmetic) with every step of an element in registers: 16 elements at a
/// time, the base widened once, each input widened, subtracted, masked (<see cref="FusedInput"/>) and added by a fused
/// multiply-add, the sum scaled and stored. <see cref="ChunkKernels.MergeFromBFloat16"/> takes the same steps one at a
/// time over a block in cache (δ stored and loaded again at each); here the same IEEE operations per element in the
/// same order give the same bits with a quarter fewer instructions, which matters where the DARE hash makes the pass
/// compute-bound. Taken only where AVX-512 runs it natively (<see cref="Preferred"/>); elsewhere the 16 lanes would
/// be emulated.
/// </summary>
internal static unsafe class DareLinearKernel
{
    /// <summary>Whether the fused single passes are taken (16-lane vectors and FMA in hardware).</summary>
    public static bool Preferred => Avx512F.IsSupported && Fma.IsSupported;

    /// <summary>
    /// Elements [first, first + count) of the chunk: Σ wᵢ·(DARE-masked δᵢ), × <paramref name="scale"/> when given,
    /// through <paramref name="target"/>, as <see cref="CombineKernels.LinearRange"/> after the fused δ and mask
    /// compute it. Returns each input's drop count and whether the output is all finite.
    /// </summary>
    public static ChunkKernels.MergedChunk MergeChunk(StoredRange baseBits, DeltaSource[] sources, float[] weights, float? scale, CombineTarget target, long first, long count) =>
        ChunkKernels.MergePieces(baseBits, sources, target, first, count, scratchFloats: 0, (baseValues, tuned, pieceTarget, start, end, dropped, _) =>
        {
            foreach (var (blockStart, blockEnd) in FusedInput.KeyBlocks(first, start, end))
            {
                var inputs = FusedInput.For(sources, tuned, weights, first + blockStart);
                Run(new DareLinearOperator(baseValues, inputs, (uint)first, scale, pieceTarget, dropped), blockStart, blockEnd);
            }
        });

    /// <summary>The operator's loop, a method of its own so that the JIT's inlining budget is the loop's alone.</summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static void Run(DareLinearOperator op, long start, long end) => VectorDriver.Run(op, start, end);
}

/// <summary>
/// Chunk elements j: base + (Σ wᵢ·δᵢ) × scale through the target, δᵢ the masked δ of <see cref="FusedInput.Delta(long, float, uint, ref long)"/>
/// (<paramref name="low"/>: element 0's counter). The scalar body is the definition; the vector body does the same
/// operations per lane. Drops are counted into <paramref name="dropped"/>.
/// </summary>
internal readonly unsafe struct DareLinearOperator(ushort* baseValues, FusedInput[] inputs, uint low, float? scale, CombineTarget target, long[] dropped) : IElementOperator
{
    public static int Lanes => 16;
    public static bool IsVectorized => Fma.IsSupported;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Vector(long j)
    {
        var baseFloats = FusedInput.Widen(baseValues + j);
        var products = DareMask.GoldenProducts16(low + (uint)j);
        var sum = Vector512<float>.Zero;
        for (var i = 0; i < inputs.Length; i++)
        {
            ref readonly var input = ref inputs[i];
            var delta = input.Delta(j, baseFloats, products, ref dropped[i]);
            var weight = Vector512.Create(input.Weight);
            sum = i == 0 ? delta * weight : MultiplyAdd(delta, weight, sum);
        }
        if (scale is { } s) sum *= Vector512.Create(s);
        target.Store(sum.GetLower(), j);
        target.Store(sum.GetUpper(), j + 8);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Scalar(long j)
    {
        var baseFloat = BitConverter.UInt32BitsToSingle((uint)baseValues[j] << 16);
        var sum = 0f;
        for (var i = 0; i < inputs.Length; i++)
        {
            ref readonly var input = ref inputs[i];
            var delta = input.Delta(j, baseFloat, low, ref dropped[i]);
            sum = i == 0 ? delta * input.Weight : MathF.FusedMultiplyAdd(delta, input.Weight, sum);
        }
        if (scale is { } s) sum *= s;
        target.Store(sum, j);
    }

    /// <summary>a × b + c rounded once, with AVX-512, or as two 8-lane FMAs (the same bits) where it is emulated.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> MultiplyAdd(Vector512<float> a, Vector512<float> b, Vector512<float> c) =>
        Avx512F.IsSupported
            ? Avx512F.FusedMultiplyAdd(a, b, c)
            : Vector512.Create(Fma.MultiplyAdd(a.GetLower(), b.GetLower(), c.GetLower()), Fma.MultiplyAdd(a.GetUpper(), b.GetUpper(), c.GetUpper()));
}
