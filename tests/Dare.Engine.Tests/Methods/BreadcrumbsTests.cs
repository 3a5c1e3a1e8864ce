using Dare.Engine.Merge;
using Dare.Engine.Recipes;
using Dare.Engine.Safetensors;
using Dare.Engine.Tests.Merge;
using Xunit;

namespace Dare.Engine.Tests.Methods;

/// <summary>
/// Model Breadcrumbs (breadcrumbs, breadcrumbs_ties) against mergekit's magnitude_outliers written out plainly: order the
/// entries by |δ| from the largest (equal magnitudes by position), drop the first ⌊γN⌋ and everything after the next
/// ⌊density·N⌋ (a negative bottom count takes from the top), then combine.
/// </summary>
public sealed class BreadcrumbsTests : IDisposable
{
    private readonly TestModels _models = new();

    public void Dispose() => _models.Dispose();

    private static double[] Band(float[] delta, double density, double gamma)
    {
        var n = delta.Length;
        if (density >= 1) return delta.Select(d => (double)d).ToArray();
        var target = (int)Math.Floor(density * n);
        var top = (int)Math.Floor(gamma * n);
        var bottom = n - target - top;
        if (bottom < 0)
        {
            top += bottom;
        }
        var order = Enumerable.Range(0, n).OrderByDescending(i => Math.Abs(delta[i])).ThenBy(i => i).ToArray();
        var result = new double[n];
        for (var position = top; position < top + target; position++) result[order[position]] = delta[order[position]];
        return result;
    }

    private (float[] Base, float[][] Tuned, TaskVector[] Vectors) Models(int rows, int columns, int count, int seed, Func<int, int, float>? delta = null)
    {
        var random = new Random(seed);
        var @base = TestModels.RandomFloats(random, rows * columns).Select(b => delta is null ? b : MathF.Round(b * 64) / 64).ToArray();
        var baseModel = _models.Write($"base{seed}", new[] { TestTensor.F32("w", @base, rows, columns) });
        var tuned = new float[count][];
        var vectors = new TaskVector[count];
        for (var m = 0; m < count; m++)
        {
            tuned[m] = delta is null ? TestModels.Perturb(random, @base, 0.2) : @base.Select((b, i) => b + delta(m, i)).ToArray();
            vectors[m] = TaskVector.FromModels(baseModel, _models.Write($"tuned{seed}-{m}", new[] { TestTensor.F32("w", tuned[m], rows, columns) }));
        }
        return (@base, tuned, vectors);
    }

    private static float[] Delta(float[] @base, float[] tuned) => tuned.Select((t, i) => t - @base[i]).ToArray();

    private static void AssertClose(double[] expected, float[] actual)
    {
        var wrong = Enumerable.Range(0, expected.Length).Where(i => Math.Abs(expected[i] - actual[i]) > 1e-6 * Math.Max(1, Math.Abs(expected[i]))).ToList();
        Assert.True(wrong.Count == 0, $"{wrong.Count} entries differ, first at {wrong.FirstOrDefault()}");
    }

    [Theory]
    [InlineData(null, 0.7, 0.05)]
    [InlineData(37L, 0.7, 0.05)]
    [InlineData(37L, 0.98, 0.05)] // density + γ > 1: fewer outliers dropped
    [InlineData(null, 0.5, 0.0)]
    public void Breadcrumbs_keeps_the_band_below_the_outliers_then_sums(long? chunkElements, double density, double gamma)
    {
        var (@base, tuned, vectors) = Models(8, 25, 2, 31);
        var merged = TaskVector.Combine(vectors.Select(v => v.WithBreadcrumbs(new BreadcrumbsOptions(density, gamma))).ToList(),
            new MergeOptions(MergeMethod.Linear, new TensorParameter[] { 0.8, 0.4 }, false));
        var output = TestModels.ReadFloats(_models.Export(merged, $"b{chunkElements}-{density}-{gamma}", chunkElements: chunkElements), "w");
        var bands = tuned.Select(t => Band(Delta(@base, t), density, gamma)).ToArray();
        AssertClose(@base.Select((b, i) => b + 0.8 * bands[0][i] + 0.4 * bands[1][i]).ToArray(), output);
        Assert.Equal((int)Math.Floor(density * 200), bands[0].Count(v => v != 0));
    }

