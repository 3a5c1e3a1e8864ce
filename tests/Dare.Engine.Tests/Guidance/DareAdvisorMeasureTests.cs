using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using Dare.Engine.Tests.Merge;
using Xunit;

namespace Dare.Engine.Tests.Guidance;

/// <summary>
/// DareAdvisor.Measure on hand-built checkpoints whose answer is known, each figure compared with a plain
/// recomputation from the deltas written here (δ = tuned − base in float32, as stored).
/// </summary>
public sealed class DareAdvisorMeasureTests : IDisposable
{
    private const int Width = 64;
    private static readonly string[] Names = { "model.embed_tokens.weight", "model.layers.0.mlp.weight", "model.layers.1.mlp.weight", "model.norm.weight" };
    private static readonly long[][] Shapes = { new long[] { 16, Width }, new long[] { Width, Width }, new long[] { Width, Width }, new long[] { Width } };

    private readonly TestModels _models = new();
    private readonly Random _random = new(17);
    private readonly float[][] _base;
    private readonly Checkpoint _baseModel;

    public DareAdvisorMeasureTests()
    {
        _base = Shapes.Select(s => TestModels.RandomFloats(_random, (int)s.Aggregate(1L, (a, b) => a * b))).ToArray();
        _baseModel = Write("base", _base);
    }

    public void Dispose() => _models.Dispose();

    private Checkpoint Write(string name, float[][] values) => _models.Write(name, Names.Select((n, i) => TestTensor.F32(n, values[i], Shapes[i])));

    /// <summary>A fine-tune of the base by the given deltas; returns the model and the δ it really stores (tuned − base in float32).</summary>
    private (TaskVector Vector, float[][] Delta) Tune(string name, float[][] deltas)
    {
        var tuned = deltas.Select((d, t) => d.Select((v, i) => _base[t][i] + v).ToArray()).ToArray();
        var stored = tuned.Select((values, t) => values.Select((v, i) => v - _base[t][i]).ToArray()).ToArray();
        return (TaskVector.FromModels(_baseModel, Write(name, tuned)), stored);
    }

    private float[][] RandomDeltas(double scale = 0.01) => Shapes.Select(s => TestModels.RandomFloats(_random, (int)s.Aggregate(1L, (a, b) => a * b), scale)).ToArray();

    private static float[][] Scaled(float[][] deltas, float factor) => deltas.Select(d => d.Select(v => v * factor).ToArray()).ToArray();

    private static GuidanceMeasurements Measure(params TaskVector[] vectors) =>
        DareAdvisor.Measure(vectors, new GuidanceOptions { SampleRows = 1000, TrainingSteps = 1000 }, new MergeExecutor());

    private static double Cosine(float[] a, float[] b)
    {
        double dot = 0, aa = 0, bb = 0;
        for (var i = 0; i < a.Length; i++) { dot += (double)a[i] * b[i]; aa += (double)a[i] * a[i]; bb += (double)b[i] * b[i]; }
        return dot / Math.Sqrt(aa) / Math.Sqrt(bb);
    }

    private static double Conflicts(float[] a, float[] b)
    {
        long both = 0, opposite = 0;
        for (var i = 0; i < a.Length; i++)
        {
            if (a[i] == 0 || b[i] == 0) continue;
            both++;
            if (Math.Sign(a[i]) != Math.Sign(b[i])) opposite++;
        }
        return (double)opposite / both;
    }

    /// <summary>Plain recomputation: per tensor, entries below 1% of that tensor's max |δ|, or zero; over all tensors.</summary>
    private static double NaturalSparsity(float[][] deltas)
    {
        long below = 0, all = 0;
        foreach (var tensor in deltas)
        {
            var max = tensor.Max(v => Math.Abs(v));
            below += tensor.Count(v => Math.Abs(v) < 0.01 * max || v == 0);
            all += tensor.Length;
        }
        return (double)below / all;
    }

    private static float[] Flat(float[][] deltas) => deltas.SelectMany(d => d).ToArray();

