using Dare.Engine.Safetensors;
using TorchSharp;
using Xunit;
using Xunit.Abstractions;

namespace Dare.Engine.Tests.Safetensors;

/// <summary>Runs alone (after the parallel tests), so no other test's allocations blur the measurement.</summary>
[CollectionDefinition(nameof(MemoryMeasurementCollection), DisableParallelization = true)]
public sealed class MemoryMeasurementCollection
{
}

/// <summary>Streaming: writing and reading a checkpoint tensor by tensor never holds the whole checkpoint in memory.</summary>
[Collection(nameof(MemoryMeasurementCollection))]
public sealed class CheckpointMemoryTests : IDisposable
{
    private const int Tensors = 50;
    private const int Rows = 1024;
    private const int Columns = 1024;
    private const long TensorBytes = (long)Rows * Columns * sizeof(float); // 4 MiB
    private const long CheckpointBytes = Tensors * TensorBytes;            // 200 MiB
    // Streaming needs a few tensors' worth (measured: under 10 MB). The bound sits below one shard (~70 MB), so buffering
    // a shard, a file, or the checkpoint on either the write or the read side fails this test.
    private const long AllowedGrowth = 48L * 1024 * 1024;

    private readonly TempDirectory _temp = new();
    private readonly ITestOutputHelper _output;

    public CheckpointMemoryTests(ITestOutputHelper output)
    {
        _output = output;
        TorchRuntime.EnsureInitialized();
    }

    public void Dispose() => _temp.Dispose();

    [Fact]
    public void Writing_and_reading_a_200MB_checkpoint_tensor_by_tensor_grows_resident_memory_far_less_than_its_size()
    {
        Assert.True(File.Exists("/proc/self/status"), "this measurement reads /proc/self/status (Linux)");

        // Warm up every code path with the same tensor size, so that JIT, thread pools and the native allocator
        // settle before the baseline: what is measured is growth with checkpoint size, not with first use.
        WriteAndReadBack(_temp["warmup"], tensors: 6);
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();

        var peakResettable = TryResetPeakResidentSize();
        var baseline = StatusBytes("VmRSS");
        long sampledPeak = baseline;
        using var stop = new CancellationTokenSource();
        var sampler = new Thread(() =>
        {
            while (!stop.IsCancellationRequested)
            {
                var rss = StatusBytes("VmRSS");
                if (rss > Interlocked.Read(ref sampledPeak)) Interlocked.Exchange(ref sampledPeak, rss);
                Thread.Sleep(2);
            }
        }) { IsBackground = true };
        sampler.Start();

        long written, read;
        try
        {
            (written, read) = WriteAndReadBack(_temp["big"], Tensors);
        }
        finally
        {
            stop.Cancel();
            sampler.Join();
        }

        var peak = Math.Max(Interlocked.Read(ref sampledPeak), peakResettable ? StatusBytes("VmHWM") : 0);
        var growth = peak - baseline;
        _output.WriteLine($"baseline RSS {baseline / 1e6:0.0} MB, peak {peak / 1e6:0.0} MB (VmHWM {(peakResettable ? "reset and read" : "not resettable, sampled only")}), " +
                          $"growth {growth / 1e6:0.0} MB for a {written / 1e6:0.0} MB checkpoint");

        Assert.Equal(CheckpointBytes, written);
        Assert.Equal(CheckpointBytes, read);
        Assert.True(growth < AllowedGrowth,
            $"resident memory grew by {growth / 1e6:0.0} MB while streaming a {CheckpointBytes / 1e6:0.0} MB checkpoint (allowed {AllowedGrowth / 1e6:0.0} MB)");
    }

    /// <summary>Writes <paramref name="tensors"/> 4 MiB tensors one at a time (three shards), then reads and checks each one at a time.</summary>
    private static (long Written, long Read) WriteAndReadBack(string destination, int tensors)
    {
        var plan = Enumerable.Range(0, tensors)
            .Select(i => new PlannedTensor($"model.layers.{i}.weight", SafetensorsDType.F32, new long[] { Rows, Columns })).ToList();
        long written;
        using (var writer = CheckpointWriter.Create(destination, plan, new CheckpointWriteOptions { MaxShardSize = (tensors * TensorBytes + 2) / 3 }))
        {
            for (var i = 0; i < tensors; i++)
            {
                using var tensor = torch.full(new long[] { Rows, Columns }, (float)i);
                writer.WriteTensor(plan[i].Name, tensor);
            }
            written = writer.Commit().TensorBytes;
        }

        var checkpoint = Checkpoint.Open(destination);
        Assert.Equal(tensors, checkpoint.TensorCount);
        long read = 0;
        using var reader = new TensorReader();
        for (var i = 0; i < tensors; i++)
        {
            using var tensor = reader.Read(checkpoint.Find(plan[i].Name)!);
            using var equal = tensor.eq((float)i); // every intermediate disposed: an undisposed 1 MB mask per tensor would show as growth
            using var all = equal.all();
            Assert.True(all.item<bool>(), $"tensor {i} did not read back as all {i}");
            read += tensor.NumberOfElements * tensor.ElementSize;
        }
        return (written, read);
    }

    /// <summary>Linux: writing 5 to clear_refs resets VmHWM to the current RSS. False where that is not allowed.</summary>
    private static bool TryResetPeakResidentSize()
    {
        try
        {
            File.WriteAllText("/proc/self/clear_refs", "5");
            return StatusBytes("VmHWM") <= StatusBytes("VmRSS") + 4 * 1024 * 1024;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    private static long StatusBytes(string field)
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
        {
            if (line.StartsWith(field + ":", StringComparison.Ordinal))
            {
                var kilobytes = line[(field.Length + 1)..].Trim().Split(' ')[0];
                return long.Parse(kilobytes) * 1024;
            }
        }
        throw new InvalidOperationException($"/proc/self/status has no {field}");
    }
}
