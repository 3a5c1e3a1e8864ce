using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Dare.Engine.Merge;

/// <summary>
/// One input of a fused single-pass operator (<see cref="DareLinearOperator"/>):
/// its stored bfloat16 values, indexed by chunk element, and its DARE mask within one 2^32-element block of the tensor.
/// δ is computed as <see cref="ChunkKernels.MergeFromBFloat16"/> computes it (tuned − base, both widened, then the mask
/// of <see cref="DareMask.Apply(float*, long, long, ulong, uint, float)"/>), 16 elements at a time in registers.
/// </summary>
internal readonly unsafe struct FusedInput
{
    public readonly ushort* Tuned;
    public readonly bool Masks;
    public readonly uint K0, K1, Threshold;
    public readonly float Scale, Weight;

    private FusedInput(ushort* tuned, bool masks, uint k0, uint k1, uint threshold, float scale, float weight)
    {
        Tuned = tuned;
        (Masks, K0, K1, Threshold, Scale, Weight) = (masks, k0, k1, threshold, scale, weight);
    }

    /// <summary>
    /// The inputs, with their <paramref name="weights"/>, for chunk elements in the 2^32-element block of tensor index
    /// <paramref name="index"/> (the DARE keys change from block to block).
    /// </summary>
    public static FusedInput[] For(DeltaSource[] sources, IntPtr[] tuned, float[] weights, long index)
    {
        var inputs = new FusedInput[sources.Length];
        for (var i = 0; i < inputs.Length; i++)
        {
            var source = sources[i];
            // A mask that drops nothing and scales by 1 is no mask (DareMask.Apply skips it too).
            var masks = source.Dare && !(source.Threshold == 0 && source.Scale == 1f);
            var (k0, k1) = DareMask.BlockKeys(source.Key, index >> 32);
            inputs[i] = new FusedInput((ushort*)tuned[i], masks, k0, k1, source.Threshold, source.Scale, weights[i]);
        }
        return inputs;
    }

    /// <summary>Chunk elements [start, end) cut where the tensor index (chunk element + <paramref name="first"/>) crosses a 2^32 boundary.</summary>
    public static IEnumerable<(long Start, long End)> KeyBlocks(long first, long start, long end)
    {
        while (start < end)
        {
            var length = DareMask.InBlock(first + start, end - start);
            yield return (start, start + length);
            start += length;
        }
    }

    /// <summary>16 bfloat16 values as float32 (the bits shifted into the upper half).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Widen(ushort* values)
    {
        if (Avx512F.IsSupported) return Avx512F.ShiftLeftLogical(Avx512F.ConvertToVector512UInt32(Vector256.Load(values)), 16).AsSingle();
        var (low, high) = Vector256.Widen(Vector256.Load(values));
        return Vector512.ShiftLeft(Vector512.Create(low, high), 16).AsSingle();
    }

    /// <summary>
    /// Masked δ of chunk elements [j, j + 16), counting the drops into <paramref name="dropped"/>; <paramref name="products"/>
    /// are their counters' <see cref="DareMask.GoldenProducts16"/>, shared by every input.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public Vector512<float> Delta(long j, Vector512<float> baseFloats, Vector512<uint> products, ref long dropped)
    {
        var delta = Widen(Tuned + j) - baseFloats;
        if (!Masks) return delta;
        var drop = Vector512.LessThan(DareMask.HashOfProducts(products, Vector512.Create(K0), Vector512.Create(K1)), Vector512.Create(Threshold));
        dropped += BitOperations.PopCount(drop.ExtractMostSignificantBits());
        return Vector512.ConditionalSelect(drop.AsSingle(), Vector512<float>.Zero, delta * Vector512.Create(Scale));
    }

    /// <summary>Masked δ of chunk element j (the definition the vector body reproduces).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public float Delta(long j, float baseFloat, uint low, ref long dropped)
    {
        var delta = BitConverter.UInt32BitsToSingle((uint)Tuned[j] << 16) - baseFloat;
        if (!Masks) return delta;
        if (DareMask.HashOf(low + (uint)j, K0, K1) < Threshold)
        {
            dropped++;
            return 0f;
        }
        return delta * Scale;
    }
}