    [Fact]
    public void Models_with_opposite_deltas_measure_cosine_minus_one_and_all_signs_in_conflict()
    {
        var d = RandomDeltas();
        var (a, da) = Tune("a", d);
        var (b, db) = Tune("b", Scaled(d, -1));
        var m = Measure(a, b);
        var pair = Assert.Single(m.Pairs);
        Assert.Equal(Cosine(Flat(da), Flat(db)), pair.Cosine, 9);
        Assert.Equal(Conflicts(Flat(da), Flat(db)), pair.SignConflictRate, 12);
        Assert.True(pair.SignConflictRate > 0.99, $"{pair.SignConflictRate}");
        Assert.Equal(pair.SignConflictRate, m.SignConflictRate!.Value, 12);
        Assert.Equal(TaskVectorRelation.Diverse, m.Relation);
        Assert.Equal(Flat(da).Length, m.SampledElements);
        Assert.StartsWith("dare_linear", DareAdvisor.Recommend(m)[0].Value);
    }

    [Fact]
    public void Models_moving_the_same_way_are_the_same_domain_and_get_plain_linear()
    {
        var d = RandomDeltas();
        var (a, da) = Tune("a", d);
        var (b, db) = Tune("b", Scaled(d, 2));
        var m = Measure(a, b);
        Assert.Equal(Cosine(Flat(da), Flat(db)), m.MeanCosine!.Value, 9);
        Assert.True(m.MeanCosine > 0.999);
        Assert.Equal(Conflicts(Flat(da), Flat(db)), m.SignConflictRate!.Value, 12);
        Assert.Equal(TaskVectorRelation.SameDomain, m.Relation);
        var advice = DareAdvisor.Recommend(m);
        Assert.StartsWith("linear", advice[0].Value);
        Assert.Equal("none", advice.Single(r => r.Setting == "DropRate").Value);
    }

    [Fact]
    public void Cosine_and_conflicts_are_reported_per_layer()
    {
        var d = RandomDeltas();
        var (a, da) = Tune("a", d);
        // Layer 0 flips sign, layer 1 keeps it; embeddings and norm (outside the layers) are independent.
        var other = RandomDeltas();
        var (b, db) = Tune("b", new[] { other[0], Scaled(d, -1)[1], Scaled(d, 3)[2], other[3] });
        var layers = Measure(a, b).Layers;
        Assert.Equal(new int?[] { null, 0, 1 }, layers.Select(l => l.Layer));
        var outside = new[] { 0, 3 };
        Assert.Equal(Cosine(outside.SelectMany(t => da[t]).ToArray(), outside.SelectMany(t => db[t]).ToArray()), layers[0].MeanCosine!.Value, 9);
        Assert.Equal(Conflicts(outside.SelectMany(t => da[t]).ToArray(), outside.SelectMany(t => db[t]).ToArray()), layers[0].SignConflictRate!.Value, 12);
        Assert.Equal(Cosine(da[1], db[1]), layers[1].MeanCosine!.Value, 9);
        Assert.Equal(Conflicts(da[1], db[1]), layers[1].SignConflictRate!.Value, 12);
        Assert.Equal(Conflicts(da[2], db[2]), layers[2].SignConflictRate!.Value, 12);
        Assert.True(layers[1].SignConflictRate > 0.99 && layers[2].SignConflictRate < 0.01);
        Assert.Equal(Width * Width, layers[1].SampledElements);
    }

    [Fact]
    public void A_rank_4_delta_is_LoRA_like_and_gets_the_LoRA_range_where_a_full_delta_does_not()
    {
        float[] RankFour()
        {
            var u = TestModels.RandomFloats(_random, Width * 4, 0.1);
            var v = TestModels.RandomFloats(_random, 4 * Width, 0.1);
            var product = new float[Width * Width];
            for (var r = 0; r < Width; r++)
                for (var c = 0; c < Width; c++)
                    for (var k = 0; k < 4; k++) product[r * Width + c] += u[r * 4 + k] * v[k * Width + c];
            return product;
        }
        var full = RandomDeltas();
        var (lowRank, _) = Tune("lowrank", new[] { new float[16 * Width], RankFour(), RankFour(), new float[Width] });
        var m = Measure(lowRank);
        Assert.True(m.LoraLike);
        // Rank99 ≤ 4 of 64 possible: a fraction of at most 1/16 (exact zeros in the rank-4 product are not expected).
        Assert.InRange(m.EffectiveRankFraction!.Value, 1.0 / Width, 4.0 / Width);
        var rate = DareAdvisor.Recommend(m).Single(r => r.Setting == "DropRate");
        Assert.Equal((0.70, 0.85), (rate.Low!.Value, rate.High!.Value));

        var (dense, _) = Tune("dense", full);
        var denseMeasure = Measure(dense);
        Assert.False(denseMeasure.LoraLike);
        Assert.True(denseMeasure.EffectiveRankFraction > 0.5);
        var denseRate = DareAdvisor.Recommend(denseMeasure).Single(r => r.Setting == "DropRate");
        Assert.Equal((0.85, 0.90), (denseRate.Low!.Value, denseRate.High!.Value));
    }