    [Fact]
    public void Breadcrumbs_ties_elects_signs_over_the_bands_without_normalizing()
    {
        var (@base, tuned, vectors) = Models(10, 20, 3, 32);
        var merged = TaskVector.Combine(vectors.Select(v => v.WithBreadcrumbs(new BreadcrumbsOptions(0.6, 0.02))).ToList(),
            new MergeOptions(MergeMethod.Ties, new TensorParameter[] { 1, 0.5, 2 }, false, 1.0, new TensorParameter[] { 1.0, 1.0, 1.0 }));
        var output = TestModels.ReadFloats(_models.Export(merged, "bt", chunkElements: 64), "w");
        var bands = tuned.Select(t => Band(Delta(@base, t), 0.6, 0.02)).ToArray();
        var weights = new[] { 1, 0.5, 2 };
        var expected = @base.Select((b, e) =>
        {
            var sign = Enumerable.Range(0, 3).Sum(m => weights[m] * bands[m][e]) >= 0 ? 1 : -1;
            return b + Enumerable.Range(0, 3).Where(m => Math.Sign(weights[m] * bands[m][e]) == sign).Sum(m => weights[m] * bands[m][e]);
        }).ToArray();
        AssertClose(expected, output);
    }

    [Theory]
    [InlineData(null)]     // one chunk of 280,000 elements: its ranges (one per core) share the ties in element order
    [InlineData(150_000L)] // two chunks: the second starts with the ties the first left
    public void Ties_across_the_cores_ranges_are_taken_in_element_order(long? chunkElements)
    {
        // Four magnitudes only, so both thresholds fall inside long runs of equal values.
        var random = new Random(35);
        var magnitudes = new[] { 0.125f, 0.25f, 0.5f, 0.75f };
        var (@base, tuned, vectors) = Models(400, 700, 1, 35, (_, _) => magnitudes[random.Next(4)] * (random.Next(2) == 0 ? -1 : 1));
        var merged = TaskVector.Combine(new[] { vectors[0].WithBreadcrumbs(new BreadcrumbsOptions(0.45, 0.2)) },
            new MergeOptions(MergeMethod.Linear, new TensorParameter[] { 1.0 }, false));
        var output = TestModels.ReadFloats(_models.Export(merged, $"ranges{chunkElements}", chunkElements: chunkElements), "w");
        var band = Band(Delta(@base, tuned[0]), 0.45, 0.2);
        AssertClose(@base.Select((b, i) => b + band[i]).ToArray(), output);
    }

    [Fact]
    public void Equal_magnitudes_are_taken_in_element_order_and_zero_deltas_stay_zero()
    {
        // Model 0: |δ| = 0.5 everywhere (signs alternate); model 1: δ = 0. Chunks of 30 split the ties across chunks.
        var (@base, tuned, vectors) = Models(4, 25, 2, 33, (m, i) => m == 0 ? (i % 3 == 0 ? -0.5f : 0.5f) : 0f);
        var merged = TaskVector.Combine(vectors.Select(v => v.WithBreadcrumbs(new BreadcrumbsOptions(0.5, 0.1))).ToList(),
            new MergeOptions(MergeMethod.Linear, new TensorParameter[] { 1, 1 }, false));
        var output = TestModels.ReadFloats(_models.Export(merged, "tied", chunkElements: 30), "w");
        // Outliers are elements 0..9, the band 10..59.
        var expected = @base.Select((b, i) => b + (i is >= 10 and < 60 ? (i % 3 == 0 ? -0.5 : 0.5) : 0)).ToArray();
        AssertClose(expected, output);
    }

