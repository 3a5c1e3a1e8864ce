using Dare.Engine.Merge;
using Dare.Engine.Recipes;
using Dare.Engine.Safetensors;
using Dare.Engine.Tests.Merge;
using Xunit;

namespace Dare.Engine.Tests.Methods;

/// <summary>ram and ramplus_tl against the algorithm written out plainly (double loops over a small tensor).</summary>
public sealed class RamTests : IDisposable
{
    private readonly TestModels _models = new();

    public void Dispose() => _models.Dispose();

    /// <summary>
    /// mergekit's RAM per entry: inputs with |δ| > ε count; one counting input keeps its δ (× λᵢ for ramplus_tl),
    /// several give their mean, none gives 0. λᵢ = 1 + r·clamp(shared_i / max(unique_i, ε), 0, α) over the tensor.
    /// </summary>
    private static float[] Expected(float[] @base, float[][] tuned, double epsilon, double? r = null, double alpha = 0)
    {
        var n = tuned.Length;
        var deltas = tuned.Select(t => t.Select((v, j) => (double)(v - @base[j])).ToArray()).ToArray();
        bool Counts(int i, int j) => Math.Abs((float)deltas[i][j]) > epsilon;
        var lambdas = new double[n];
        for (var i = 0; i < n; i++)
        {
            double shared = 0, unique = 0;
            for (var j = 0; j < @base.Length; j++)
            {
                if (!Counts(i, j)) continue;
                var others = Enumerable.Range(0, n).Count(k => k != i && Counts(k, j));
                if (others == 0) unique++;
                else shared++;
            }
            var rho = shared / Math.Max(unique, epsilon);
            lambdas[i] = r is null ? 1 : 1 + r.Value * Math.Clamp(rho, 0, alpha);
        }
        return @base.Select((b, j) =>
        {
            var counting = Enumerable.Range(0, n).Where(i => Counts(i, j)).ToList();
            var merged = counting.Count switch
            {
                0 => 0.0,
                1 => deltas[counting[0]][j] * lambdas[counting[0]],
                _ => counting.Sum(i => deltas[i][j]) / counting.Count,
            };
            return (float)(b + merged);
        }).ToArray();
    }

    private (float[] Base, float[][] Tuned, TaskVector[] Vectors) Inputs(string prefix, int seed, int count, int models)
    {
        var random = new Random(seed);
        var @base = TestModels.RandomFloats(random, count);
        var tuned = new float[models][];
        for (var m = 0; m < models; m++)
        {
            tuned[m] = TestModels.Perturb(random, @base, 0.2);
            // Entries no model changes, changes at ε exactly (not counted), and entries only model m changes.
            for (var j = 0; j < count; j += 5) tuned[m][j] = @base[j];
            for (var j = 1 + m; j < count; j += 7) if (j % 5 != 0) tuned[m][j] = @base[j];
        }
        tuned[0][3] = @base[3] + 1e-6f;
        var baseModel = _models.Write($"{prefix}base", new[] { TestTensor.F32("w", @base) });
        var vectors = tuned.Select((t, m) => TaskVector.FromModels(baseModel, _models.Write($"{prefix}m{m}", new[] { TestTensor.F32("w", t) }))).ToArray();
        return (@base, tuned, vectors);
    }

    private static TaskVector Ram(TaskVector[] vectors, string method, Dictionary<string, TensorParameter> settings) =>
        TaskVector.Combine(vectors, new MergeOptions(MergeMethods.Find(method)!, vectors.Select(_ => (TensorParameter)1.0).ToList(), Normalize: false) { Settings = settings });

    [Theory]
    [InlineData(3, null)]
    [InlineData(2, 16L)]
    [InlineData(1, null)]
    public void Ram_keeps_unique_changes_and_averages_shared_ones(int models, long? chunk)
    {
        var (@base, tuned, vectors) = Inputs($"ram{models}{chunk}", 11, 200, models);
        var output = _models.Export(Ram(vectors, "ram", new() { ["epsilon"] = 1e-5 }), $"ram-out{models}{chunk}", chunkElements: chunk);
        var actual = TestModels.ReadFloats(output, "w");
        var expected = Expected(@base, tuned, 1e-5);
        for (var j = 0; j < expected.Length; j++) Assert.Equal(expected[j], actual[j], 1e-6f);
    }

