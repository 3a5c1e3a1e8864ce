using TensorPrimitives = System.Numerics.Tensors.TensorPrimitives;
using System.Runtime.InteropServices;
using Dare.Engine.Safetensors;
using static TorchSharp.torch;

namespace Dare.Engine.Merge;

/// <summary>
/// A run of elements in host memory: a chunk (or part of one) in a <see cref="ChunkWorkspace"/> buffer. The CPU path
/// passes these between reader, inputs, transforms, methods and sinks. A view owns nothing (the workspace decides when
/// memory is reused and freed) and needs no libtorch, so a merge on the CPU never loads it.
/// The element-wise operations round exactly as torch's did on the same types, so outputs stay byte for byte the same.
/// </summary>
internal sealed unsafe class ChunkView
{
    private readonly Tensor? _owner;
    private readonly long _offset;

    /// <param name="data">The first element.</param>
    /// <param name="count">How many elements.</param>
    /// <param name="type">The element type.</param>
    /// <param name="owner">The torch buffer this is part of, when the workspace allocates through torch (the device backend).</param>
    /// <param name="offset">The first element's index in <paramref name="owner"/>.</param>
    public ChunkView(void* data, long count, SafetensorsDType type, Tensor? owner = null, long offset = 0)
    {
        Data = (byte*)data;
        Count = count;
        DType = type;
        _owner = owner;
        _offset = offset;
    }

    public byte* Data { get; }
    public long Count { get; }
    public SafetensorsDType DType { get; }
    public long ByteLength => Count * DType.ElementSize();

    /// <summary>The elements as float32 (the view must be float32).</summary>
    public float* Floats => DType == SafetensorsDType.F32 ? (float*)Data : throw new InvalidOperationException($"Expected a float32 chunk, got {DType}.");

    /// <summary>The elements as bfloat16 bit patterns (the view must be bfloat16).</summary>
    public ushort* BFloat16Bits => DType == SafetensorsDType.BF16 ? (ushort*)Data : throw new InvalidOperationException($"Expected a bfloat16 chunk, got {DType}.");

    /// <summary>The float32 elements of each view, as the pointers the combine kernels take (one per input).</summary>
    public static IntPtr[] FloatPointers(IEnumerable<ChunkView> views) => views.Select(v => (IntPtr)v.Floats).ToArray();

    /// <summary>Elements [start, start + count) of this view.</summary>
    public ChunkView Slice(long start, long count)
    {
        if (start < 0 || count < 0 || start > Count - count) throw new ArgumentOutOfRangeException(nameof(start), $"[{start}, {start}+{count}) is outside a view of {Count} elements.");
        return new ChunkView(Data + start * DType.ElementSize(), count, DType, _owner, _offset + start);
    }

    /// <summary>This view as a CPU tensor over the same memory, for the tensor backend (only in a workspace that allocates through torch).</summary>
    public Tensor AsTensor() =>
        _owner?.narrow(0, _offset, Count) ?? throw new InvalidOperationException("This chunk is not in torch memory: the workspace must allocate through torch.");

    /// <summary>A new CPU tensor holding a copy of these elements, for torch arithmetic off the merge path (loads libtorch).</summary>
    public Tensor ToTensor()
    {
        TorchRuntime.EnsureInitialized();
        var tensor = empty(new[] { Count }, DType.ToScalarType());
        Buffer.MemoryCopy(Data, TensorMemory.Pointer(tensor), ByteLength, ByteLength);
        return tensor;
    }

    /// <summary>Sets every element to zero.</summary>
    public ChunkView Zero()
    {
        NativeMemory.Clear(Data, (nuint)ByteLength);
        return this;
    }

    /// <summary>x ← x · factor (float32), as torch's mul_ with a scalar: the factor is rounded to float first.</summary>
    public ChunkView Scale(double factor)
    {
        TensorPrimitives.Multiply(FloatSpan(), (float)factor, FloatSpan());
        return this;
    }

    /// <summary>x ← x − other (float32, same length).</summary>
    public ChunkView Subtract(ChunkView other)
    {
        TensorPrimitives.Subtract(FloatSpan(), other.FloatSpan(Count), FloatSpan());
        return this;
    }

    /// <summary>x ← x + other (float32; other float32 or bfloat16, widened exactly; same length).</summary>
    public ChunkView Add(ChunkView other)
    {
        if (other.DType != SafetensorsDType.BF16)
        {
            TensorPrimitives.Add(FloatSpan(), other.FloatSpan(Count), FloatSpan());
            return this;
        }
        var values = FloatSpan();
        if (other.Count != Count) throw new ArgumentException($"Element-wise operation on views of {Count} and {other.Count} elements.", nameof(other));
        var bits = other.BFloat16Bits;
        for (var i = 0; i < values.Length; i++) values[i] += BitConverter.UInt32BitsToSingle((uint)bits[i] << 16);
        return this;
    }

    /// <summary>Copies <paramref name="source"/> (same length, any mergeable type) into this view, converting through float32 with round-to-nearest-even.</summary>
    public ChunkView CopyFrom(ChunkView source)
    {
        if (source.Count != Count) throw new ArgumentException($"Copying {source.Count} elements into a view of {Count}.", nameof(source));
        if (source.DType == DType)
        {
            Buffer.MemoryCopy(source.Data, Data, ByteLength, ByteLength);
            return this;
        }
        if (DType == SafetensorsDType.F32)
        {
            var into = FloatSpan();
            switch (source.DType)
            {
                case SafetensorsDType.BF16: ChunkKernels.WidenBFloat16(source.BFloat16Bits, Floats, Count); break;
                case SafetensorsDType.F16: TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>(source.Data, Length), into); break;
                case SafetensorsDType.F64: { var from = (double*)source.Data; for (var i = 0; i < into.Length; i++) into[i] = (float)from[i]; break; }
                default: throw new NotSupportedException($"No conversion from {source.DType} to float32.");
            }
            return this;
        }
        if (source.DType != SafetensorsDType.F32) throw new NotSupportedException($"No conversion from {source.DType} to {DType}.");
        var values = source.FloatSpan();
        switch (DType)
        {
            case SafetensorsDType.BF16: { var to = (ushort*)Data; for (var i = 0; i < values.Length; i++) to[i] = CombineKernels.ToBFloat16(values[i]); break; }
            case SafetensorsDType.F16: TensorPrimitives.ConvertToHalf(values, new Span<Half>(Data, Length)); break;
            case SafetensorsDType.F64: { var to = (double*)Data; for (var i = 0; i < values.Length; i++) to[i] = values[i]; break; }
            default: throw new NotSupportedException($"No conversion from float32 to {DType}.");
        }
        return this;
    }

    // Chunks are at most MergeExecutor.ChunkElements long (or one tensor that fits in one), far below int.MaxValue.
    private int Length => checked((int)Count);

    private Span<float> FloatSpan() => new(Floats, Length);

    private Span<float> FloatSpan(long expected) =>
        Count == expected ? FloatSpan() : throw new ArgumentException($"Element-wise operation on views of {expected} and {Count} elements.");
}
