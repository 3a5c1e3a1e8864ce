using Dare.Engine.Adapters;
using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using Dare.Engine.Tests.Merge;
using Xunit;
using static Dare.Engine.Tests.Adapters.TestAdapters;

namespace Dare.Engine.Tests.Adapters;

/// <summary>Measure's adapter rank and effective rank (Rank99) tell a LoRA-like δ from a full fine-tune's.</summary>
public sealed class EffectiveRankTests : IDisposable
{
    private const int Rows = 40, Columns = 32;
    private readonly TestModels _models = new();
    private readonly Random _random = new(9);
    private readonly Checkpoint _base;

    public EffectiveRankTests() =>
        _base = _models.Write("base", new[] { "a", "b", "c" }.Select(n => TestTensor.F32($"model.layers.0.{n}.weight", new float[Rows * Columns], Rows, Columns)));

    public void Dispose() => _models.Dispose();

    [Theory]
    [InlineData(new[] { 10.0, 1.0, 0.5 }, 2)] // 100 + 1 = 101 of 101.25: 99.75% with two
    [InlineData(new[] { 10.0, 0.5, 0.5 }, 1)] // 100 of 100.5: 99.5% with one
    [InlineData(new[] { 1.0, 1.0, 1.0 }, 3)]
    public void Rank99_counts_the_singular_values_holding_99_percent_of_the_energy(double[] singular, int expected)
    {
        // δ = Σ σᵢ·eᵢ·fᵢᵀ on distinct rows and columns: its singular values are σ exactly.
        var delta = new float[Rows * Columns];
        for (var i = 0; i < singular.Length; i++) delta[(3 * i) * Columns + 2 * i + 1] = (float)singular[i];
        var tuned = _models.Write("tuned", new[] { "a", "b", "c" }.Select(n => TestTensor.F32($"model.layers.0.{n}.weight", delta, Rows, Columns)));
        var statistics = TaskVectorStatistics.Measure(TaskVector.FromModels(_base, tuned), new MergeExecutor(), false, rankSamples: 2);
        Assert.Equal(2, statistics.SampledRanks.Count);
        Assert.All(statistics.SampledRanks, r => Assert.Equal(expected, r.Rank99));
        Assert.Equal(singular[0], statistics.SampledRanks[0].TopSingularValue, 5);
        Assert.Null(statistics.AdapterRank);
    }

    [Theory]
    [InlineData(30, 70, 8L << 20)]
    [InlineData(70, 30, 8L << 20)]
    [InlineData(30, 70, 1000L)] // the Gram matrix summed over slices of 33 columns (the last one shorter)
    [InlineData(70, 30, 1000L)] // and of rows
    public void The_singular_values_are_the_known_spectrum_whichever_side_is_smaller(int rows, int columns, long sliceEntries)
    {
        // δ = U·diag(σ)·Vᵀ with orthonormal U and V (from QR of random matrices): its singular values are σ, descending.
        var k = Math.Min(rows, columns);
        var sigma = Enumerable.Range(0, k).Select(i => 5.0 / (1 + i * i)).ToArray();
        using var scope = TorchSharp.torch.NewDisposeScope();
        var generator = new TorchSharp.torch.Generator(11);
        var (u, _) = TorchSharp.torch.linalg.qr(TorchSharp.torch.randn(rows, k, TorchSharp.torch.float64, generator: generator));
        var (v, _) = TorchSharp.torch.linalg.qr(TorchSharp.torch.randn(columns, k, TorchSharp.torch.float64, generator: generator));
        var delta = u.matmul(TorchSharp.torch.diag(TorchSharp.torch.tensor(sigma))).matmul(v.t()).to_type(TorchSharp.torch.float32);
        var singular = MatrixRank.SingularValues(delta, sliceEntries);
        Assert.Equal(k, singular.Length);
        for (var i = 0; i < k; i++) Assert.Equal(sigma[i], singular[i], 5e-6 * sigma[0]);
    }

    [Fact]
    public void An_adapter_reports_its_rank_and_looks_low_rank_where_a_full_fine_tune_does_not()
    {
        var folder = Write(_models, "lora", Config(3, 3), new[]
        {
            TestTensor.F32("base_model.model.model.layers.0.b.lora_A.weight", TestModels.RandomFloats(_random, 3 * Columns), 3, Columns),
            TestTensor.F32("base_model.model.model.layers.0.b.lora_B.weight", TestModels.RandomFloats(_random, Rows * 3), Rows, 3),
        });
        var lora = TaskVectorStatistics.Measure(TaskVector.FromAdapter(_base, LoraAdapter.Open(folder)), new MergeExecutor(), false, rankSamples: 3);
        Assert.Equal(3, lora.AdapterRank);
        // Only the matrix the adapter changes is sampled; three random directions rarely hold 99% in fewer than three.
        Assert.Equal("model.layers.0.b.weight", Assert.Single(lora.SampledRanks).Tensor);
        Assert.InRange(lora.SampledRanks[0].Rank99, 1, 3);
        Assert.True(lora.LooksLowRank);

        var tuned = _models.Write("full", new[] { "a", "b", "c" }.Select(n => TestTensor.F32($"model.layers.0.{n}.weight", TestModels.RandomFloats(_random, Rows * Columns), Rows, Columns)));
        var full = TaskVectorStatistics.Measure(TaskVector.FromModels(_base, tuned), new MergeExecutor(), false, rankSamples: 3);
        Assert.Equal(3, full.SampledRanks.Count);
        Assert.All(full.SampledRanks, r => Assert.True(r.Rank99 > 20, $"{r.Tensor}: {r.Rank99}"));
        Assert.False(full.LooksLowRank);
    }
}