    [Theory]
    [InlineData(0.1, 0.2, null)]
    [InlineData(0.5, 10.0, 13L)]
    [InlineData(0.0, 0.2, null)]
    public void Ramplus_tl_scales_unique_changes_by_the_whole_tensors_overlap_ratio(double r, double alpha, long? chunk)
    {
        var (@base, tuned, vectors) = Inputs($"rp{r}{alpha}{chunk}", 12, 300, 3);
        var output = _models.Export(Ram(vectors, "ramplus_tl", new() { ["epsilon"] = 1e-5, ["r"] = r, ["alpha"] = alpha }), $"rp-out{r}{alpha}{chunk}", chunkElements: chunk);
        var actual = TestModels.ReadFloats(output, "w");
        var expected = Expected(@base, tuned, 1e-5, r, alpha);
        for (var j = 0; j < expected.Length; j++) Assert.Equal(expected[j], actual[j], 1e-6f);
        // The amplification is visible: some unique entry moved by more than its δ (λ > 1) unless r = 0.
        var amplified = Enumerable.Range(0, @base.Length).Any(j => Math.Abs(actual[j] - @base[j]) > Math.Abs(tuned.Select(t => t[j] - @base[j]).MaxBy(Math.Abs)) + 1e-6);
        Assert.Equal(r > 0, amplified);
    }

    [Fact]
    public void Ramplus_tl_with_no_unique_entries_takes_the_cap_and_zero_deltas_keep_the_base()
    {
        var @base = new[] { 1f, 2f, 3f, 4f };
        var same = new[] { 1.5f, 2f, 3f, 4.5f };
        var baseModel = _models.Write("cbase", new[] { TestTensor.F32("w", @base) });
        var vectors = new[] { same, same }.Select((t, m) => TaskVector.FromModels(baseModel, _models.Write($"c{m}", new[] { TestTensor.F32("w", t) }))).ToArray();
        var output = _models.Export(Ram(vectors, "ramplus_tl", new() { ["epsilon"] = 1e-5, ["r"] = 0.1, ["alpha"] = 0.2 }), "c-out");
        Assert.Equal(same, TestModels.ReadFloats(output, "w"));
    }

    [Fact]
    public void Recipes_plan_ram_with_mergekits_defaults_and_replay_to_identical_bytes()
    {
        var (@base, tuned, _) = Inputs("rr", 13, 64, 2);
        var yaml = "merge_method: ramplus_tl\nbase_model: rrbase\nmodels:\n  - model: rrm0\n  - model: rrm1\nout_dtype: float32\n";
        var plan = RecipePlanner.Plan(RecipeParser.ParseText(yaml, _models.Root), new RecipePlanOptions { OutputPath = _models.PathOf("rr-out") }).Plans[0];
        Assert.Empty(plan.Warnings);
        Assert.Equal("MergeRamPlusTL(epsilon=1E-05, r=0.1, alpha=0.2)", plan.Vector.Steps[^1]);
        new MergeExecutor().Export(plan.Vector, plan.Export);
        var expected = Expected(@base, tuned, 1e-5, 0.1, 0.2);
        var actual = TestModels.ReadFloats(Checkpoint.Open(_models.PathOf("rr-out")), "w");
        for (var j = 0; j < expected.Length; j++) Assert.Equal(expected[j], actual[j], 1e-6f);
        var replay = RecipePlanner.Plan(RecipeParser.ParseText(plan.Export.RecipeYaml!, _models.Root), new RecipePlanOptions { OutputPath = _models.PathOf("rr-replay") }).Plans[0];
        new MergeExecutor().Export(replay.Vector, replay.Export);
        Assert.Equal(File.ReadAllBytes(Path.Combine(_models.PathOf("rr-out"), "model.safetensors")), File.ReadAllBytes(Path.Combine(_models.PathOf("rr-replay"), "model.safetensors")));
    }

    [Fact]
    public void A_negative_epsilon_is_refused_and_r_under_ram_is_a_warning()
    {
        _models.Write("vbase", new[] { TestTensor.F32("w", new[] { 1f }) });
        _models.Write("vm", new[] { TestTensor.F32("w", new[] { 2f }) });
        RecipeBatch Parse(string method, string parameters) =>
            RecipeParser.ParseText($"merge_method: {method}\nbase_model: vbase\nmodels:\n  - model: vm\n{parameters}\n", _models.Root);
        var error = Assert.Throws<DareException>(() => RecipePlanner.Plan(Parse("ram", "parameters: { epsilon: -1 }"), new RecipePlanOptions { OutputPath = _models.PathOf("v-out") }));
        Assert.Equal(DareErrorId.RecipeInvalid, error.ErrorId);
        Assert.Contains("epsilon must satisfy epsilon >= 0", error.Message);
        var plan = RecipePlanner.Plan(Parse("ram", "parameters: { r: 0.3 }"), new RecipePlanOptions { OutputPath = _models.PathOf("v-out") }).Plans[0];
        Assert.Contains(plan.Warnings, w => w.Contains("has no effect with merge_method ram", StringComparison.Ordinal));
    }
}