    [Fact]
    public void A_tensor_the_fine_tune_left_alone_counts_every_entry_as_naturally_sparse()
    {
        var d = RandomDeltas();
        Array.Clear(d[2]); // its max |δ| is 0, so "below 1% of the max" is empty: its zeros count all the same
        var (vector, ds) = Tune("one-unchanged", d);
        var m = Measure(vector);
        Assert.Equal(ds[2].Length, ds[2].Count(v => v == 0));
        Assert.Equal(NaturalSparsity(ds), Assert.Single(m.NaturalSparsity), 12);
    }

    [Theory]
    [InlineData(MergeExecutor.DefaultChunkElements)]
    [InlineData(1000L)] // the 64 × 64 tensors take several chunks: their sparsity is counted in a second pass
    public void Measure_TaskVector_counts_a_tensor_the_fine_tune_left_alone_as_the_guidance_does(long chunkElements)
    {
        var d = RandomDeltas();
        Array.Clear(d[2]);
        var (vector, ds) = Tune("one-unchanged", d);

        var statistics = TaskVectorStatistics.Measure(vector, new MergeExecutor(chunkElements: chunkElements), perTensor: true);

        Assert.Equal(NaturalSparsity(ds), statistics.NaturalSparsity, 12);
        Assert.Equal(Assert.Single(Measure(vector).NaturalSparsity), statistics.NaturalSparsity, 12);
        Assert.Equal(1.0, statistics.Tensors.Single(t => t.Tensor == Names[2]).NaturalSparsity);
    }

    [Fact]
    public void A_mostly_zero_delta_measures_its_natural_sparsity_and_gets_a_lower_rate()
    {
        var d = RandomDeltas();
        foreach (var tensor in d)
            for (var i = 0; i < tensor.Length; i++) if (_random.NextDouble() < 0.85) tensor[i] = 0;
        var (sparse, ds) = Tune("sparse", d);
        var m = Measure(sparse);
        Assert.Equal(NaturalSparsity(ds), Assert.Single(m.NaturalSparsity), 12);
        Assert.True(m.NaturalSparsity[0] > DareAdvisor.SparseEnough);
        var rate = DareAdvisor.Recommend(m).Single(r => r.Setting == "DropRate");
        Assert.Equal(0.75, rate.Low!.Value, 12);
        Assert.Equal(0.80, rate.High!.Value, 12);
        Assert.Contains("natural sparsity", rate.Reason);
    }

    [Fact]
    public void Large_tensors_are_sampled_on_evenly_spaced_rows_only()
    {
        var d = RandomDeltas();
        foreach (var tensor in d)
            for (var i = 0; i < tensor.Length; i++) if (i % 3 == 0) tensor[i] = 0;
        var (a, da) = Tune("a", d);
        var m = DareAdvisor.Measure(new[] { a }, new GuidanceOptions { SampleRows = 8, RankSamples = 0 }, new MergeExecutor());
        // 8 of 16 embedding rows, 8 of 64 rows of each layer matrix, the 1-D norm as one row of 64.
        Assert.Equal(8 * Width * 3 + Width, m.SampledElements);
        var picked = da.Select((tensor, t) =>
        {
            var rows = Shapes[t].Length == 1 ? 1 : Shapes[t][0];
            var k = (int)Math.Min(rows, 8);
            return Enumerable.Range(0, k).SelectMany(i => tensor.Skip((int)(i * rows / k) * Width).Take(Width)).ToArray();
        }).ToArray();
        Assert.Equal(picked.Sum(p => p.Length), m.SampledElements);
        Assert.Equal(NaturalSparsity(picked), m.NaturalSparsity[0], 12);
        Assert.Null(m.EffectiveRankFraction);
    }

    [Fact]
    public void Vectors_of_different_bases_are_refused()
    {
        var (a, _) = Tune("a", RandomDeltas());
        var otherBase = Write("other-base", _base);
        var b = TaskVector.FromModels(otherBase, Write("b", _base));
        var error = Assert.Throws<DareException>(() => Measure(a, b));
        Assert.Equal(DareErrorId.BaseModelMismatch, error.ErrorId);
        Assert.Contains("other-base", error.Message);
    }
}
