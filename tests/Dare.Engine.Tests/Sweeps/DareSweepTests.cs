using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using Dare.Engine.Sweeps;
using Dare.Engine.Tests.Merge;
using Xunit;

namespace Dare.Engine.Tests.Sweeps;

/// <summary>
/// Invoke-DareSweep's engine: each variant's score comes from an evaluator that reads the merged model from disk, and is
/// compared with the same function of a merge recomputed here from the DARE mask; failures, KeepBest and cleanup.
/// </summary>
public sealed class DareSweepTests : IDisposable
{
    private const int Count = 4000;
    private const long Seed = 1234;
    private readonly TestModels _models = new();
    private readonly float[] _base;
    private readonly float[] _tuned;
    private readonly Checkpoint _baseModel;
    private readonly Checkpoint _tunedModel;

    public DareSweepTests()
    {
        var random = new Random(5);
        _base = TestModels.RandomFloats(random, Count);
        _tuned = TestModels.Perturb(random, _base, 0.05);
        _baseModel = _models.Write("base", new[] { TestTensor.F32("w", _base) });
        _tunedModel = _models.Write("tuned", new[] { TestTensor.F32("w", _tuned) });
    }

    public void Dispose() => _models.Dispose();

    private SweepOptions Options(params double[] dropRates) => new()
    {
        Base = _baseModel, Models = new[] { _tunedModel }, DropRates = dropRates, Method = "dare_linear", Seed = Seed,
        OutputDType = SafetensorsDType.F32, CurrentLocation = _models.Root,
    };

    /// <summary>The evaluator: Σ (merged − base)² over the tensor, read from the model folder.</summary>
    private double SquaredChange(string folder)
    {
        var merged = TestModels.ReadFloats(Checkpoint.Open(folder), "w");
        return merged.Select((m, i) => (double)(m - _base[i]) * (m - _base[i])).Sum();
    }

    /// <summary>Recomputed here: entry i survives unless the mask hash drops it, and survivors are scaled by 1/(1 − p).</summary>
    private (double Score, double Dropped) Expected(double p)
    {
        var key = DareMask.Key(Seed, 0, "w");
        var threshold = DareMask.Threshold(p);
        var scale = (float)(1.0 / (1.0 - p));
        double score = 0;
        var dropped = 0;
        for (var i = 0; i < Count; i++)
        {
            if (DareMask.IsDropped(key, i, threshold)) { dropped++; continue; }
            var merged = _base[i] + (_tuned[i] - _base[i]) * scale;
            score += (double)(merged - _base[i]) * (merged - _base[i]);
        }
        return (score, (double)dropped / Count);
    }

    private string[] DareTemporaries(string folder) =>
        Directory.EnumerateFileSystemEntries(folder).Select(Path.GetFileName).Where(n => n!.StartsWith(".dare-", StringComparison.Ordinal)).ToArray()!;

    [Fact]
    public void Each_variant_is_scored_on_its_merged_weights_and_the_lowest_score_wins()
    {
        var keep = _models.PathOf("best");
        using var sweep = new DareSweep(Options(0.5, 0.7, 0.9) with { KeepBest = keep });
        var results = sweep.Run(_ => true, SquaredChange).ToList();
        var best = sweep.Finish();

        Assert.Equal(new[] { 0.5, 0.7, 0.9 }, results.Select(r => r.DropRate));
        foreach (var result in results)
        {
            var (score, dropped) = Expected(result.DropRate);
            Assert.True(result.Succeeded, result.Error);
            Assert.Equal(score, result.Score!.Value, score * 1e-5);
            Assert.Equal(dropped, result.RealisedDropRate!.Value, 12);
        }
        // Σ δ²/(1−p) over the survivors grows with p, so the lowest drop rate has the lowest score.
        Assert.Same(results[0], best);
        Assert.True(results[0].IsBest);
        Assert.False(results[1].IsBest || results[2].IsBest);
        Assert.Equal(keep, best!.KeptPath);
        Assert.Equal(results[0].Score!.Value, SquaredChange(keep), 9);
        Assert.Contains("drop_rate", File.ReadAllText(Path.Combine(keep, "dare_recipe.yml")));
        Assert.Empty(DareTemporaries(_models.Root));
    }

    [Fact]
    public void Maximize_keeps_the_highest_score()
    {
        using var sweep = new DareSweep(Options(0.5, 0.9) with { Maximize = true, KeepBest = _models.PathOf("best") });
        var results = sweep.Run(_ => true, SquaredChange).ToList();
        Assert.Same(results[1], sweep.Finish());
        Assert.Equal(results[1].Score!.Value, SquaredChange(_models.PathOf("best")), 9);
    }

    [Fact]
    public void A_failing_evaluator_fails_only_its_variant()
    {
        var calls = 0;
        using var sweep = new DareSweep(Options(0.5, 0.7, 0.9) with { KeepBest = _models.PathOf("best") });
        var results = sweep.Run(_ => true, folder => ++calls == 1 ? throw new InvalidOperationException("benchmark crashed") : SquaredChange(folder)).ToList();
        var best = sweep.Finish();

        Assert.False(results[0].Succeeded);
        Assert.Null(results[0].Score);
        Assert.Equal(nameof(DareErrorId.SweepEvaluatorFailed), results[0].ErrorId);
        Assert.Contains("benchmark crashed", results[0].Error);
        Assert.Contains("p=0.5", results[0].Error);
        Assert.Equal(Expected(0.7).Score, results[1].Score!.Value, Expected(0.7).Score * 1e-5);
        Assert.Same(results[1], best);
        Assert.Equal(results[1].Score!.Value, SquaredChange(_models.PathOf("best")), 9);
        Assert.Empty(DareTemporaries(_models.Root));
    }

