using Dare.Engine.Merge;
using Dare.Engine.Tests.Safetensors;
using Xunit;

namespace Dare.Engine.Tests.Merge;

/// <summary>
/// The kernels' scratch pools (native blocks, the selection's count tables): a returned block or table serves the next
/// request it fits, the pools stay bounded, and an export leaves nothing in them. Runs alone: the pools are shared by
/// every export in the process.
/// </summary>
[Collection(nameof(MemoryMeasurementCollection))]
public sealed unsafe class KernelScratchTests : IDisposable
{
    private readonly TestModels _models = new();

    public void Dispose() => _models.Dispose();

    private const string Tensor = "model.layers.0.mlp.up_proj.weight";

    /// <summary>A bfloat16 base of one [rows, columns] tensor and <paramref name="count"/> perturbed fine-tunes of it, as task vectors.</summary>
    private TaskVector[] WriteVectors(string set, Random random, int count, int rows, int columns)
    {
        var values = TestModels.RandomFloats(random, rows * columns);
        var @base = _models.Write($"{set}-base", new[] { TestTensor.Bf16(Tensor, values, new long[] { rows, columns }) });
        return Enumerable.Range(0, count).Select(m => TaskVector.FromModels(@base,
            _models.Write($"{set}-tuned{m}", new[] { TestTensor.Bf16(Tensor, TestModels.Perturb(random, values), new long[] { rows, columns }) }))).ToArray();
    }

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
        var vectors = WriteVectors("fused", new Random(8), 2, 512, 512);
        var plan = TaskVector.Combine(new[] { vectors[0].WithDare(new DareOptions(0.5, 1, 0)), vectors[1] },
            new MergeOptions(MergeMethod.Linear, new TensorParameter[] { 1.0, 2.0 }, true, 0.5));
        KernelScratch.Release();

        new MergeExecutor(chunkElements: 1 << 16).Export(plan, new ExportOptions { Destination = _models.PathOf("out"), OutputDType = Dare.Engine.Safetensors.SafetensorsDType.BF16 });

        Assert.Equal(0, KernelScratch.PooledCount);
    }

    [Fact]
    public void A_ties_export_leaves_no_count_table_pooled()
    {
        var vectors = WriteVectors("ties", new Random(9), 2, 512, 512);
        var plan = TaskVector.Combine(vectors, new MergeOptions(MergeMethod.Ties, new TensorParameter[] { 1.0, 1.0 }, true, 1.0, new TensorParameter[] { 0.3, 0.3 }));
        // Tables pooled before the export are given up with those it returns.
        CleanArrays<uint>.Return(new uint[4096]);
        CleanArrays<long>.Return(new long[4096]);

        new MergeExecutor(chunkElements: 1 << 16).Export(plan, new ExportOptions { Destination = _models.PathOf("out"), OutputDType = Dare.Engine.Safetensors.SafetensorsDType.BF16 });

        Assert.Equal(0, CleanArrays<uint>.PooledCount);
        Assert.Equal(0, CleanArrays<long>.PooledCount);
    }

    [Fact]
    public unsafe void A_bracket_table_is_pooled_once_its_counts_are_taken_and_serves_the_next_rent_all_zeros()
    {
        var data = TestModels.RandomFloats(new Random(3), 100_000);
        var selection = new MagnitudeSelection(20_000, data.Length);
        fixed (float* p = data)
        {
            selection.AddSample(p, 0, data.Length);
            Assert.Equal(SelectionStep.Bracket, selection.FinishSample());
            KernelScratch.Release();

            var table = selection.RentBracketTable();
            long above = 0, zeros = 0;
            selection.CountBracket(table, p, data.Length, ref above, ref zeros);
            Assert.True(table.Any(count => count != 0));
            selection.AddBracketCounts(table, above, zeros, recorded: null, range: 0);
            Assert.Equal(1, CleanArrays<uint>.PooledCount);

            var again = selection.RentBracketTable();
            Assert.Same(table, again);
            Assert.All(again, count => Assert.Equal(0u, count));
            CleanArrays<uint>.Return(again);
        }
        KernelScratch.Release();
    }

    [Fact]
    public void The_count_table_pool_holds_at_most_eight_arrays_per_core()
    {
        KernelScratch.Release();
        for (var i = 0; i < 9 * Environment.ProcessorCount; i++) CleanArrays<long>.Return(new long[64]);
        Assert.Equal(8 * Environment.ProcessorCount, CleanArrays<long>.PooledCount);
        KernelScratch.Release();
        Assert.Equal(0, CleanArrays<long>.PooledCount);
    }

    [Fact]
    public void Exports_running_at_once_share_the_pools_and_write_what_each_writes_alone()
    {
        // Plans of different lengths, so that one export's end (which empties the pools) falls inside another's
        // passes: TIES with thresholds to find, DARE then TIES, and a DARE-linear merge.
        var random = new Random(11);
        TaskVector[] Vectors(string set, int columns) => WriteVectors(set, random, 3, 256, columns);
        var ones = new TensorParameter[] { 1.0, 1.0, 1.0 };
        var ties = TaskVector.Combine(Vectors("ties", 2048), new MergeOptions(MergeMethod.Ties, ones, true, 1.0, new TensorParameter[] { 0.3, 0.3, 0.3 }));
        var dareTies = TaskVector.Combine(Vectors("dare-ties", 1024).Select((v, i) => v.WithDare(new DareOptions(0.5, 7, i))).ToArray(),
            new MergeOptions(MergeMethod.Ties, ones, true, 1.0, new TensorParameter[] { 0.4, 0.4, 0.4 }));
        var dareLinear = TaskVector.Combine(Vectors("dare-linear", 512).Select((v, i) => v.WithDare(new DareOptions(0.9, 7, i))).ToArray(),
            new MergeOptions(MergeMethod.Linear, ones, true, 1.0));
        var plans = new[] { ties, dareTies, dareLinear };
        float[] Export(int plan, string folder) =>
            TestModels.ReadFloats(_models.Export(plans[plan], folder, chunkElements: 1 << 14), Tensor);

        var alone = Enumerable.Range(0, plans.Length).Select(i => Export(i, $"alone{i}")).ToArray();
        for (var round = 0; round < 3; round++)
        {
            var together = new float[plans.Length][];
            Parallel.For(0, plans.Length, new ParallelOptions { MaxDegreeOfParallelism = plans.Length }, i => together[i] = Export(i, $"together{round}-{i}"));
            for (var i = 0; i < plans.Length; i++) Assert.Equal(alone[i], together[i]);
        }
        Assert.Equal(0, CleanArrays<uint>.PooledCount);
        Assert.Equal(0, KernelScratch.PooledCount);
    }
}
