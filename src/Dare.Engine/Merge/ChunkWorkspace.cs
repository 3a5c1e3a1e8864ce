using TorchSharp;
using static TorchSharp.torch;

namespace Dare.Engine.Merge;

/// <summary>
/// Chunk buffers reused from tensor to tensor during one run of the executor, so that the steady state allocates
/// nothing: no page faults on fresh memory, no allocator fragmentation, and a peak memory set by the largest chunk
/// rather than by how the allocator happens to reuse freed blocks. Slot 0 holds the base chunk in float32, slot
/// i + 1 input i's δ; the staging buffer receives raw stored bytes; the output buffer the converted result.
/// Buffers are outside any dispose scope and owned by the workspace; the views it hands out belong to the caller's
/// scope. Each buffer grows to the largest request and is freed by <see cref="Dispose"/>.
/// </summary>
internal sealed class ChunkWorkspace : IDisposable
{
    private readonly List<Tensor?> _floats = new();
    private Tensor? _staging;
    private Tensor? _output;

    /// <summary>A float32 view of <paramref name="count"/> elements of slot <paramref name="slot"/> (contents undefined).</summary>
    public Tensor Floats(int slot, long count)
    {
        while (_floats.Count <= slot) _floats.Add(null);
        var buffer = _floats[slot];
        var view = View(ref buffer, ScalarType.Float32, count);
        _floats[slot] = buffer;
        return view;
    }

    /// <summary>A byte view of <paramref name="bytes"/> bytes for raw reads (contents undefined).</summary>
    public Tensor Staging(long bytes) => View(ref _staging, ScalarType.Byte, bytes);

    /// <summary>A view of <paramref name="count"/> elements of type <paramref name="type"/> for the converted output.</summary>
    public Tensor Output(ScalarType type, long count)
    {
        if (_output is not null && _output.dtype != type)
        {
            _output.Dispose();
            _output = null;
        }
        return View(ref _output, type, count);
    }

    private static Tensor View(ref Tensor? buffer, ScalarType type, long count)
    {
        if (buffer is null || buffer.shape[0] < count)
        {
            buffer?.Dispose();
            buffer = null;
            buffer = empty(new[] { Math.Max(count, 1) }, type).DetachFromDisposeScope();
        }
        return buffer.narrow(0, 0, count);
    }

    public void Dispose()
    {
        foreach (var buffer in _floats) buffer?.Dispose();
        _floats.Clear();
        _staging?.Dispose();
        _staging = null;
        _output?.Dispose();
        _output = null;
    }
}
