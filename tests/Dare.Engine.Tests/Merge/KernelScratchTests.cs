using Dare.Engine.Merge;
using Dare.Engine.Tests.Safetensors;
using Xunit;

namespace Dare.Engine.Tests.Merge;

/// <summary>
/// The kernels' scratch pool: a returned block serves the next request it fits, the pool stays bounded, and an export
/// leaves nothing in it. Runs alone: the pool is shared by every export in the process.
/// </summary>
[Collection(nameof(MemoryMeasurementCollection))]
public sealed unsafe class KernelScratchTests : IDisposable
{
    private readonly TestModels _models = new();

    public void Dispose() => _models.Dispose();

    [Fact]
    public void A_returned_block_serves_the_next_request_it_fits_and_release_empties_the_pool()
    {
        KernelScratch.Release();
        var small = KernelScratch.Rent(1000);
        var held = KernelScratch.Rent(1000);
        var smallBlock = small.Pointer;
        small.Dispose();
        Assert.Equal(1, KernelScratch.PooledCount);

        // Too small for a larger request: that one is new, and the pooled block waits for a request it fits.
        var large = KernelScratch.Rent(4000);
        Assert.True(large.Pointer != smallBlock);
        var again = KernelScratch.Rent(600);
        Assert.True(again.Pointer == smallBlock);
        Assert.Equal(0, KernelScratch.PooledCount);

        // The block is usable to its end, and keeps what was written while rented.
        new Span<byte>(again.Pointer, 1000).Fill(7);
        Assert.True(new Span<byte>(again.Pointer, 1000).IndexOfAnyExcept((byte)7) < 0);
        foreach (var lease in new[] { again, large, held }) lease.Dispose();
        Assert.Equal(3, KernelScratch.PooledCount);
        KernelScratch.Release();
        Assert.Equal(0, KernelScratch.PooledCount);
    }

    [Fact]
    public void The_pool_holds_at_most_four_blocks_per_core()
    {
        KernelScratch.Release();
        var leases = Enumerable.Range(0, 5 * Environment.ProcessorCount).Select(_ => KernelScratch.Rent(256)).ToList();
        foreach (var lease in leases) lease.Dispose();
        Assert.Equal(4 * Environment.ProcessorCount, KernelScratch.PooledCount);
        KernelScratch.Release();
    }

    [Fact]
    public void An_export_on_the_fused_kernels_leaves_no_block_pooled()
    {
        var random = new Random(8);
        var name = "model.layers.0.mlp.up_proj.weight";
        var values = TestModels.RandomFloats(random, 1 << 18);
        var @base = _models.Write("base", new[] { TestTensor.Bf16(name, values, new long[] { 512, 512 }) });
        var vectors = Enumerable.Range(0, 2).Select(m => TaskVector.FromModels(@base,
            _models.Write($"tuned{m}", new[] { TestTensor.Bf16(name, TestModels.Perturb(random, values), new long[] { 512, 512 }) }))).ToArray();
        var plan = TaskVector.Combine(new[] { vectors[0].WithDare(new DareOptions(0.5, 1, 0)), vectors[1] },
            new MergeOptions(MergeMethod.Linear, new TensorParameter[] { 1.0, 2.0 }, true, 0.5));
        KernelScratch.Release();

        new MergeExecutor(chunkElements: 1 << 16).Export(plan, new ExportOptions { Destination = _models.PathOf("out"), OutputDType = Dare.Engine.Safetensors.SafetensorsDType.BF16 });

        Assert.Equal(0, KernelScratch.PooledCount);
    }
}
