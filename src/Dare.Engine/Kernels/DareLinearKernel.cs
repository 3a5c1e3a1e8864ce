using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Dare.Engine.Safetensors;

namespace Dare.Engine.Merge;

/// <summary>
/// Linear's single pass (DARE-linear, task arithmetic) with every step of an element in registers: 16 elements at a
/// time, the base widened once, each input widened, subtracted, masked and added by a fused multiply-add, the sum
/// scaled and stored. <see cref="ChunkKernels.MergeFromBFloat16"/> takes the same steps one at a time over a block
/// in cache (δ stored and loaded again at each); here the same IEEE operations per element in the same order give the
/// same bits with a quarter fewer instructions, which matters where the DARE hash makes the pass compute-bound.
/// Only where AVX-512 runs it natively (<see cref="Preferred"/>); elsewhere the 16 lanes would be emulated.
/// </summary>
internal static unsafe class DareLinearKernel
{
    /// <summary>Whether Linear's single pass takes this kernel (16-lane vectors and FMA in hardware).</summary>
    public static bool Preferred => Avx512F.IsSupported && Fma.IsSupported;

    /// <summary>Whether the kernel can run at all (tests run it wherever FMA is, emulating the 16 lanes without AVX-512).</summary>
    public static bool Supported => Fma.IsSupported;

    /// <summary>
    /// Elements [first, first + count) of the chunk: Σ wᵢ·(DARE-masked δᵢ), × <paramref name="scale"/> when given,
    /// through <paramref name="target"/>, as <see cref="CombineKernels.LinearRange"/> after the fused δ and mask
    /// compute it. Returns each input's drop count.
    /// </summary>
    public static long[] MergeChunk(StoredRange baseBits, DeltaSource[] sources, float[] weights, float? scale, CombineTarget target, long first, long count) =>
        ChunkKernels.MergePieces(baseBits, sources, target, first, count, scratchFloats: 0,
            (baseValues, tuned, pieceTarget, start, end, dropped, _) => MergePiece(baseValues, tuned, sources, weights, scale, pieceTarget, first, start, end, dropped));

    /// <summary>Chunk elements [start, end), split where the tensor index crosses a 2^32 boundary (the DARE keys change there).</summary>
    private static void MergePiece(ushort* baseValues, IntPtr[] tuned, DeltaSource[] sources, float[] weights, float? scale, CombineTarget target,
        long first, long start, long end, long[] dropped)
    {
        var inputs = new FusedInput[sources.Length];
        while (start < end)
        {
            var index = first + start;
            var length = Math.Min(end - start, (((index >> 32) + 1) << 32) - index);
            for (var i = 0; i < inputs.Length; i++)
            {
                var source = sources[i];
                // A mask that drops nothing and scales by 1 is no mask (DareMask.Apply skips it too).
                var masks = source.Dare && !(source.Threshold == 0 && source.Scale == 1f);
                var (k0, k1) = DareMask.BlockKeys(source.Key, index >> 32);
                inputs[i] = new FusedInput((ushort*)tuned[i], masks, k0, k1, source.Threshold, source.Scale, weights[i]);
            }
            var op = VectorDriver.Run(new DareLinearOperator(baseValues, inputs, (uint)first, scale, target), start, start + length);
            for (var i = 0; i < inputs.Length; i++) dropped[i] += op.Dropped[i];
            start += length;
        }
    }
}

/// <summary>One input of <see cref="DareLinearOperator"/>: its stored values (indexed by chunk element) and mask.</summary>
internal readonly unsafe struct FusedInput(ushort* tuned, bool masks, uint k0, uint k1, uint threshold, float scale, float weight)
{
    public readonly ushort* Tuned = tuned;
    public readonly bool Masks = masks;
    public readonly uint K0 = k0, K1 = k1, Threshold = threshold;
    public readonly float Scale = scale, Weight = weight;
}

/// <summary>
/// Chunk elements j: base + (Σ wᵢ·mask(δᵢ)) × scale through the target, δᵢ = tunedᵢ − base (both bfloat16 widened),
/// mask(δ) = 0 where the hash of the element's counter (<paramref name="low"/> + j, the low 32 bits of its tensor
/// index) is below the threshold, else δ × the rescale. The scalar body is the definition; the vector body does the
/// same operations per lane.
/// </summary>
internal unsafe struct DareLinearOperator(ushort* baseValues, FusedInput[] inputs, uint low, float? scale, CombineTarget target) : IElementOperator
{
    private static readonly Vector512<uint> Lane = Vector512.Create(0u, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);

    /// <summary>Elements each input's mask dropped so far.</summary>
    public readonly long[] Dropped = new long[inputs.Length];

    public static int Lanes => 16;
    public static bool IsVectorized => DareLinearKernel.Supported;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Vector(long j)
    {
        var baseFloats = Widen(baseValues + j);
        var counter = Vector512.Create(low + (uint)j) + Lane;
        var sum = Vector512<float>.Zero;
        for (var i = 0; i < inputs.Length; i++)
        {
            ref readonly var input = ref inputs[i];
            var delta = Widen(input.Tuned + j) - baseFloats;
            if (input.Masks)
            {
                var drop = Vector512.LessThan(DareMask.HashOf(counter, Vector512.Create(input.K0), Vector512.Create(input.K1)), Vector512.Create(input.Threshold));
                delta = Vector512.ConditionalSelect(drop.AsSingle(), Vector512<float>.Zero, delta * Vector512.Create(input.Scale));
                Dropped[i] += BitOperations.PopCount(drop.ExtractMostSignificantBits());
            }
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
            var delta = BitConverter.UInt32BitsToSingle((uint)input.Tuned[j] << 16) - baseFloat;
            if (input.Masks)
            {
                if (DareMask.HashOf(low + (uint)j, input.K0, input.K1) < input.Threshold)
                {
                    delta = 0f;
                    Dropped[i]++;
                }
                else delta *= input.Scale;
            }
            sum = i == 0 ? delta * input.Weight : MathF.FusedMultiplyAdd(delta, input.Weight, sum);
        }
        if (scale is { } s) sum *= s;
        target.Store(sum, j);
    }

    /// <summary>16 bfloat16 values as float32 (the bits shifted into the upper half).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Widen(ushort* values)
    {
        var (low, high) = Vector256.Widen(Vector256.Load(values));
        return Vector512.ShiftLeft(Vector512.Create(low, high), 16).AsSingle();
    }

    /// <summary>a × b + c rounded once, with AVX-512, or as two 8-lane FMAs (the same bits) where it is emulated.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> MultiplyAdd(Vector512<float> a, Vector512<float> b, Vector512<float> c) =>
        Avx512F.IsSupported
            ? Avx512F.FusedMultiplyAdd(a, b, c)
            : Vector512.Create(Fma.MultiplyAdd(a.GetLower(), b.GetLower(), c.GetLower()), Fma.MultiplyAdd(a.GetUpper(), b.GetUpper(), c.GetUpper()));
}
