using Dare.Engine.Safetensors;

namespace Dare.Engine.Merge;

/// <summary>
/// Lets the executor compute the next chunks while earlier ones are written: <see cref="AppendAsync"/> hands a chunk's
/// bytes to a background write, with at most <see cref="MaxInFlight"/> writes queued, run one after the other in
/// order. The workspace's output buffers (<see cref="ChunkWorkspace.OutputBuffers"/>, one more than that) then take
/// the disk's hiccups: a write that takes several chunks' time no longer stops the computation at the next chunk.
/// Whoever touches the writer or the memory being written first calls <see cref="Wait"/>, which also rethrows the
/// first failed write's exception (writes queued after it do not run). A tensor's BeginTensor travels with its first
/// chunk, so starting the next tensor does not wait for the previous writes.
/// </summary>
internal sealed class BackgroundAppender : IDisposable
{
    /// <summary>Writes queued at most: one output buffer is always free for the chunk being computed.</summary>
    public const int MaxInFlight = ChunkWorkspace.OutputBuffers - 1;

    private readonly CheckpointWriter _writer;
    private readonly Queue<Task> _inFlight = new();
    private Task _last = Task.CompletedTask;
    private string? _begin;
    private long _backgroundTicks;

    public BackgroundAppender(CheckpointWriter writer) => _writer = writer;

    /// <summary>Time the background writes took (overlapped with the caller's work); read it after <see cref="Finish"/>.</summary>
    public TimeSpan BackgroundTime => System.Diagnostics.Stopwatch.GetElapsedTime(0, Interlocked.Read(ref _backgroundTicks));

    /// <summary>The next tensor to write; its BeginTensor is issued with its first bytes (or by <see cref="Finish"/>).</summary>
    public void BeginTensor(string name)
    {
        if (_begin is not null) Finish();
        _begin = name;
    }

    /// <summary>
    /// Writes <paramref name="length"/> bytes at <paramref name="data"/> in the background, after the writes queued
    /// before it; that memory must stay unchanged until this write is waited for (by <see cref="Wait"/>, or here once
    /// <see cref="MaxInFlight"/> later writes are queued: the buffer is then about to be handed out again).
    /// </summary>
    public unsafe void AppendAsync(IntPtr data, long length)
    {
        while (_inFlight.Count >= MaxInFlight) WaitOldest();
        var begin = _begin;
        _begin = null;
        // Only after the previous write succeeded: the file is written front to back.
        _last = _last.ContinueWith(_ =>
        {
            var start = System.Diagnostics.Stopwatch.GetTimestamp();
            if (begin is not null) _writer.BeginTensor(begin);
            _writer.Append((byte*)data, length);
            Interlocked.Add(ref _backgroundTicks, System.Diagnostics.Stopwatch.GetTimestamp() - start);
        }, CancellationToken.None, TaskContinuationOptions.OnlyOnRanToCompletion | TaskContinuationOptions.LongRunning, TaskScheduler.Default);
        _inFlight.Enqueue(_last);
    }

    /// <summary>Waits for every queued write, rethrowing the first one's exception (a NonFiniteValues failure of its check among them), then hands on their warnings.</summary>
    public void Wait()
    {
        while (_inFlight.Count > 0) WaitOldest();
    }

    /// <summary>Waits for the oldest queued write; its failure is rethrown (before any later write's cancellation, which it caused).</summary>
    private void WaitOldest()
    {
        var oldest = _inFlight.Dequeue();
        if (_inFlight.Count == 0) _last = Task.CompletedTask;
        oldest.GetAwaiter().GetResult();
        // The writer checks each chunk for NaN/Inf on the background thread; its warnings reach the observer here, on the caller's thread.
        _writer.NonFinite?.FlushWarnings();
    }

    /// <summary>Waits for the queued writes and issues a BeginTensor still due: afterwards the writer is idle.</summary>
    public void Finish()
    {
        Wait();
        if (_begin is null) return;
        var begin = _begin;
        _begin = null;
        _writer.BeginTensor(begin);
    }

    /// <summary>Waits for the writes still queued (after a failure elsewhere; their own exceptions are dropped) so the writer can be disposed.</summary>
    public void Dispose()
    {
        foreach (var write in _inFlight)
        {
            try
            {
                write.Wait();
            }
            catch (AggregateException)
            {
                // The export is already failing (or a write before this one failed, which cancelled it); the first error is the one reported.
            }
        }
        _inFlight.Clear();
    }
}
