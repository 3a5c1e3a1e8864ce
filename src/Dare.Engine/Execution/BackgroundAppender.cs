using Dare.Engine.Safetensors;

namespace Dare.Engine.Merge;

/// <summary>
/// Lets the executor compute the next chunks while earlier ones are written: <see cref="AppendAsync"/> hands a chunk's
/// bytes to a background write, with at most <see cref="MaxInFlight"/> writes queued, run one after the other in
/// order on one writer thread of the appender's own. The workspace's output buffers (<see cref="ChunkWorkspace.OutputBuffers"/>,
/// one more than that) then take the disk's hiccups: a write that takes several chunks' time no longer stops the
/// computation at the next chunk. Whoever touches the writer or the memory being written first calls <see cref="Wait"/>,
/// which also rethrows the first failed write's exception (writes queued after it do not run). A tensor's BeginTensor
/// travels with its first chunk, so starting the next tensor does not wait for the previous writes.
/// </summary>
/// <remarks>
/// One thread for all the writes, not a task per write: a long-running task starts a thread of its own, and on two
/// busy cores that start left the disk idle 0.4 ms (median) to 8 ms between writes, ~0.1 s of a 1 s medium export.
/// </remarks>
internal sealed class BackgroundAppender : IDisposable
{
    /// <summary>Writes queued at most: one output buffer is always free for the chunk being computed.</summary>
    public const int MaxInFlight = ChunkWorkspace.OutputBuffers - 1;

    private readonly CheckpointWriter _writer;
    private readonly Queue<Task> _inFlight = new();
    private string? _begin;
    private long _backgroundTicks;

    /// <summary>One queued write: the tensor to begin first (if any), the bytes (scanned for NaN/Inf already when KnownFinite), and its completion.</summary>
    private sealed record PendingWrite(string? Begin, IntPtr Data, long Length, bool KnownFinite, TaskCompletionSource Done);

    /// <summary>Writes handed to the thread and not yet started; locking it guards it and <see cref="_closing"/>, and it is the signal for changes.</summary>
    private readonly Queue<PendingWrite> _pending = new();
    private bool _closing;
    private Thread? _thread;

    /// <summary>The writer thread, once the first write started it (for the tests: <see cref="Dispose"/> ends it).</summary>
    internal Thread? WriterThread => _thread;

    public BackgroundAppender(CheckpointWriter writer) => _writer = writer;

    /// <summary>Time the background writes took (overlapped with the caller's work); read it after <see cref="Finish"/>.</summary>
    public TimeSpan BackgroundTime => System.Diagnostics.Stopwatch.GetElapsedTime(0, Interlocked.Read(ref _backgroundTicks));

    /// <summary>The next tensor to write; its BeginTensor is issued with its first bytes (or by <see cref="Finish"/>).</summary>
    public void BeginTensor(string name)
    {
        if (_begin is not null) Finish();
        _begin = name;
        NextBlockPhase = _writer.BlockPhase(name);
    }

    /// <summary>
    /// Where the next byte appended lies past a block boundary of its output file (see <see cref="CheckpointWriter.BlockPhase"/>):
    /// bytes in memory that far past a block are written from where they are.
    /// </summary>
    public int NextBlockPhase { get; private set; }

    /// <summary>
    /// Writes <paramref name="length"/> bytes at <paramref name="data"/> in the background, after the writes queued
    /// before it; that memory must stay unchanged until this write is waited for (by <see cref="Wait"/>, or here once
    /// <see cref="MaxInFlight"/> later writes are queued: the buffer is then about to be handed out again).
    /// <paramref name="knownFinite"/>: the bytes' producer found no NaN/Inf in them (see <see cref="CheckpointWriter.Append(byte*, long, bool)"/>).
    /// </summary>
    public void AppendAsync(IntPtr data, long length, bool knownFinite = false)
    {
        while (_inFlight.Count >= MaxInFlight) WaitOldest();
        var write = new PendingWrite(_begin, data, length, knownFinite, new TaskCompletionSource());
        _begin = null;
        lock (_pending)
        {
            _pending.Enqueue(write);
            Monitor.Pulse(_pending);
        }
        _thread ??= StartThread();
        _inFlight.Enqueue(write.Done.Task);
        NextBlockPhase = (int)((NextBlockPhase + length) % CheckpointWriter.DataAlignment);
    }

    private Thread StartThread()
    {
        var thread = new Thread(WriteInOrder) { IsBackground = true, Name = "Dare writer" };
        thread.Start();
        return thread;
    }

    /// <summary>The writer thread: each write after the one before it, and none after a failed one (those are cancelled).</summary>
    private unsafe void WriteInOrder()
    {
        var failed = false;
        while (true)
        {
            PendingWrite write;
            lock (_pending)
            {
                while (_pending.Count == 0 && !_closing) Monitor.Wait(_pending);
                if (_pending.Count == 0) return;
                write = _pending.Dequeue();
            }
            if (failed)
            {
                write.Done.SetCanceled();
                continue;
            }
            try
            {
                var start = System.Diagnostics.Stopwatch.GetTimestamp();
                if (write.Begin is not null) _writer.BeginTensor(write.Begin);
                _writer.Append((byte*)write.Data, write.Length, write.KnownFinite);
                Interlocked.Add(ref _backgroundTicks, System.Diagnostics.Stopwatch.GetTimestamp() - start);
                write.Done.SetResult();
            }
            catch (Exception ex)
            {
                failed = true;
                write.Done.SetException(ex);
            }
        }
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

    /// <summary>Waits for the writes still queued (after a failure elsewhere; their own exceptions are dropped) so the writer can be disposed, then ends the writer thread.</summary>
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
        lock (_pending)
        {
            _closing = true;
            Monitor.Pulse(_pending);
        }
        _thread?.Join();
    }
}
