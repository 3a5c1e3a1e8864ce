using System.Collections.Concurrent;
using System.Runtime.InteropServices;

namespace Dare.Engine.Safetensors;

/// <summary>
/// Page-cache advice for one <see cref="TensorReader"/>, given on a thread of its own: asking the OS to read a range
/// ahead (posix_fadvise WILLNEED) allocates its page-cache pages before it returns, and letting a range go
/// (DONTNEED) frees them, so on the reading thread both would hold up the merge (~4 s of a 36 s cold merge here).
/// Requests run in order; descriptors stay the reader's, which closes them only after <see cref="Dispose"/>.
/// </summary>
internal sealed unsafe partial class ReadAhead : IDisposable
{
    private readonly BlockingCollection<Action> _requests = new();
    private readonly Thread _worker;

    /// <summary>Ranges this reader brought into the page cache (the worker's alone): what <see cref="Release"/> lets go.</summary>
    private readonly List<(int Descriptor, string Tensor, long Offset, long Length)> _broughtIn = new();

    public ReadAhead()
    {
        _worker = new Thread(() =>
        {
            foreach (var request in _requests.GetConsumingEnumerable()) request();
        })
        { IsBackground = true, Name = "Dare read-ahead" };
        _worker.Start();
    }

    /// <summary>Whether released ranges are dropped from the page cache (DARE_RELEASE_READS=0: no).</summary>
    public static readonly bool ReleaseReads = Environment.GetEnvironmentVariable("DARE_RELEASE_READS") is not "0";

    /// <summary>
    /// Starts the OS reading [offset, offset + length) of the file, unless it is already cached (<see cref="IsCached"/>:
    /// the advice itself walks the range, which costs warm runs time). A range it starts reading is remembered for <see cref="Release"/>.
    /// </summary>
    public void Fetch(int descriptor, string tensor, long offset, long length) => _requests.Add(() =>
    {
        if (IsCached(descriptor, offset, length)) return;
        if (posix_fadvise(descriptor, offset, length, WillNeed) == 0 && ReleaseReads) _broughtIn.Add((descriptor, tensor, offset, length));
    });

    /// <summary>
    /// Whether file bytes [offset, offset + length) are in the page cache, for the most part (at least half of their
    /// pages: a range cached but for a few pages, such as pages shared with a neighbour the OS let go of, is cheaper
    /// to read from the cache than from the disk). Asked with cachestat (Linux 6.5+), which has no side effects.
    /// Elsewhere the last byte stands for the range, probed with a 1-byte read that may not wait for the disk (which
    /// starts the kernel's read-ahead around a page that is not cached: up to read_ahead_kb, 8 MB on this project's VM).
    /// </summary>
    internal static bool IsCached(int descriptor, long offset, long length)
    {
        if (_hasCacheStat)
        {
            const long Page = 4096;
            var first = offset / Page;
            var range = new CacheStatRange { Offset = (ulong)(first * Page), Length = (ulong)(((offset + length + Page - 1) / Page - first) * Page) };
            CacheStat stat;
            if (syscall(CacheStatSyscall, descriptor, &range, &stat, 0) == 0) return (long)stat.Cached * Page * 2 >= (long)range.Length;
            if (Marshal.GetLastPInvokeError() == 38 /* ENOSYS */) _hasCacheStat = false;
            else return false;
        }
        byte probe;
        var vector = new IoVector { Base = &probe, Length = 1 };
        return preadv2(descriptor, &vector, 1, offset + length - 1, NoWait) == 1;
    }

    private static bool _hasCacheStat = RuntimeInformation.ProcessArchitecture == Architecture.X64;
    private const long CacheStatSyscall = 451; // x86-64

    private struct CacheStatRange
    {
        public ulong Offset;
        public ulong Length;
    }

    private struct CacheStat
    {
        public ulong Cached, Dirty, Writeback, Evicted, RecentlyEvicted;
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial long syscall(long number, int descriptor, CacheStatRange* range, CacheStat* stat, uint flags);

    /// <summary>Lets the OS drop what <see cref="Fetch"/> brought in for <paramref name="tensor"/> (null: everything).</summary>
    public void Release(string? tensor) => _requests.Add(() =>
    {
        _broughtIn.RemoveAll(range =>
        {
            if (tensor is not null && !string.Equals(range.Tensor, tensor, StringComparison.Ordinal)) return false;
            Drop(range.Descriptor, range.Offset, range.Length);
            return true;
        });
    });

    /// <summary>Lets the OS drop file bytes [offset, offset + length) from the page cache (the pages they touch, unless in use).</summary>
    internal static void Drop(int descriptor, long offset, long length) => posix_fadvise(descriptor, offset, length, DontNeed);

    /// <summary>Waits until every request made so far has been carried out (for tests).</summary>
    public void Drain()
    {
        using var done = new ManualResetEventSlim();
        _requests.Add(done.Set);
        done.Wait();
    }

    /// <summary>Lets go of everything brought in and stops the thread; after this the descriptors may be closed.</summary>
    public void Dispose()
    {
        Release(null);
        _requests.CompleteAdding();
        _worker.Join();
        _requests.Dispose();
    }

    private const int WillNeed = 3; // POSIX_FADV_WILLNEED
    private const int DontNeed = 4; // POSIX_FADV_DONTNEED
    private const int NoWait = 0x8; // RWF_NOWAIT: read only what is in the page cache

    private struct IoVector
    {
        public byte* Base;
        public nuint Length;
    }

    [LibraryImport("libc")]
    private static partial int posix_fadvise(int descriptor, long offset, long length, int advice);

    [LibraryImport("libc")]
    private static partial nint preadv2(int descriptor, IoVector* vectors, int count, long offset, int flags);
}
