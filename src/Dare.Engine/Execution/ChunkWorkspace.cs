using Dare.Engine.Safetensors;
using static TorchSharp.torch;

namespace Dare.Engine.Merge;

/// <summary>
/// Chunk buffers reused from tensor to tensor during one run of the executor, so that the steady state allocates
/// nothing: no page faults on fresh memory, no allocator fragmentation, and a peak memory set by the largest chunk
/// rather than by how the allocator happens to reuse freed blocks. Slot 0 holds the base chunk in float32, slot
/// i + 1 input i's δ; raw slots keep chunks as stored (same numbering); the staging buffer receives raw bytes
/// about to be widened; the three output buffers the converted result.
/// Buffers are native memory owned by the workspace (torch tensors for the tensor backend, which uploads them); the
/// views it hands out are valid until the same slot is asked for again or the workspace is disposed. Each buffer grows
/// to the largest request and is freed by <see cref="Dispose"/>.
/// </summary>
internal sealed class ChunkWorkspace : IDisposable
{
    private readonly List<Buffer?> _floats = new();
    private readonly List<Buffer?> _raw = new();
    private Buffer? _staging;
    private readonly Buffer?[] _outputs = new Buffer?[OutputBuffers];
    private int _nextOutput;

    /// <summary>
    /// Output buffers, handed out in turn: the one being filled and up to <see cref="BackgroundAppender.MaxInFlight"/>
    /// being written. With two being written rather than one, a slow write (the disk's periodic stalls, 10–20 ms
    /// against a chunk's 10–15 ms of computation on this project's VM) is absorbed instead of stopping the computation.
    /// </summary>
    internal const int OutputBuffers = 3;

    /// <summary>Whether buffers are torch tensors (for the tensor backend: <see cref="ChunkView.AsTensor"/> works on its views).</summary>
    public bool TorchBuffers { get; init; }

    /// <summary>Whether torch buffers are in page-locked memory (for asynchronous copies to a CUDA device).</summary>
    public bool Pinned { get; init; }

    /// <summary>
    /// Native buffers allocated on this thread and not yet freed, by any workspace (a workspace is used and disposed on
    /// the thread that made it): the leak tests check that an export returns it to where it was.
    /// </summary>
    internal static long ThreadLiveBuffers => _threadLiveBuffers;

    [ThreadStatic] private static long _threadLiveBuffers;

    /// <summary>A float32 view of <paramref name="count"/> elements of slot <paramref name="slot"/> (contents undefined).</summary>
    public ChunkView Floats(int slot, long count) => SlotView(_floats, slot, SafetensorsDType.F32, count);

    /// <summary>A bfloat16 view of <paramref name="count"/> elements of raw slot <paramref name="slot"/> (base 0, input i at i + 1) for data kept as stored.</summary>
    public ChunkView Raw(int slot, long count) => SlotView(_raw, slot, SafetensorsDType.BF16, count);

    private ChunkView SlotView(List<Buffer?> slots, int slot, SafetensorsDType type, long count)
    {
        while (slots.Count <= slot) slots.Add(null);
        var buffer = slots[slot];
        var view = View(ref buffer, type, count);
        slots[slot] = buffer;
        return view;
    }

    /// <summary>A byte view of <paramref name="bytes"/> bytes for raw reads (contents undefined).</summary>
    public ChunkView Staging(long bytes) => View(ref _staging, SafetensorsDType.U8, bytes);

    /// <summary>
    /// A view of <paramref name="count"/> elements of type <paramref name="type"/> for the converted output, in the next
    /// output buffer in turn (across tensors too): the export fills one while the others are being written. The view
    /// starts <paramref name="phase"/> bytes past a 4096-byte boundary (less than 4096), where the bytes' place in the
    /// output file is, so that the file writes them from where they are.
    /// </summary>
    public ChunkView NextOutput(SafetensorsDType type, long count, int phase = 0)
    {
        if (phase is < 0 or >= (int)Buffer.Alignment) throw new ArgumentOutOfRangeException(nameof(phase));
        var buffer = _nextOutput;
        _nextOutput = (_nextOutput + 1) % OutputBuffers;
        return View(ref _outputs[buffer], type, count, phase);
    }

    /// <summary>Gives back the buffer the last <see cref="NextOutput"/> took, unwritten: the others may still be being written.</summary>
    public void ReturnOutput() => _nextOutput = (_nextOutput + OutputBuffers - 1) % OutputBuffers;

