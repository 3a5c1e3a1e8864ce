using Dare.Engine.Safetensors;

namespace Dare.Engine.Merge;

/// <summary>
/// Lets the executor compute the next chunk while the previous one is written: <see cref="AppendAsync"/> hands a
/// chunk's bytes to a background thread, with at most one write in flight. Whoever touches the writer or the
/// memory being written first calls <see cref="Wait"/>, which also rethrows the write's exception. A tensor's
/// BeginTensor travels with its first chunk, so starting the next tensor does not wait for the previous write.
/// </summary>
internal sealed class BackgroundAppender : IDisposable
{
    private readonly CheckpointWriter _writer;
    private Task _pending = Task.CompletedTask;
    private string? _begin;
    private long _backgroundTicks;

    public BackgroundAppender(CheckpointWriter writer) => _writer = writer;

    /// <summary>Time the background writes took (overlapped with the caller's work); read it after <see cref="Finish"/>.</summary>
    public TimeSpan BackgroundTime => System.Diagnostics.Stopwatch.GetElapsedTime(0, _backgroundTicks);

    /// <summary>The next tensor to write; its BeginTensor is issued with its first bytes (or by <see cref="Finish"/>).</summary>
    public void BeginTensor(string name)
    {
        if (_begin is not null) Finish();
        _begin = name;
    }

    /// <summary>Writes <paramref name="length"/> bytes at <paramref name="data"/> in the background; that memory must stay unchanged until the next <see cref="Wait"/>.</summary>
    public unsafe void AppendAsync(IntPtr data, long length)
    {
        Wait();
        var begin = _begin;
        _begin = null;
        _pending = Task.Factory.StartNew(() =>
        {
            var start = System.Diagnostics.Stopwatch.GetTimestamp();
            if (begin is not null) _writer.BeginTensor(begin);
            _writer.Append((byte*)data, length);
            _backgroundTicks += System.Diagnostics.Stopwatch.GetTimestamp() - start;
        }, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
    }

    /// <summary>Waits for the write in flight, rethrowing its exception (a NonFiniteValues failure of its check among them), then hands on its warnings.</summary>
    public void Wait()
    {
        var pending = _pending;
        _pending = Task.CompletedTask;
        pending.GetAwaiter().GetResult();
        // The writer checks each chunk for NaN/Inf on the background thread; its warnings reach the observer here, on the caller's thread.
        _writer.NonFinite?.FlushWarnings();
    }

    /// <summary>Waits for the write in flight and issues a BeginTensor still due: afterwards the writer is idle.</summary>
    public void Finish()
    {
        Wait();
        if (_begin is null) return;
        var begin = _begin;
        _begin = null;
        _writer.BeginTensor(begin);
    }

    /// <summary>Waits for a write still in flight (after a failure elsewhere; its own exception is dropped) so the writer can be disposed.</summary>
    public void Dispose()
    {
        try
        {
            _pending.Wait();
        }
        catch (AggregateException)
        {
            // The export is already failing; the first error is the one reported.
        }
    }
}
