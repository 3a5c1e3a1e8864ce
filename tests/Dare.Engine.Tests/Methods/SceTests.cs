using Dare.Engine.Merge;
using Dare.Engine.Recipes;
using Dare.Engine.Safetensors;
using Dare.Engine.Tests.Merge;
using Xunit;

namespace Dare.Engine.Tests.Methods;

/// <summary>SCE against mergekit's sce_merge written out plainly in float64 loops over the whole tensor.</summary>
public sealed class SceTests : IDisposable
{
    private readonly TestModels _models = new();

    public void Dispose() => _models.Dispose();

    /// <summary>select (top-k variance, ties by position), calculate (mean δ², normalised), erase (sign of Σ δ), weighted mean.</summary>
    private static double[] Sce(float[][] deltas, double topk)
    {
        int m = deltas.Length, n = deltas[0].Length;
        var keep = Enumerable.Repeat(topk >= 1, n).ToArray();
        if (topk > 0 && topk < 1)
        {
            var variance = Enumerable.Range(0, n).Select(e =>
            {
                var mean = deltas.Sum(d => (double)d[e]) / m;
                return (float)(deltas.Sum(d => (d[e] - mean) * (d[e] - mean)) / m);
            }).ToArray();
            var k = (int)Math.Floor(variance.Count(v => v != 0) * topk);
            foreach (var e in Enumerable.Range(0, n).OrderByDescending(e => variance[e]).ThenBy(e => e).Take(k)) keep[e] = true;
        }
        var masked = deltas.Select(d => d.Select((v, e) => keep[e] ? (double)v : 0).ToArray()).ToArray();
        var weights = masked.Select(d => d.Sum(v => v * v) / n).ToArray();
        var total = weights.Sum();
        weights = Math.Abs(total) < 1e-6 ? weights.Select(_ => 1.0 / m).ToArray() : weights.Select(w => w / total).ToArray();
        return Enumerable.Range(0, n).Select(e =>
        {
            var sign = masked.Sum(d => d[e]) >= 0 ? 1 : -1;
            double merged = 0, weight = 0;
            for (var i = 0; i < m; i++)
            {
                if (Math.Sign(masked[i][e]) != sign) continue;
                merged += weights[i] * masked[i][e];
                weight += weights[i];
            }
            return merged / Math.Max(weight, 1e-6);
        }).ToArray();
    }

    private (float[] Base, float[][] Deltas, TaskVector[] Vectors) Models(int count, int seed, int n = 240, Func<int, int, float>? delta = null, double scale = 0.2)
    {
        var random = new Random(seed);
        var @base = TestModels.RandomFloats(random, n).Select(b => MathF.Round(b * 64) / 64).ToArray();
        var baseModel = _models.Write($"base{seed}", new[] { TestTensor.F32("w", @base, 12, n / 12) });
        var deltas = new float[count][];
        var vectors = new TaskVector[count];
        for (var m = 0; m < count; m++)
        {
            var tuned = delta is null ? TestModels.Perturb(random, @base, scale) : @base.Select((b, i) => b + delta(m, i)).ToArray();
            deltas[m] = tuned.Select((t, i) => t - @base[i]).ToArray();
            vectors[m] = TaskVector.FromModels(baseModel, _models.Write($"tuned{seed}-{m}", new[] { TestTensor.F32("w", tuned, 12, n / 12) }));
        }
        return (@base, deltas, vectors);
    }

    private static TaskVector Merge(IReadOnlyList<TaskVector> vectors, double topk) =>
        TaskVector.Combine(vectors, new MergeOptions(MergeMethods.Find("sce")!, vectors.Select(_ => (TensorParameter)1.0).ToList(), false)
        {
            Settings = new Dictionary<string, TensorParameter> { ["select_topk"] = topk },
        });

    private static void AssertClose(double[] expected, float[] actual)
    {
        var wrong = Enumerable.Range(0, expected.Length).Where(i => Math.Abs(expected[i] - actual[i]) > 1e-6 * Math.Max(1, Math.Abs(expected[i]))).ToList();
        Assert.True(wrong.Count == 0, $"{wrong.Count} entries differ, first at {wrong.FirstOrDefault()}");
    }

    [Theory]
    [InlineData(1.0, null)]
    [InlineData(0.3, null)]
    [InlineData(0.3, 50L)]
    [InlineData(0.0, null)]
    public void Sce_matches_the_plain_computation(double topk, long? chunkElements)
    {
        var (@base, deltas, vectors) = Models(3, 41);
        var output = TestModels.ReadFloats(_models.Export(Merge(vectors, topk), $"sce{topk}-{chunkElements}", chunkElements: chunkElements), "w");
        var expected = Sce(deltas, topk);
        AssertClose(@base.Select((b, i) => b + expected[i]).ToArray(), output);
        if (topk == 0) Assert.Equal(@base, output);
    }

    [Fact]
    public void Five_inputs_with_a_scalar_tail_give_the_plain_computation_bit_for_bit()
    {
        // 1212 elements: the vector bodies (8 at a time) leave 4 to the scalar ones; both must round alike.
        // Every fourth entry of each model unchanged: a zero never agrees with the majority sign.
        var random = new Random(44);
        var (@base, deltas, vectors) = Models(5, 43, n: 1212, delta: (m, i) => (m + i) % 4 == 0 ? 0f : (float)(random.NextDouble() - 0.45) * 0.25f);
        foreach (var topk in new[] { 0.25, 1.0 })
        {
            var output = TestModels.ReadFloats(_models.Export(Merge(vectors, topk), $"sce-five-{topk}"), "w");
            var expected = Sce(deltas, topk);
            // Bit for bit: the float64 sums in input order, rounded to float32, plus the float32 base.
            Assert.Equal(@base.Select((b, i) => BitConverter.SingleToUInt32Bits((float)expected[i] + b)), output.Select(BitConverter.SingleToUInt32Bits));
        }
    }