    /// <summary>A view of <paramref name="count"/> elements in <paramref name="buffer"/>, grown or replaced to fit; <paramref name="phase"/>: see <see cref="NextOutput"/> (null: anywhere).</summary>
    private ChunkView View(ref Buffer? buffer, SafetensorsDType type, long count, int? phase = null)
    {
        var bytes = Math.Max(count * type.ElementSize(), 1);
        if (buffer is null || !buffer.Fits(bytes, phase) || (TorchBuffers && buffer.Type != type))
        {
            buffer?.Dispose();
            buffer = null;
            // A buffer that took a phase takes the same chunk at any other: it grows only with the chunks. A torch
            // buffer starts where torch's allocator put it, so one for phased views also has room to reach a block.
            var slack = (phase > 0 ? (long)Buffer.Alignment : 0) + (TorchBuffers && phase is not null ? (long)Buffer.Alignment : 0);
            buffer = TorchBuffers ? Buffer.FromTorch(type, (bytes + slack + type.ElementSize() - 1) / type.ElementSize(), Pinned) : Buffer.Native(bytes + slack);
        }
        return buffer.View(type, count, phase);
    }

    public void Dispose()
    {
        foreach (var buffer in _floats.Concat(_raw)) buffer?.Dispose();
        _floats.Clear();
        _raw.Clear();
        _staging?.Dispose();
        _staging = null;
        foreach (var output in _outputs) output?.Dispose();
        Array.Clear(_outputs);
        // The kernels' pooled scratch goes with the chunk buffers: nothing of an export stays once it is done.
        KernelScratch.Release();
    }

    /// <summary>One buffer: aligned native memory, or a torch tensor (then its views can become tensors again).</summary>
    private sealed unsafe class Buffer : IDisposable
    {
        // Block-aligned: an output buffer is written to the file from where it is (see DirectOutputFile), and the kernels'
        // vector loads never straddle a cache line at a buffer's start.
        public const nuint Alignment = PageMemory.PageSize;
        private void* _data;
        private readonly Tensor? _tensor;

        private Buffer(void* data, long bytes, SafetensorsDType type, Tensor? tensor)
        {
            _data = data;
            Bytes = bytes;
            Type = type;
            _tensor = tensor;
        }

        public long Bytes { get; }

        /// <summary>The element type a torch buffer was made for (a native buffer serves any).</summary>
        public SafetensorsDType Type { get; }

        public static Buffer Native(long bytes)
        {
            var data = PageMemory.Allocate(bytes);
            _threadLiveBuffers++;
            return new Buffer(data, bytes, SafetensorsDType.U8, null);
        }

        public static Buffer FromTorch(SafetensorsDType type, long count, bool pinned)
        {
            TorchRuntime.EnsureInitialized();
            var elements = Math.Max(count, 1);
            Tensor tensor;
            if (pinned)
            {
                using var pageable = empty(new[] { elements }, type.ToScalarType());
                tensor = pageable.pin_memory().DetachFromDisposeScope();
            }
            else tensor = empty(new[] { elements }, type.ToScalarType()).DetachFromDisposeScope();
            return new Buffer(TensorMemory.Pointer(tensor), elements * type.ElementSize(), type, tensor);
        }

        /// <summary>Whether <paramref name="bytes"/> fit from where <see cref="View"/> would start them.</summary>
        public bool Fits(long bytes, int? phase) => Bytes - Start(phase, 1) >= bytes;

        /// <summary>
        /// <paramref name="count"/> elements as <paramref name="type"/> (a torch buffer is only asked for its own type), starting
        /// <paramref name="phase"/> bytes past a block boundary, or at the buffer's start for a null phase (a native buffer's is a boundary).
        /// </summary>
        public ChunkView View(SafetensorsDType type, long count, int? phase)
        {
            var start = Start(phase, type.ElementSize());
            return new ChunkView((byte*)_data + start, count, type, _tensor, start / type.ElementSize());
        }

        /// <summary>
        /// Bytes from the buffer's start to the first block boundary plus <paramref name="phase"/>; 0 for a null phase, or
        /// in a torch buffer where that is not a whole number of <paramref name="elementSize"/> elements in (its views are
        /// tensors; the bytes then go through the file's staging buffer).
        /// </summary>
        private long Start(int? phase, int elementSize)
        {
            if (phase is not { } inBlock) return 0;
            var start = (long)((Alignment - (nuint)_data % Alignment) % Alignment) + inBlock;
            return _tensor is null || start % elementSize == 0 ? start : 0;
        }

        public void Dispose()
        {
            if (_tensor is not null) _tensor.Dispose();
            else if (_data is not null)
            {
                PageMemory.Free(_data, Bytes);
                _threadLiveBuffers--;
            }
            _data = null;
        }
    }
}