    [Fact]
    public void Small_tensors_keep_their_top_where_gamma_drops_none_and_density_one_keeps_all()
    {
        // N = 50: ⌊0.01·50⌋ = 0 outliers, so the 25 largest stay (mergekit's indices[n_bot:-0] would keep none).
        var (@base, tuned, vectors) = Models(5, 10, 1, 34);
        var output = TestModels.ReadFloats(_models.Export(vectors[0].WithBreadcrumbs(new BreadcrumbsOptions(0.5, 0.01)), "small"), "w");
        var band = Band(Delta(@base, tuned[0]), 0.5, 0.01);
        Assert.Equal(25, band.Count(v => v != 0));
        AssertClose(@base.Select((b, i) => b + band[i]).ToArray(), output);

        var dense = TestModels.ReadFloats(_models.Export(vectors[0].WithBreadcrumbs(new BreadcrumbsOptions(1.0, 0.01)), "dense"), "w");
        Assert.Equal(tuned[0], dense);
    }

    [Theory]
    [InlineData("breadcrumbs", "density: 0.8, gamma: 0.05", "normalize: false")]
    [InlineData("breadcrumbs_ties", "density: 0.6", "lambda: 0.9")]
    public void A_recipe_merges_and_its_written_recipe_replays_to_identical_bytes(string method, string modelParameters, string global)
    {
        var (@base, tuned, _) = Models(6, 30, 2, 35);
        var yaml = $"merge_method: {method}\nbase_model: base35\nmodels:\n  - model: tuned35-0\n    parameters: {{ weight: 1, {modelParameters} }}\n" +
                   $"  - model: tuned35-1\n    parameters: {{ weight: 0.5, {modelParameters} }}\nparameters:\n  {global}\nout_dtype: float32\n";
        var plan = RecipePlanner.Plan(RecipeParser.ParseText(yaml, _models.Root), new RecipePlanOptions { OutputPath = _models.PathOf(method) }).Plans[0];
        Assert.Empty(plan.Warnings);
        Assert.False(plan.Vector.Merge!.Normalize);
        new MergeExecutor().Export(plan.Vector, plan.Export);
        Assert.Contains($"merge_method: {method}\n", plan.Export.RecipeYaml);
        var replay = RecipePlanner.Plan(RecipeParser.ParseText(plan.Export.RecipeYaml!, _models.Root), new RecipePlanOptions { OutputPath = _models.PathOf(method + "-replay") }).Plans[0];
        Assert.Empty(replay.Warnings);
        new MergeExecutor().Export(replay.Vector, replay.Export);
        Assert.Equal(File.ReadAllBytes(Directory.GetFiles(_models.PathOf(method), "*.safetensors").Single()),
                     File.ReadAllBytes(Directory.GetFiles(_models.PathOf(method + "-replay"), "*.safetensors").Single()));
        if (method == "breadcrumbs")
        {
            var bands = tuned.Select(t => Band(Delta(@base, t), 0.8, 0.05)).ToArray();
            AssertClose(@base.Select((b, i) => b + bands[0][i] + 0.5 * bands[1][i]).ToArray(), TestModels.ReadFloats(Checkpoint.Open(_models.PathOf(method)), "w"));
        }
    }

    [Fact]
    public void Drop_rate_does_not_combine_with_breadcrumbs_in_a_recipe()
    {
        Models(2, 10, 1, 36);
        var yaml = "merge_method: breadcrumbs\nbase_model: base36\nmodels:\n  - model: tuned36-0\n    parameters: { weight: 1, density: 0.5, drop_rate: 0.3 }\n";
        var error = Assert.Throws<DareException>(() => RecipePlanner.Plan(RecipeParser.ParseText(yaml, _models.Root), new RecipePlanOptions { OutputPath = _models.PathOf("never") }));
        Assert.Equal(DareErrorId.RecipeInvalid, error.ErrorId);
        Assert.Contains("drop_rate (DARE) does not combine", error.Message);
    }
}
