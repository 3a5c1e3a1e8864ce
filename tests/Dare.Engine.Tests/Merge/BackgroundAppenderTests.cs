using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using Xunit;

namespace Dare.Engine.Tests.Merge;

/// <summary>
/// The executor writes each output chunk in the background while it computes the next ones, with up to
/// <see cref="BackgroundAppender.MaxInFlight"/> writes queued. They must land in order, a buffer must not be handed
/// back while its write is queued, a failure must surface as the original exception and still leave nothing behind,
/// and a cancelled export must wait for the queued writes before the writer removes its temporary folder.
/// </summary>
public sealed class BackgroundAppenderTests : IDisposable
{
    private readonly TestModels _models = new();

    public void Dispose() => _models.Dispose();

    private string[] LeftoversBeside(string destination) =>
        Directory.GetFileSystemEntries(Path.GetDirectoryName(destination)!, ".dare-*");

    private static unsafe void AppendAsync(BackgroundAppender appender, byte[] bytes)
    {
        // The appender writes from unmanaged memory that must outlive the write; a pinned array stands in here.
        var handle = System.Runtime.InteropServices.GCHandle.Alloc(bytes, System.Runtime.InteropServices.GCHandleType.Pinned);
        try
        {
            appender.AppendAsync(handle.AddrOfPinnedObject(), bytes.Length);
            appender.Wait();
        }
        finally
        {
            handle.Free();
        }
    }

    [Fact]
    public void Chunks_written_in_the_background_land_in_order_with_their_tensor_headers()
    {
        var destination = _models.PathOf("out");
        var plan = new[] { new PlannedTensor("a", SafetensorsDType.U8, new long[] { 4 }), new PlannedTensor("b", SafetensorsDType.U8, new long[] { 3 }) };
        using (var writer = CheckpointWriter.Create(destination, plan, new CheckpointWriteOptions()))
        {
            using (var appender = new BackgroundAppender(writer))
            {
                appender.BeginTensor("a");
                AppendAsync(appender, new byte[] { 1, 2 });
                AppendAsync(appender, new byte[] { 3, 4 });
                appender.BeginTensor("b");
                AppendAsync(appender, new byte[] { 5, 6, 7 });
                appender.Finish();
            }
            writer.Commit();
        }

        var checkpoint = Checkpoint.Open(destination);
        using var reader = new TensorReader();
        using var a = reader.Read(checkpoint.Find("a")!);
        using var b = reader.Read(checkpoint.Find("b")!);
        Assert.Equal(new byte[] { 1, 2, 3, 4 }, a.data<byte>().ToArray());
        Assert.Equal(new byte[] { 5, 6, 7 }, b.data<byte>().ToArray());
    }

    [Fact]
    public unsafe void Queued_writes_land_in_order_and_a_buffer_is_free_once_the_queue_has_moved_past_it()
    {
        const int Chunks = 40, ChunkBytes = 1 << 16;
        var destination = _models.PathOf("out");
        var plan = new[] { new PlannedTensor("a", SafetensorsDType.U8, new long[] { Chunks * (long)ChunkBytes }) };
        // As the executor does: a few buffers in turn, each overwritten as soon as AppendAsync says it is free again.
        var buffers = Enumerable.Range(0, ChunkWorkspace.OutputBuffers).Select(_ => (IntPtr)System.Runtime.InteropServices.NativeMemory.Alloc(ChunkBytes)).ToArray();
        try
        {
            using (var writer = CheckpointWriter.Create(destination, plan, new CheckpointWriteOptions()))
            {
                using (var appender = new BackgroundAppender(writer))
                {
                    appender.BeginTensor("a");
                    for (var c = 0; c < Chunks; c++)
                    {
                        var buffer = buffers[c % buffers.Length];
                        new Span<byte>((void*)buffer, ChunkBytes).Fill((byte)c);
                        appender.AppendAsync(buffer, ChunkBytes);
                    }
                    appender.Finish();
                }
                writer.Commit();
            }
        }
        finally
        {
            foreach (var buffer in buffers) System.Runtime.InteropServices.NativeMemory.Free((void*)buffer);
        }

        var checkpoint = Checkpoint.Open(destination);
        using var reader = new TensorReader();
        using var a = reader.Read(checkpoint.Find("a")!);
        var bytes = a.data<byte>().ToArray();
        for (var c = 0; c < Chunks; c++)
        {
            Assert.True(bytes.AsSpan(c * ChunkBytes, ChunkBytes).IndexOfAnyExcept((byte)c) < 0, $"chunk {c} was not written as it was handed over");
        }
    }

    [Fact]
    public void A_failed_write_with_writes_queued_after_it_rethrows_its_own_exception_and_they_do_not_run()
    {
        var destination = _models.PathOf("out");
        var plan = new[] { new PlannedTensor("a", SafetensorsDType.U8, new long[] { 4 }), new PlannedTensor("b", SafetensorsDType.U8, new long[] { 1 }) };
        var pinned = new[] { new byte[] { 1, 2 }, new byte[] { 3, 4, 5 }, new byte[] { 6 } };
        var handles = pinned.Select(b => System.Runtime.InteropServices.GCHandle.Alloc(b, System.Runtime.InteropServices.GCHandleType.Pinned)).ToArray();
        try
        {
            var failure = Assert.Throws<InvalidOperationException>(() =>
            {
                using var writer = CheckpointWriter.Create(destination, plan, new CheckpointWriteOptions());
                using var appender = new BackgroundAppender(writer);
                appender.BeginTensor("a");
                appender.AppendAsync(handles[0].AddrOfPinnedObject(), 2);
                appender.AppendAsync(handles[1].AddrOfPinnedObject(), 3); // one byte more than 'a' has left: refused
                appender.BeginTensor("b");
                appender.AppendAsync(handles[2].AddrOfPinnedObject(), 1); // queued behind the refused write
                appender.Finish();
            });
            Assert.Contains("'a'", failure.Message);
        }
        finally
        {
            foreach (var handle in handles) handle.Free();
        }
        Assert.False(Directory.Exists(destination));
        Assert.Empty(LeftoversBeside(destination));
    }

