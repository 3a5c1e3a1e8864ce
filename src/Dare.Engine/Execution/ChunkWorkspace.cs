using TorchSharp;
using static TorchSharp.torch;

namespace Dare.Engine.Merge;

/// <summary>
/// Chunk buffers reused from tensor to tensor during one run of the executor, so that the steady state allocates
/// nothing: no page faults on fresh memory, no allocator fragmentation, and a peak memory set by the largest chunk
/// rather than by how the allocator happens to reuse freed blocks. Slot 0 holds the base chunk in float32, slot
/// i + 1 input i's δ; raw slots keep chunks as stored (same numbering); the staging buffer receives raw bytes
/// about to be widened; the two output buffers the converted result.
/// Buffers are outside any dispose scope and owned by the workspace; the views it hands out belong to the caller's
/// scope. Each buffer grows to the largest request and is freed by <see cref="Dispose"/>.
/// </summary>
internal sealed class ChunkWorkspace : IDisposable
{
    private readonly List<Tensor?> _floats = new();
    private readonly List<Tensor?> _raw = new();
    private Tensor? _staging;
    private readonly Tensor?[] _outputs = new Tensor?[2];
    private int _nextOutput;

    /// <summary>Whether buffers are allocated in page-locked memory (for asynchronous copies to a CUDA device).</summary>
    public bool Pinned { get; init; }

    /// <summary>A float32 view of <paramref name="count"/> elements of slot <paramref name="slot"/> (contents undefined).</summary>
    public Tensor Floats(int slot, long count) => SlotView(_floats, slot, ScalarType.Float32, count);

    /// <summary>A bfloat16 view of <paramref name="count"/> elements of raw slot <paramref name="slot"/> (base 0, input i at i + 1) for data kept as stored.</summary>
    public Tensor Raw(int slot, long count) => SlotView(_raw, slot, ScalarType.BFloat16, count);

    private Tensor SlotView(List<Tensor?> slots, int slot, ScalarType type, long count)
    {
        while (slots.Count <= slot) slots.Add(null);
        var buffer = slots[slot];
        var view = View(ref buffer, type, count);
        slots[slot] = buffer;
        return view;
    }

    /// <summary>A byte view of <paramref name="bytes"/> bytes for raw reads (contents undefined).</summary>
    public Tensor Staging(long bytes) => View(ref _staging, ScalarType.Byte, bytes);

    /// <summary>
    /// A view of <paramref name="count"/> elements of type <paramref name="type"/> for the converted output, in the
    /// other output buffer than last time (across tensors too): the export fills one while the other is being written.
    /// </summary>
    public Tensor NextOutput(ScalarType type, long count)
    {
        var buffer = _nextOutput;
        _nextOutput ^= 1;
        if (_outputs[buffer] is { } existing && existing.dtype != type)
        {
            existing.Dispose();
            _outputs[buffer] = null;
        }
        return View(ref _outputs[buffer], type, count);
    }

    private Tensor View(ref Tensor? buffer, ScalarType type, long count)
    {
        if (buffer is null || buffer.shape[0] < count)
        {
            buffer?.Dispose();
            buffer = null;
            buffer = Pinned ? PinnedEmpty(type, Math.Max(count, 1)) : empty(new[] { Math.Max(count, 1) }, type).DetachFromDisposeScope();
        }
        return buffer.narrow(0, 0, count);
    }

    private static Tensor PinnedEmpty(ScalarType type, long count)
    {
        using var pageable = empty(new[] { count }, type);
        return pageable.pin_memory().DetachFromDisposeScope();
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
    }
}
