using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Dare.Engine.Merge;

/// <summary>
/// An element-wise operation over a range, as a struct the <see cref="VectorDriver"/> calls: a vector body for
/// <see cref="Lanes"/> elements at a time and a scalar body for the tail (as System.Numerics.Tensors' operator
/// structs). Both bodies must do the same IEEE operations per element, so the result does not depend on where the
/// tail starts. Mark both bodies <see cref="MethodImplOptions.AggressiveInlining"/>: the driver's loop should be
/// the loop a hand-written kernel would have.
/// </summary>
internal interface IElementOperator
{
    /// <summary>Elements one <see cref="Vector"/> call handles.</summary>
    static abstract int Lanes { get; }

    /// <summary>Whether the vector body can run on this machine (e.g. needs FMA).</summary>
    static abstract bool IsVectorized { get; }

    /// <summary>Elements [j, j + Lanes).</summary>
    void Vector(long j);

    /// <summary>Element j.</summary>
    void Scalar(long j);
}

/// <summary>The one loop every element-wise kernel runs: vector steps while a whole vector fits, then the scalar tail.</summary>
internal static class VectorDriver
{
    /// <summary>
    /// Applies <paramref name="op"/> to elements [start, end) on the calling thread. The operator comes by value so
    /// the JIT can keep its fields (pointers, scalars) in registers, as a hand-written loop would.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Run<TOperator>(TOperator op, long start, long end) where TOperator : struct, IElementOperator
    {
        var j = start;
        if (Vector256.IsHardwareAccelerated && TOperator.IsVectorized)
        {
            var lanes = TOperator.Lanes;
            for (; j <= end - lanes; j += lanes) op.Vector(j);
        }
        for (; j < end; j++) op.Scalar(j);
    }

    /// <summary>Applies <paramref name="op"/> to elements [0, count), one <see cref="Partition"/> range per core.</summary>
    public static void RunParallel<TOperator>(TOperator op, long count) where TOperator : struct, IElementOperator =>
        Partition.Run(count, (_, start, end) => Run(op, start, end));
}