    [Fact]
    public unsafe void Every_write_runs_on_one_writer_thread_that_Dispose_ends_even_after_a_failed_write()
    {
        var destination = _models.PathOf("out");
        var plan = new[] { new PlannedTensor("a", SafetensorsDType.U8, new long[] { 6 }) };
        var bytes = new byte[] { 1, 2, 3, 4 };
        var handle = System.Runtime.InteropServices.GCHandle.Alloc(bytes, System.Runtime.InteropServices.GCHandleType.Pinned);
        Thread? thread;
        try
        {
            using var writer = CheckpointWriter.Create(destination, plan, new CheckpointWriteOptions());
            var appender = new BackgroundAppender(writer);
            appender.BeginTensor("a");
            Assert.Null(appender.WriterThread); // no thread until there is something to write
            appender.AppendAsync(handle.AddrOfPinnedObject(), 2);
            thread = appender.WriterThread;
            Assert.NotNull(thread);
            appender.AppendAsync(handle.AddrOfPinnedObject(), 2);
            appender.Wait();
            Assert.Same(thread, appender.WriterThread);
            Assert.True(thread!.IsAlive);
            appender.AppendAsync(handle.AddrOfPinnedObject(), 4); // two bytes more than 'a' has left: refused
            Assert.Throws<InvalidOperationException>(appender.Wait);
            Assert.True(thread.IsAlive); // waiting for more, until Dispose
            Assert.True(Task.Run(appender.Dispose).Wait(TimeSpan.FromSeconds(30)), "Dispose did not end the writer thread");
        }
        finally
        {
            handle.Free();
        }
        Assert.False(thread!.IsAlive);
    }

    [Fact]
    public void A_tensor_with_no_chunks_still_gets_its_BeginTensor()
    {
        var destination = _models.PathOf("out");
        var plan = new[] { new PlannedTensor("empty", SafetensorsDType.F32, new long[] { 0 }), new PlannedTensor("b", SafetensorsDType.U8, new long[] { 1 }) };
        using (var writer = CheckpointWriter.Create(destination, plan, new CheckpointWriteOptions()))
        {
            using (var appender = new BackgroundAppender(writer))
            {
                appender.BeginTensor("empty");
                appender.BeginTensor("b");
                AppendAsync(appender, new byte[] { 9 });
                appender.Finish();
            }
            writer.Commit();
        }

        var checkpoint = Checkpoint.Open(destination);
        Assert.Equal(new long[] { 0 }, checkpoint.Find("empty")!.Shape);
        Assert.Equal(1, checkpoint.Find("b")!.ElementCount);
    }

    [Fact]
    public void A_failed_background_write_rethrows_its_own_exception_and_leaves_no_temporary_folder()
    {
        var destination = _models.PathOf("out");
        var plan = new[] { new PlannedTensor("a", SafetensorsDType.U8, new long[] { 2 }) };
        var failure = Assert.Throws<InvalidOperationException>(() =>
        {
            using var writer = CheckpointWriter.Create(destination, plan, new CheckpointWriteOptions());
            using var appender = new BackgroundAppender(writer);
            appender.BeginTensor("a");
            AppendAsync(appender, new byte[] { 1, 2, 3 }); // one byte more than planned: the writer refuses it
        });

        Assert.Contains("'a'", failure.Message);
        Assert.False(Directory.Exists(destination));
        Assert.Empty(LeftoversBeside(destination));
    }

    [Fact]
    public void An_export_cancelled_midway_leaves_no_destination_and_no_temporary_folder()
    {
        var random = new Random(7);
        var names = Enumerable.Range(0, 6).Select(i => $"model.layers.{i}.w").ToArray();
        var baseValues = names.ToDictionary(n => n, _ => TestModels.RandomFloats(random, 5000));
        var baseModel = _models.Write("base", names.Select(n => TestTensor.Bf16(n, baseValues[n])));
        var tuned = _models.Write("tuned", names.Select(n => TestTensor.Bf16(n, TestModels.Perturb(random, baseValues[n]))));
        var destination = _models.PathOf("out");
        using var cancellation = new CancellationTokenSource();
        var observer = new CancelAfter(3, cancellation);

        Assert.Throws<OperationCanceledException>(() =>
            new MergeExecutor(observer, cancellation.Token, chunkElements: 1000).Export(TaskVector.FromModels(baseModel, tuned),
                new ExportOptions { Destination = destination, OutputDType = SafetensorsDType.BF16 }));

        Assert.False(Directory.Exists(destination));
        Assert.Empty(LeftoversBeside(destination));
    }

    private sealed class CancelAfter(int tensors, CancellationTokenSource cancellation) : IMergeObserver
    {
        public void Progress(MergeProgress progress)
        {
            if (progress.TensorsDone >= tensors) cancellation.Cancel();
        }

        public void Verbose(string message) { }

        public void Warning(string message) { }
    }
}
