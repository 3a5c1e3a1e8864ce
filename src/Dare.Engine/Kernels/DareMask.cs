using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Text;

namespace Dare.Engine.Merge;

/// <summary>
/// DARE's random drop, as a pure function of (seed, stream, tensor name, element index): a counter-based hash
/// decides each element independently, so the result does not depend on processing order, chunking, threads,
/// shard layout or device. <c>stream</c> separates models merged with one seed, so they do not drop the same positions.
/// </summary>
public static class DareMask
{
    /// <summary>The 64-bit key for one tensor of one model.</summary>
    public static ulong Key(long seed, int stream, string tensorName)
    {
        ulong h = 0xcbf29ce484222325UL; // FNV-1a over the UTF-8 name
        foreach (var b in Encoding.UTF8.GetBytes(tensorName))
        {
            h = (h ^ b) * 0x100000001b3UL;
        }
        return SplitMix(SplitMix((ulong)seed) ^ SplitMix((ulong)stream + 0x632be59bd9b4e019UL) ^ h);
    }

    /// <summary>Drop threshold: an element is dropped when its 32-bit hash is below this.</summary>
    public static uint Threshold(double dropRate)
    {
        if (dropRate is < 0 or >= 1 || double.IsNaN(dropRate))
        {
            throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument, $"The drop rate must satisfy 0 <= p < 1, not {dropRate}.");
        }
        return (uint)Math.Min(Math.Round(dropRate * 4294967296.0), uint.MaxValue);
    }

    /// <summary>The hash of one element; the reference definition the vectorised path reproduces.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static uint Hash(ulong key, long index)
    {
        var (k0, k1) = BlockKeys(key, index >> 32);
        return HashOf((uint)index, k0, k1);
    }

    /// <summary>True when DARE drops element <paramref name="index"/>.</summary>
    public static bool IsDropped(ulong key, long index, uint threshold) => Hash(key, index) < threshold;

    /// <summary>
    /// Whether DARE drops at least <paramref name="atLeast"/> of elements [first, first + count), decided without any
    /// data: the mask of <see cref="Apply(float*, long, long, ulong, uint, float)"/> applied to a scratch block in each
    /// core's cache, so the count is exactly the one a merge will see. Stops as soon as the answer is known.
    /// </summary>
    public static unsafe bool DropsAtLeast(long first, long count, ulong key, uint threshold, long atLeast)
    {
        const int Block = 8192;
        long dropped = 0;
        Partition.Run(count, (_, start, end) =>
        {
            // The values do not matter: only the mask is counted.
            var scratch = stackalloc float[Block];
            for (var block = start; block < end && Volatile.Read(ref dropped) < atLeast; block += Block)
            {
                Interlocked.Add(ref dropped, Apply(scratch, first + block, Math.Min(Block, end - block), key, threshold, 1f));
            }
        });
        return dropped >= atLeast;
    }

    /// <summary>
    /// Zeroes the dropped elements of <paramref name="data"/> (elements [first, first+count) of the tensor) and
    /// multiplies the survivors by <paramref name="scale"/>. Returns how many were dropped.
    /// </summary>
    public static unsafe long Apply(float* data, long first, long count, ulong key, uint threshold, float scale) =>
        Apply(data, first, count, key, threshold, scale, wide: Vector512.IsHardwareAccelerated);

    /// <summary>
    /// <see cref="Apply(float*, long, long, ulong, uint, float)"/> with 16-lane vectors or 8-lane ones (the same bits;
    /// tests run both on any machine, where 16 lanes without AVX-512 are emulated).
    /// </summary>
    internal static unsafe long Apply(float* data, long first, long count, ulong key, uint threshold, float scale, bool wide)
    {
        if (threshold == 0 && scale == 1f) return 0;
        var dropped = 0L;
        var position = 0L;
        while (position < count)
        {
            // Split at 2^32-element block boundaries, where the per-block key changes.
            var index = first + position;
            var length = InBlock(index, count - position);
            dropped += ApplyBlock(data + position, index, length, key, threshold, scale, wide);
            position += length;
        }
        return dropped;
    }

    private static unsafe long ApplyBlock(float* data, long first, long count, ulong key, uint threshold, float scale, bool wide)
    {
        var (k0, k1) = BlockKeys(key, first >> 32);
        // The mask is mostly the hash's multiplications: with AVX-512 the 16-lane operator does them in half the
        // instructions (medium DARE-linear's fused pass took 0.65 s instead of 1.0 s).
        return wide
            ? VectorDriver.Run(new WideDropOperator(data, (uint)first, k0, k1, threshold, scale), 0, count).Dropped
            : VectorDriver.Run(new DropOperator(data, (uint)first, k0, k1, threshold, scale), 0, count).Dropped;
    }

    /// <summary>
    /// Within one 2^32-element block: zeroes the elements whose hash is below the threshold, scales the others and
    /// counts the zeroed ones. Element i's counter is the low 32 bits of its tensor index, low + i. The broadcast
    /// keys are fields so that the loop does not broadcast them again at every step.
    /// </summary>
    private unsafe struct DropOperator : IElementOperator
    {
        private readonly float* _data;
        private readonly uint _low, _k0, _k1, _threshold;
        private readonly float _scale;
        private readonly Vector256<uint> _k0Vector, _k1Vector, _thresholdVector;
        private readonly Vector256<float> _scaleVector;

        public DropOperator(float* data, uint low, uint k0, uint k1, uint threshold, float scale)
        {
            _data = data;
            (_low, _k0, _k1, _threshold, _scale) = (low, k0, k1, threshold, scale);
            (_k0Vector, _k1Vector, _thresholdVector, _scaleVector) = (Vector256.Create(k0), Vector256.Create(k1), Vector256.Create(threshold), Vector256.Create(scale));
        }

        public long Dropped { get; private set; }

        public static int Lanes => 8;
        public static bool IsVectorized => true;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Vector(long i)
        {
            var h = HashOfProducts(GoldenProducts8(_low + (uint)i), _k0Vector, _k1Vector);
            var drop = Vector256.LessThan(h, _thresholdVector);
            var values = Vector256.Load(_data + i) * _scaleVector;
            Vector256.ConditionalSelect(drop.AsSingle(), Vector256<float>.Zero, values).Store(_data + i);
            Dropped += BitOperations.PopCount(drop.ExtractMostSignificantBits());
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Scalar(long i)
        {
            if (DropScalar(_data + i, _low + (uint)i, _k0, _k1, _threshold, _scale)) Dropped++;
        }
    }

    /// <summary><see cref="DropOperator"/> 16 elements at a time.</summary>
    private unsafe struct WideDropOperator : IElementOperator
    {
        private readonly float* _data;
        private readonly uint _low, _k0, _k1, _threshold;
        private readonly float _scale;
        private readonly Vector512<uint> _k0Vector, _k1Vector, _thresholdVector;
        private readonly Vector512<float> _scaleVector;

        public WideDropOperator(float* data, uint low, uint k0, uint k1, uint threshold, float scale)
        {
            _data = data;
            (_low, _k0, _k1, _threshold, _scale) = (low, k0, k1, threshold, scale);
            (_k0Vector, _k1Vector, _thresholdVector, _scaleVector) = (Vector512.Create(k0), Vector512.Create(k1), Vector512.Create(threshold), Vector512.Create(scale));
        }

        public long Dropped { get; private set; }

        public static int Lanes => 16;
        public static bool IsVectorized => true;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Vector(long i)
        {
            var h = HashOfProducts(GoldenProducts16(_low + (uint)i), _k0Vector, _k1Vector);
            var drop = Vector512.LessThan(h, _thresholdVector);
            var values = Vector512.Load(_data + i) * _scaleVector;
            Vector512.ConditionalSelect(drop.AsSingle(), Vector512<float>.Zero, values).Store(_data + i);
            Dropped += BitOperations.PopCount(drop.ExtractMostSignificantBits());
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Scalar(long i)
        {
            if (DropScalar(_data + i, _low + (uint)i, _k0, _k1, _threshold, _scale)) Dropped++;
        }
    }

    /// <summary>
    /// The hashes of elements [first, first + count) into <paramref name="destination"/>, 8 at a time: for a drop
    /// whose threshold differs per element (DELLA's, by magnitude rank).
    /// </summary>
    internal static unsafe void Hashes(ulong key, long first, long count, uint* destination)
    {
        for (var position = 0L; position < count;)
        {
            var index = first + position;
            var length = InBlock(index, count - position);
            var (k0, k1) = BlockKeys(key, index >> 32);
            VectorDriver.Run(new HashOperator(destination + position, (uint)index, k0, k1), 0, length);
            position += length;
        }
    }

    /// <summary>Within one 2^32-element block: element i's hash, as <see cref="Hash"/> computes it.</summary>
    private readonly unsafe struct HashOperator(uint* destination, uint low, uint k0, uint k1) : IElementOperator
    {
        private readonly Vector256<uint> _k0Vector = Vector256.Create(k0), _k1Vector = Vector256.Create(k1);

        public static int Lanes => 8;
        public static bool IsVectorized => true;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Vector(long i)
        {
            HashOfProducts(GoldenProducts8(low + (uint)i), _k0Vector, _k1Vector).Store(destination + i);
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Scalar(long i) => destination[i] = HashOf(low + (uint)i, k0, k1);
    }

    /// <summary>One element of the drop: zeroed if its hash is below the threshold (returns true), else scaled.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe bool DropScalar(float* value, uint counter, uint k0, uint k1, uint threshold, float scale)
    {
        var h = HashOf(counter, k0, k1);
        if (h < threshold)
        {
            *value = 0f;
            return true;
        }
        *value *= scale;
        return false;
    }

    /// <summary>How many of the <paramref name="remaining"/> elements from tensor index <paramref name="index"/> on lie in its 2^32-element block (and so share its keys).</summary>
    internal static long InBlock(long index, long remaining) => Math.Min(remaining, (((index >> 32) + 1) << 32) - index);

    /// <summary>The two 32-bit keys of one 2^32-element block (the device backend derives its masks from the same keys).</summary>
    internal static (uint, uint) BlockKeys(ulong key, long block)
    {
        var k = block == 0 ? key : SplitMix(key ^ (ulong)block);
        return ((uint)k, (uint)(k >> 32));
    }

    /// <summary>The hash of the element whose counter (low 32 bits of its index) is <paramref name="counter"/>, in a block keyed (k0, k1).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static uint HashOf(uint counter, uint k0, uint k1) => Mix(Mix(counter * Golden + k0) ^ k1);

    private const uint Golden = 0x9E3779B1u;

    /// <summary>
    /// The hash's first step, counter × <see cref="Golden"/>, of the 16 counters [first, first + 16): one scalar
    /// product broadcast plus lane × Golden, the same bits modulo 2^32 without a vector multiply (the hash's
    /// multiplies are most of a DARE pass's work, and this was one in five).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<uint> GoldenProducts16(uint first) => Vector512.Create(first * Golden) + Vector512.Create(
        0x00000000u, 0x9E3779B1u, 0x3C6EF362u, 0xDAA66D13u, 0x78DDE6C4u, 0x17156075u, 0xB54CDA26u, 0x538453D7u,
        0xF1BBCD88u, 0x8FF34739u, 0x2E2AC0EAu, 0xCC623A9Bu, 0x6A99B44Cu, 0x08D12DFDu, 0xA708A7AEu, 0x4540215Fu);

    /// <summary><see cref="GoldenProducts16"/> of the 8 counters [first, first + 8).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<uint> GoldenProducts8(uint first) => Vector256.Create(first * Golden) + Vector256.Create(
        0x00000000u, 0x9E3779B1u, 0x3C6EF362u, 0xDAA66D13u, 0x78DDE6C4u, 0x17156075u, 0xB54CDA26u, 0x538453D7u);

    /// <summary><see cref="HashOf(uint, uint, uint)"/> of 8 counters, given their <see cref="GoldenProducts8"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<uint> HashOfProducts(Vector256<uint> products, Vector256<uint> k0, Vector256<uint> k1) =>
        MixVector(MixVector(products + k0) ^ k1);

    /// <summary><see cref="HashOf(uint, uint, uint)"/> of 16 counters, given their <see cref="GoldenProducts16"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<uint> HashOfProducts(Vector512<uint> products, Vector512<uint> k0, Vector512<uint> k1) =>
        MixVector(MixVector(products + k0) ^ k1);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static uint Mix(uint x)
    {
        x ^= x >> 16; x *= 0x85EBCA6Bu;
        x ^= x >> 13; x *= 0xC2B2AE35u;
        x ^= x >> 16;
        return x;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<uint> MixVector(Vector512<uint> x)
    {
        x ^= Vector512.ShiftRightLogical(x, 16); x *= Vector512.Create(0x85EBCA6Bu);
        x ^= Vector512.ShiftRightLogical(x, 13); x *= Vector512.Create(0xC2B2AE35u);
        x ^= Vector512.ShiftRightLogical(x, 16);
        return x;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<uint> MixVector(Vector256<uint> x)
    {
        x ^= Vector256.ShiftRightLogical(x, 16); x *= Vector256.Create(0x85EBCA6Bu);
        x ^= Vector256.ShiftRightLogical(x, 13); x *= Vector256.Create(0xC2B2AE35u);
        x ^= Vector256.ShiftRightLogical(x, 16);
        return x;
    }

    private static ulong SplitMix(ulong z)
    {
        z += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }
}