    [Fact]
    public void Equal_variances_are_kept_in_element_order_and_tiny_weights_become_uniform()
    {
        // Every position has the same variance (δ = ±1/1024 alternating between the models); the weights' sum is below 1e-6.
        var (@base, deltas, vectors) = Models(2, 42, delta: (m, i) => (m == 0) == (i % 2 == 0) ? 1f / 1024 : -1f / 1024);
        var output = TestModels.ReadFloats(_models.Export(Merge(vectors, 0.25), "tied", chunkElements: 70), "w");
        var expected = Sce(deltas, 0.25);
        AssertClose(@base.Select((b, i) => b + expected[i]).ToArray(), output);
        // k = 60 of 240: exactly the first 60 positions move (the positive δ of each pair survives the erase).
        Assert.Equal(Enumerable.Range(0, 60), Enumerable.Range(0, 240).Where(i => output[i] != @base[i]));
    }

    [Fact]
    public void A_single_model_and_zero_deltas()
    {
        var (@base, deltas, vectors) = Models(1, 43);
        // One model: every variance is 0, so select_topk < 1 keeps nothing (k = 0), as in mergekit.
        Assert.Equal(@base, TestModels.ReadFloats(_models.Export(Merge(vectors, 0.5), "single-half"), "w"));
        AssertClose(@base.Select((b, i) => b + Sce(deltas, 1.0)[i]).ToArray(), TestModels.ReadFloats(_models.Export(Merge(vectors, 1.0), "single"), "w"));
        var (zeroBase, _, zeros) = Models(2, 44, delta: (_, _) => 0f);
        Assert.Equal(zeroBase, TestModels.ReadFloats(_models.Export(Merge(zeros, 0.5), "zeros"), "w"));
    }

    [Fact]
    public void A_recipe_merges_and_its_written_recipe_replays_to_identical_bytes()
    {
        var (@base, deltas, _) = Models(3, 45);
        var yaml = "merge_method: sce\nbase_model: base45\nmodels:\n  - model: tuned45-0\n  - model: tuned45-1\n  - model: tuned45-2\nparameters: { select_topk: 0.4 }\nout_dtype: float32\n";
        var plan = RecipePlanner.Plan(RecipeParser.ParseText(yaml, _models.Root), new RecipePlanOptions { OutputPath = _models.PathOf("sce-recipe") }).Plans[0];
        Assert.Empty(plan.Warnings);
        new MergeExecutor().Export(plan.Vector, plan.Export);
        var expected = Sce(deltas, 0.4);
        AssertClose(@base.Select((b, i) => b + expected[i]).ToArray(), TestModels.ReadFloats(Checkpoint.Open(_models.PathOf("sce-recipe")), "w"));
        Assert.Contains("merge_method: sce\n", plan.Export.RecipeYaml);
        var replay = RecipePlanner.Plan(RecipeParser.ParseText(plan.Export.RecipeYaml!, _models.Root), new RecipePlanOptions { OutputPath = _models.PathOf("sce-replay") }).Plans[0];
        Assert.Empty(replay.Warnings);
        new MergeExecutor().Export(replay.Vector, replay.Export);
        Assert.Equal(File.ReadAllBytes(Directory.GetFiles(_models.PathOf("sce-recipe"), "*.safetensors").Single()),
                     File.ReadAllBytes(Directory.GetFiles(_models.PathOf("sce-replay"), "*.safetensors").Single()));
    }
}

/// <summary>SCE's variances, bit for bit against the formula in float64 written out per element.</summary>
public sealed unsafe class SceVarianceTests
{
    [Theory]
    [InlineData(1, 37)]
    [InlineData(2, 8)]
    [InlineData(3, 200_003)] // two core ranges, a scalar tail
    [InlineData(5, 1001)]
    public void Each_variance_is_the_float64_formula_rounded_to_float32(int models, int count)
    {
        var random = new Random(models * 1000 + count);
        var inputs = Enumerable.Range(0, models).Select(_ => Enumerable.Range(0, count).Select(_ => (float)(random.NextDouble() - 0.5) * (random.Next(4) == 0 ? 1e-3f : 1f)).ToArray()).ToArray();
        var handles = inputs.Select(i => System.Runtime.InteropServices.GCHandle.Alloc(i, System.Runtime.InteropServices.GCHandleType.Pinned)).ToArray();
        try
        {
            var variances = new float[count];
            fixed (float* destination = variances) SceTensorMerge.Variances(handles.Select(h => h.AddrOfPinnedObject()).ToArray(), destination, count);
            for (var e = 0; e < count; e++)
            {
                double sum = 0;
                foreach (var input in inputs) sum += input[e];
                var mean = sum / models;
                double squares = 0;
                foreach (var input in inputs) squares += (input[e] - mean) * (input[e] - mean);
                var expected = (float)(squares / models);
                if (BitConverter.SingleToUInt32Bits(expected) != BitConverter.SingleToUInt32Bits(variances[e])) Assert.Fail($"element {e}: expected {expected:R}, got {variances[e]:R}");
            }
        }
        finally
        {
            foreach (var handle in handles) handle.Free();
        }
    }
}
