using Dare.Engine.Merge;
using Dare.Engine.Recipes;
using Dare.Engine.Safetensors;
using Dare.Engine.Tests.Merge;
using Xunit;

namespace Dare.Engine.Tests.Methods;

/// <summary>arcee_fusion against mergekit's algorithm written out plainly in double precision.</summary>
public sealed class ArceeFusionTests : IDisposable
{
    private readonly TestModels _models = new();

    public void Dispose() => _models.Dispose();

    /// <summary>
    /// Per row: p = softmax(tuned) + 1e-8, q = softmax(base) + 1e-8, KL = Σ p·ln(p/q); importance = |tuned − base|·KL;
    /// threshold = median + 1.5·(q3 − q1), quantile q = sorted[⌊q·(n − 1)⌋]; kept where importance ≥ threshold.
    /// </summary>
    private static float[] Expected(float[] @base, float[] tuned, int rowLength)
    {
        var n = @base.Length;
        var importance = new double[n];
        for (var r = 0; r < n / rowLength; r++)
        {
            var row = Enumerable.Range(r * rowLength, rowLength).ToArray();
            double SumExp(float[] x) => row.Sum(j => Math.Exp(x[j]));
            var zb = SumExp(tuned);
            var za = SumExp(@base);
            var kl = row.Sum(j =>
            {
                var p = Math.Exp(tuned[j]) / zb + 1e-8;
                var q = Math.Exp(@base[j]) / za + 1e-8;
                return p * Math.Log(p / q);
            });
            foreach (var j in row) importance[j] = Math.Abs(tuned[j] - @base[j]) * kl;
        }
        var sorted = importance.Order().ToArray();
        double Quantile(double q) => sorted[(int)(q * (n - 1))];
        var threshold = Quantile(0.5) + 1.5 * (Quantile(0.75) - Quantile(0.25));
        return @base.Select((b, j) => importance[j] >= threshold ? tuned[j] : b).ToArray();
    }

    private TaskVector Fusion(TaskVector input) =>
        TaskVector.Combine(new[] { input }, new MergeOptions(MergeMethods.Find("arcee_fusion")!, new TensorParameter[] { 1.0 }, Normalize: false));

    [Theory]
    [InlineData(null)]
    [InlineData(10L)]
    [InlineData(1L)]
    public void Keeps_the_models_values_where_the_KL_weighted_change_is_an_outlier(long? chunk)
    {
        var random = new Random(21);
        var @base = TestModels.RandomFloats(random, 7 * 13);
        var tuned = TestModels.Perturb(random, @base, 0.3);
        // One row the model leaves alone (KL 0), and a few large changes.
        for (var j = 13; j < 26; j++) tuned[j] = @base[j];
        tuned[40] += 3f;
        tuned[77] -= 2.5f;
        var vector = @base.Take(5).ToArray();
        var vectorTuned = new[] { vector[0] + 1f, vector[1], vector[2] - 0.1f, vector[3], vector[4] + 0.05f };
        var baseModel = _models.Write($"b{chunk}", new[] { TestTensor.F32("m", @base, 7, 13), TestTensor.F32("v", vector, 5) });
        var tunedModel = _models.Write($"t{chunk}", new[] { TestTensor.F32("m", tuned, 7, 13), TestTensor.F32("v", vectorTuned, 5) });
        var output = _models.Export(Fusion(TaskVector.FromModels(baseModel, tunedModel)), $"o{chunk}", chunkElements: chunk);

        var expected = Expected(@base, tuned, 13);
        var actual = TestModels.ReadFloats(output, "m");
        for (var j = 0; j < expected.Length; j++) Assert.Equal(expected[j], actual[j], 1e-6f);
        var kept = Enumerable.Range(0, expected.Length).Count(j => expected[j] == tuned[j] && tuned[j] != @base[j]);
        Assert.InRange(kept, 1, expected.Length / 2);
        Assert.Equal(Expected(vector, vectorTuned, 5), TestModels.ReadFloats(output, "v"));
    }

    [Fact]
    public void An_unchanged_model_gives_the_base()
    {
        var @base = TestModels.RandomFloats(new Random(22), 24);
        var baseModel = _models.Write("zb", new[] { TestTensor.F32("m", @base, 4, 6) });
        var output = _models.Export(Fusion(TaskVector.FromModels(baseModel, _models.Write("zt", new[] { TestTensor.F32("m", @base, 4, 6) }))), "zo");
        Assert.Equal(@base, TestModels.ReadFloats(output, "m"));
    }

