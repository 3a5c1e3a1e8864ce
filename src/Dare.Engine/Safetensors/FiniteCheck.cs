using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Dare.Engine.Merge;

namespace Dare.Engine.Safetensors;

/// <summary>
/// Finds NaN and ±Inf in raw float bytes (bfloat16, float16, float32, float64) without converting them: a value is
/// non-finite exactly when all its exponent bits are set. The scan ORs Vector256 compare results and looks at them
/// once at the end, so clean data (the normal case) costs one load, one AND and one compare per 32 bytes; chunks of
/// a few MB are split over the cores. Counting is separate and only runs once something was found.
/// </summary>
public static class FiniteCheck
{
    /// <summary>Below this many bytes one core scans (splitting costs more than it saves).</summary>
    private const long ParallelBytes = 4L << 20;

    public static bool Applies(SafetensorsDType dtype) =>
        dtype is SafetensorsDType.BF16 or SafetensorsDType.F16 or SafetensorsDType.F32 or SafetensorsDType.F64;

    /// <summary>Whether any of the <paramref name="bytes"/> / element-size values at <paramref name="data"/> is NaN or ±Inf.</summary>
    public static unsafe bool AnyNonFinite(byte* data, long bytes, SafetensorsDType dtype)
    {
        if (!Applies(dtype) || bytes <= 0) return false;
        var size = dtype.ElementSize();
        var count = bytes / size;
        if (bytes < ParallelBytes || Environment.ProcessorCount < 2) return AnyInRange(data, 0, count, dtype);
        return AnyInParts(data, count, Math.Min(Environment.ProcessorCount, (int)(bytes / (ParallelBytes / 2))), dtype);
    }

    // A method of its own: C# allocates a lambda's captured variables when their scope is entered, and the kernels call
    // AnyNonFinite once per 64K-element piece, on the short path (~100K closures, 5 MB, in a large export).
    private static unsafe bool AnyInParts(byte* data, long count, int parts, SafetensorsDType dtype)
    {
        var per = (count + parts - 1) / parts;
        var found = 0;
        Parallel.For(0, parts, part =>
        {
            var first = part * per;
            var n = Math.Min(per, count - first);
            if (n > 0 && AnyInRange(data, first, n, dtype)) Volatile.Write(ref found, 1);
        });
        return found != 0;
    }

    /// <summary>How many values are NaN or ±Inf.</summary>
    public static unsafe long CountNonFinite(byte* data, long bytes, SafetensorsDType dtype) => dtype switch
    {
        SafetensorsDType.BF16 => Count((ushort*)data, bytes / 2, (ushort)0x7F80),
        SafetensorsDType.F16 => Count((ushort*)data, bytes / 2, (ushort)0x7C00),
        SafetensorsDType.F32 => Count((uint*)data, bytes / 4, 0x7F800000u),
        SafetensorsDType.F64 => Count((ulong*)data, bytes / 8, 0x7FF0000000000000ul),
        _ => 0,
    };

    private static unsafe bool AnyInRange(byte* data, long first, long count, SafetensorsDType dtype) => dtype switch
    {
        SafetensorsDType.BF16 => Any((ushort*)data + first, count, (ushort)0x7F80),
        SafetensorsDType.F16 => Any((ushort*)data + first, count, (ushort)0x7C00),
        SafetensorsDType.F32 => Any((uint*)data + first, count, 0x7F800000u),
        SafetensorsDType.F64 => Any((ulong*)data + first, count, 0x7FF0000000000000ul),
        _ => false,
    };

    private static unsafe bool Any<T>(T* values, long count, T exponent) where T : unmanaged, IBinaryInteger<T> =>
        VectorDriver.Run(new NonFiniteSeen<T>(values, exponent), 0, count).Seen;

    private static unsafe long Count<T>(T* values, long count, T exponent) where T : unmanaged, IBinaryInteger<T> =>
        VectorDriver.Run(new NonFiniteCounter<T>(values, exponent), 0, count).Found;

    /// <summary>
    /// Whether any value has all of <paramref name="exponent"/>'s bits set: the compare results of four vectors a step
    /// are ORed into one vector, looked at once at the end.
    /// </summary>
    private unsafe struct NonFiniteSeen<T>(T* values, T exponent) : IElementOperator where T : unmanaged, IBinaryInteger<T>
    {
        private readonly Vector256<T> _mask = Vector256.Create(exponent);
        private Vector256<T> _seen;
        private bool _seenInTail;

        public readonly bool Seen => _seenInTail || _seen != Vector256<T>.Zero;

        public static int Lanes => 4 * Vector256<T>.Count;
        public static bool IsVectorized => true;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Vector(long i)
        {
            var p = values + i;
            var width = Vector256<T>.Count;
            _seen |= Vector256.Equals(Vector256.Load(p) & _mask, _mask)
                | Vector256.Equals(Vector256.Load(p + width) & _mask, _mask)
                | Vector256.Equals(Vector256.Load(p + 2 * width) & _mask, _mask)
                | Vector256.Equals(Vector256.Load(p + 3 * width) & _mask, _mask);
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Scalar(long i)
        {
            if ((values[i] & exponent) == exponent) _seenInTail = true;
        }
    }

    /// <summary>How many values have all of <paramref name="exponent"/>'s bits set.</summary>
    private unsafe struct NonFiniteCounter<T>(T* values, T exponent) : IElementOperator where T : unmanaged, IBinaryInteger<T>
    {
        private readonly Vector256<T> _mask = Vector256.Create(exponent);

        public long Found { get; private set; }

        public static int Lanes => Vector256<T>.Count;
        public static bool IsVectorized => true;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Vector(long i) =>
            Found += BitOperations.PopCount(Vector256.Equals(Vector256.Load(values + i) & _mask, _mask).ExtractMostSignificantBits());

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Scalar(long i)
        {
            if ((values[i] & exponent) == exponent) Found++;
        }
    }
}
