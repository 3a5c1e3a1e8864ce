using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Dare.Engine.Merge;

/// <summary>
/// An operation over a range, as a struct the <see cref="VectorDriver"/> calls: a vector body for <see cref="Lanes"/>
/// elements at a time and a scalar body for the tail (as System.Numerics.Tensors' operator structs). Both bodies must
/// do the same IEEE operations per element, so the result does not depend on where the tail starts; a reduction
/// counts or sums into the operator's own fields (the driver hands the operator back), in an order-free way (integer
/// counts) or in element order, so the tail's start does not matter either (the one exception, GramKernels' per-lane
/// float64 sums, depends only on the range, which the driver always splits the same way). Mark both bodies
/// <see cref="MethodImplOptions.AggressiveInlining"/>: the driver's loop should be the loop a hand-written kernel
/// would have. Scratch a vector body needs comes from the caller (allocated once, before the driver runs, and held as
/// a pointer field), never a stackalloc in the body, which would grow the stack at every step.
/// </summary>
internal interface IElementOperator
{
    /// <summary>Elements one <see cref="Vector"/> call handles.</summary>
    static abstract int Lanes { get; }

    /// <summary>
    /// Whether the vector body can run on this machine (e.g. needs FMA). Constant per type: an operation that is
    /// vectorised only for some instances (TIES's sign count, more than 16 inputs) is a second type, scalar only,
    /// with the same scalar body.
    /// </summary>
    static abstract bool IsVectorized { get; }

    /// <summary>Elements [j, j + Lanes).</summary>
    void Vector(long j);

    /// <summary>Element j.</summary>
    void Scalar(long j);
}

/// <summary>The one loop every kernel runs: vector steps while a whole vector fits, then the scalar tail.</summary>
internal static class VectorDriver
{
    /// <summary>
    /// Applies <paramref name="op"/> to elements [start, end) on the calling thread, in element order, and returns
    /// the operator as the loop left it (a reducing operator's counts and sums are in its fields; an element-wise
    /// caller ignores it). The operator comes by value so the JIT can keep its fields (pointers, scalars, counts)
    /// in registers, as a hand-written loop would. Compiled fully optimised at once: a caller still in tier 0 calls it
    /// rather than inlining it, and a tier-0 driver would call the bodies element by element until on-stack
    /// replacement caught up (slower than a hand-written loop in its caller, which is replaced in place).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining | MethodImplOptions.AggressiveOptimization)]
    public static TOperator Run<TOperator>(TOperator op, long start, long end) where TOperator : struct, IElementOperator
    {
        var j = start;
        if (Vector256.IsHardwareAccelerated && TOperator.IsVectorized)
        {
            var lanes = TOperator.Lanes;
            for (; j <= end - lanes; j += lanes) op.Vector(j);
        }
        for (; j < end; j++) op.Scalar(j);
        return op;
    }

    /// <summary>Applies an element-wise <paramref name="op"/> to elements [0, count), one <see cref="Partition"/> range per core.</summary>
    public static void RunParallel<TOperator>(TOperator op, long count) where TOperator : struct, IElementOperator =>
        Partition.Run(count, (_, start, end) => Run(op, start, end));
}