    [Fact]
    public void The_sample_of_a_large_tensor_is_distinct_sorted_and_the_same_every_time()
    {
        var sample = ArceeFusionMerge.SamplePositions(5_000_000, 1000, "model.embed_tokens.weight");
        Assert.Equal(1000, sample.Distinct().Count());
        Assert.Equal(sample.Order(), sample);
        Assert.All(sample, p => Assert.InRange(p, 0, 4_999_999));
        Assert.Equal(sample, ArceeFusionMerge.SamplePositions(5_000_000, 1000, "model.embed_tokens.weight"));
        Assert.NotEqual(sample, ArceeFusionMerge.SamplePositions(5_000_000, 1000, "lm_head.weight"));
    }

    /// <summary>Floyd's algorithm written out with a sorted set, seeded as documented (FNV-1a of the name).</summary>
    private static long[] FloydSample(long n, int m, string name)
    {
        var hash = 14695981039346656037UL;
        foreach (var c in name) hash = (hash ^ c) * 1099511628211UL;
        var random = new Random(unchecked((int)(hash ^ (hash >> 32))));
        var chosen = new SortedSet<long>();
        for (var j = n - m; j < n; j++)
        {
            var t = random.NextInt64(j + 1);
            if (!chosen.Add(t)) chosen.Add(j);
        }
        return chosen.ToArray();
    }

    [Theory]
    [InlineData(5_000_000L, 1000, 1L << 28)] // a bitmap
    [InlineData(5_000_000L, 1000, 0L)]       // a hash set (tensors past the bitmap limit)
    [InlineData(3000L, 2500, 1L << 28)]      // most draws collide, so many picks are j itself
    public void The_sample_is_floyds_algorithm_with_the_named_seed(long n, int m, long bitmapLimit)
    {
        Assert.Equal(FloydSample(n, m, "model.layers.0.mlp.up_proj.weight"), ArceeFusionMerge.SamplePositions(n, m, "model.layers.0.mlp.up_proj.weight", bitmapLimit));
    }

    [Fact]
    public void The_quartiles_are_the_sorted_values_at_mergekits_positions()
    {
        var random = new Random(24);
        foreach (var length in new[] { 1, 2, 5, 1000, 100_001 })
        {
            var values = Enumerable.Range(0, length).Select(_ => random.Next(3) == 0 ? 0f : (float)random.NextDouble()).ToArray();
            var sorted = values.Order().ToArray();
            Assert.Equal((sorted[(int)(0.25 * (length - 1))], sorted[(int)(0.5 * (length - 1))], sorted[(int)(0.75 * (length - 1))]), ArceeFusionMerge.Quartiles(values));
        }
        var withNaN = new[] { 3f, float.NaN, 1f, 2f, 5f };
        Assert.Equal((1f, 2f, 3f), ArceeFusionMerge.Quartiles(withNaN)); // sorted: NaN, 1, 2, 3, 5
    }

    [Fact]
    public void The_mergekit_example_recipe_plans_with_the_base_listed_among_the_models()
    {
        var random = new Random(23);
        var @base = TestModels.RandomFloats(random, 40);
        var tuned = TestModels.Perturb(random, @base, 0.3);
        _models.Write("model_a", new[] { TestTensor.F32("m", @base, 4, 10) });
        _models.Write("model_b", new[] { TestTensor.F32("m", tuned, 4, 10) });
        const string yaml = "models:\n  - model: model_a\n  - model: model_b\nmerge_method: arcee_fusion\nbase_model: model_a\ndtype: float32\n";
        var plan = RecipePlanner.Plan(RecipeParser.ParseText(yaml, _models.Root), new RecipePlanOptions { OutputPath = _models.PathOf("ex") }).Plans[0];
        Assert.Empty(plan.Warnings);
        new MergeExecutor().Export(plan.Vector, plan.Export);
        var expected = Expected(@base, tuned, 10);
        var actual = TestModels.ReadFloats(Checkpoint.Open(_models.PathOf("ex")), "m");
        for (var j = 0; j < expected.Length; j++) Assert.Equal(expected[j], actual[j], 1e-6f);
        var replay = RecipePlanner.Plan(RecipeParser.ParseText(plan.Export.RecipeYaml!, _models.Root), new RecipePlanOptions { OutputPath = _models.PathOf("ex2") }).Plans[0];
        new MergeExecutor().Export(replay.Vector, replay.Export);
        Assert.Equal(File.ReadAllBytes(Path.Combine(_models.PathOf("ex"), "model.safetensors")), File.ReadAllBytes(Path.Combine(_models.PathOf("ex2"), "model.safetensors")));
    }
}
