using Dare.Engine.Merge;
using Dare.Engine.Recipes;
using Dare.Engine.Safetensors;
using Dare.Engine.Tests.Merge;
using Xunit;

namespace Dare.Engine.Tests.Methods;

/// <summary>The spherical methods from recipes: mergekit's keys and defaults, what base_model means, replay to identical bytes.</summary>
public sealed class SphericalRecipeTests : IDisposable
{
    private readonly TestModels _models = new();
    private readonly float[] _base;
    private readonly float[] _a;
    private readonly float[] _b;

    public SphericalRecipeTests()
    {
        var random = new Random(31);
        _base = TestModels.RandomFloats(random, 24);
        _a = TestModels.Perturb(random, _base, 0.5);
        _b = TestModels.Perturb(random, _base, 0.5);
        _models.Write("base", new[] { TestTensor.F32("w", _base, 4, 6) });
        _models.Write("a", new[] { TestTensor.F32("w", _a, 4, 6) });
        _models.Write("b", new[] { TestTensor.F32("w", _b, 4, 6) });
    }

    public void Dispose() => _models.Dispose();

    private static double[] D(float[] values) => values.Select(v => (double)v).ToArray();
    private static double[] Sub(double[] a, double[] b) => a.Select((x, i) => x - b[i]).ToArray();
    private static double[] Add(double[] a, double[] b) => a.Select((x, i) => x + b[i]).ToArray();

    private MergePlan Plan(string yaml, string output) =>
        RecipePlanner.Plan(RecipeParser.ParseText(yaml, _models.Root), new RecipePlanOptions { OutputPath = _models.PathOf(output) }).Plans[0];

    private static byte[] Bytes(string folder) => Directory.GetFiles(folder, "*.safetensors").Order().SelectMany(File.ReadAllBytes).ToArray();

    private float[] Run(string yaml, string output)
    {
        var plan = Plan(yaml, output);
        Assert.Empty(plan.Warnings);
        new MergeExecutor().Export(plan.Vector, plan.Export);
        // The recipe written beside the output replays to the same bytes.
        var replay = Plan(plan.Export.RecipeYaml!, output + "-replay");
        Assert.Equal(plan.Vector.Steps, replay.Vector.Steps);
        new MergeExecutor().Export(replay.Vector, replay.Export);
        Assert.Equal(Bytes(_models.PathOf(output)), Bytes(_models.PathOf(output + "-replay")));
        return TestModels.ReadFloats(Checkpoint.Open(_models.PathOf(output)), "w");
    }

    private static void AssertClose(double[] expected, float[] actual)
    {
        var worst = expected.Select((e, i) => Math.Abs(e - actual[i])).Max();
        Assert.True(worst <= 2e-6 * Math.Max(1, expected.Max(Math.Abs)), $"largest difference {worst}");
    }

    [Fact]
    public void Slerp_takes_base_model_as_t_0_and_the_listed_base_is_not_a_second_model()
    {
        var merged = Run("merge_method: slerp\nbase_model: base\nmodels:\n  - model: base\n  - model: a\nparameters:\n  t:\n    - filter: w\n      value: 0.3\n    - value: 0.9\nout_dtype: float32\n", "slerp");
        AssertClose(SphericalReference.Slerp(0.3, D(_base), D(_a)), merged);
    }

    [Fact]
    public void NuSlerp_without_base_interpolates_whole_weights_and_with_base_the_task_vectors()
    {
        var whole = Run("merge_method: nuslerp\nmodels:\n  - model: a\n    parameters: { weight: 1 }\n  - model: b\n    parameters: { weight: 3 }\nparameters: { nuslerp_flatten: false }\nout_dtype: float32\n", "nu-whole");
        AssertClose(SphericalReference.NuSlerp(0.75, D(_a), D(_b), new long[] { 4, 6 }, false, false), whole);
        var tasks = Run("merge_method: nuslerp\nbase_model: base\nmodels:\n  - model: a\n    parameters: { weight: 1 }\n  - model: b\n    parameters: { weight: 3 }\nparameters: { nuslerp_flatten: false, nuslerp_row_wise: true }\nout_dtype: float32\n", "nu-base");
        AssertClose(Add(D(_base), SphericalReference.NuSlerp(0.75, Sub(D(_a), D(_base)), Sub(D(_b), D(_base)), new long[] { 4, 6 }, false, true)), tasks);
    }

    [Fact]
    public void MultiSlerp_reads_weight_normalize_weights_and_eps()
    {
        var merged = Run("merge_method: multislerp\nmodels:\n  - model: a\n    parameters: { weight: 2 }\n  - model: b\n    parameters: { weight: 1 }\n  - model: base\n    parameters: { weight: 1 }\nparameters: { normalize_weights: false, eps: 1e-6 }\nout_dtype: float32\n", "multi");
        AssertClose(SphericalReference.MultiSlerp(new[] { D(_a), D(_b), D(_base) }, new[] { 2.0, 1.0, 1.0 }, false, 1e-6), merged);
    }

    [Fact]
    public void Karcher_counts_an_unlisted_base_model_as_one_more_model_as_mergekit_does()
    {
        var merged = Run("merge_method: karcher\nbase_model: base\nmodels:\n  - model: a\n  - model: b\nparameters: { max_iter: 5, tol: 1e-6 }\nout_dtype: float32\n", "karcher");
        AssertClose(SphericalReference.Karcher(new[] { D(_a), D(_b), D(_base) }, 5, 1e-6), merged);
        var defaults = Run("merge_method: karcher\nmodels:\n  - model: a\n  - model: b\nout_dtype: float32\n", "karcher-defaults");
        AssertClose(SphericalReference.Karcher(new[] { D(_a), D(_b) }), defaults);
    }

    [Fact]
    public void ModelStock_reads_filter_wise()
    {
        var merged = Run("merge_method: model_stock\nbase_model: base\nmodels:\n  - model: a\n  - model: b\nparameters: { filter_wise: true }\nout_dtype: float32\n", "stock");
        AssertClose(SphericalReference.ModelStock(D(_base), new[] { D(_a), D(_b) }, new long[] { 4, 6 }, true), merged);
    }

    [Theory]
    [InlineData("merge_method: slerp\nbase_model: base\nmodels:\n  - model: a\nparameters: { t: 1.5 }\n", "t must satisfy 0 <= t <= 1; 1.5 does not")]
    [InlineData("merge_method: slerp\nbase_model: base\nmodels:\n  - model: a\n", "needs 't'")]
    [InlineData("merge_method: karcher\nmodels:\n  - model: a\n  - model: b\nparameters: { max_iter: -1 }\n", "max_iter must satisfy")]
    [InlineData("merge_method: nuslerp\nmodels:\n  - model: a\n  - model: b\n", "has no weight")]
    public void Bad_or_missing_values_are_rejected_in_the_users_terms(string yaml, string message)
    {
        var error = Assert.Throws<DareException>(() => Plan(yaml, "bad"));
        Assert.Equal(DareErrorId.RecipeInvalid, error.ErrorId);
        Assert.Contains(message, error.Message);
    }
}