    [Fact]
    public void A_variant_whose_merge_fails_is_reported_and_the_best_so_far_is_kept()
    {
        var tunedFiles = Directory.GetFiles(_models.PathOf("tuned"), "*.safetensors");
        var sweep = new DareSweep(Options(0.5, 0.7) with { KeepBest = _models.PathOf("best") });
        // After the first variant is scored the fine-tuned model's weights vanish: the second merge cannot read them.
        var results = sweep.Run(_ => true, folder => { var score = SquaredChange(folder); foreach (var f in tunedFiles) File.Delete(f); return score; }).ToList();
        var best = sweep.Finish();

        Assert.True(results[0].Succeeded);
        Assert.False(results[1].Succeeded);
        Assert.Null(results[1].Score);
        Assert.NotNull(results[1].ErrorId);
        Assert.Contains("model.safetensors", results[1].Error);
        Assert.Same(results[0], best);
        Assert.Equal(Expected(0.5).Score, SquaredChange(_models.PathOf("best")), Expected(0.5).Score * 1e-5);
        Assert.Empty(DareTemporaries(_models.Root));
    }

    [Fact]
    public void KeepBest_replaces_an_earlier_export_only_with_force()
    {
        var keep = _models.PathOf("best");
        using (var first = new DareSweep(Options(0.9) with { KeepBest = keep }))
        {
            _ = first.Run(_ => true, SquaredChange).ToList();
            first.Finish();
        }
        Assert.Equal(DareErrorId.OutputExists, Assert.Throws<DareException>(() => new DareSweep(Options(0.5) with { KeepBest = keep })).ErrorId);
        using var second = new DareSweep(Options(0.5) with { KeepBest = keep, Force = true });
        _ = second.Run(_ => true, SquaredChange).ToList();
        second.Finish();
        Assert.Equal(Expected(0.5).Score, SquaredChange(keep), Expected(0.5).Score * 1e-5);
        Assert.Empty(DareTemporaries(_models.Root));
    }

    [Fact]
    public void No_successful_variant_keeps_nothing_and_says_so()
    {
        var sweep = new DareSweep(Options(0.5) with { KeepBest = _models.PathOf("best") });
        var results = sweep.Run(_ => true, _ => throw new InvalidOperationException("no")).ToList();
        var error = Assert.Throws<DareException>(() => sweep.Finish());
        sweep.Dispose();
        Assert.Equal(DareErrorId.SweepNoSuccessfulVariant, error.ErrorId);
        Assert.False(Directory.Exists(_models.PathOf("best")));
        Assert.Empty(DareTemporaries(_models.Root));
    }

    [Fact]
    public void Cancelling_during_a_variant_leaves_no_temporary_folder()
    {
        using var cancellation = new CancellationTokenSource();
        var sweep = new DareSweep(Options(0.5, 0.7) with { KeepBest = _models.PathOf("best") }, cancellation: cancellation.Token);
        var seen = new List<string>();
        Assert.ThrowsAny<OperationCanceledException>(() =>
        {
            foreach (var _ in sweep.Run(_ => true, folder =>
            {
                seen.Add(folder);
                if (seen.Count == 2) { cancellation.Cancel(); cancellation.Token.ThrowIfCancellationRequested(); }
                return SquaredChange(folder);
            })) { }
        });
        Assert.True(Directory.Exists(seen[0])); // the best so far, until the sweep is disposed
        sweep.Dispose();
        Assert.Empty(DareTemporaries(_models.Root));
        Assert.False(Directory.Exists(_models.PathOf("best")));
    }

    [Fact]
    public void Declined_variants_are_not_merged_and_the_grid_crosses_drop_rates_with_keep_ratios()
    {
        var options = Options(0.8, 0.9) with { Method = "dare_ties", KeepRatios = new[] { 0.5, 1.0 } };
        using var sweep = new DareSweep(options);
        Assert.Equal(new[] { "dare_ties p=0.8 k=0.5", "dare_ties p=0.8 k=1", "dare_ties p=0.9 k=0.5", "dare_ties p=0.9 k=1" }, sweep.Variants.Select(v => v.Label));
        var evaluated = 0;
        Assert.Empty(sweep.Run(_ => false, _ => ++evaluated).ToList());
        Assert.Equal(0, evaluated);
    }

    [Fact]
    public void Bad_settings_fail_before_any_merge()
    {
        Assert.Equal(DareErrorId.InvalidParameter, Assert.Throws<DareException>(() => new DareSweep(Options(0.9) with { KeepRatios = new[] { 0.5 } })).ErrorId);
        Assert.Equal(DareErrorId.InvalidParameter, Assert.Throws<DareException>(() => new DareSweep(Options(1.0))).ErrorId);
        Assert.Equal(DareErrorId.ChartPathInvalid, Assert.Throws<DareException>(() => new DareSweep(Options(0.9) with { ChartPath = _models.PathOf("chart.jpg") })).ErrorId);
        Assert.Equal(DareErrorId.OutputNotReplaceable, Assert.Throws<DareException>(() => new DareSweep(Options(0.9) with { KeepBest = _models.PathOf("tuned"), Force = true })).ErrorId);
    }
}
