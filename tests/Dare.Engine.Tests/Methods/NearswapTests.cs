using Dare.Engine.Merge;
using Dare.Engine.Recipes;
using Dare.Engine.Safetensors;
using Dare.Engine.Tests.Merge;
using Xunit;

namespace Dare.Engine.Tests.Methods;

/// <summary>nearswap, the method added on the seam as the example in docs/ARCHITECTURE.md: checked against a plain re-computation.</summary>
public sealed class NearswapTests : IDisposable
{
    private readonly TestModels _models = new();

    public void Dispose() => _models.Dispose();

    /// <summary>base + w·δ, w = clamp(t / max(|δ|, 1e-6), 0, 1), in float32 as written in the method's documentation.</summary>
    private static float[] Expected(float[] @base, float[] tuned, float t) => @base.Select((b, i) =>
    {
        var delta = tuned[i] - b;
        var w = Math.Min(Math.Max(t / Math.Max(Math.Abs(delta), 1e-6f), 0f), 1f);
        return b + w * delta;
    }).ToArray();

    private static TaskVector Nearswap(TaskVector input, TensorParameter t) =>
        TaskVector.Combine(new[] { input }, new MergeOptions(MergeMethods.Find("nearswap")!, new TensorParameter[] { 1.0 }, Normalize: false)
        {
            Settings = new Dictionary<string, TensorParameter> { ["t"] = t },
        });

    [Theory]
    [InlineData(0.05f, null)]
    [InlineData(0.05f, 7L)]
    [InlineData(0f, null)]
    [InlineData(1000f, 5L)]
    public void Merged_values_are_base_plus_the_clamped_share_of_the_delta(float t, long? chunkElements)
    {
        var random = new Random(3);
        var @base = TestModels.RandomFloats(random, 103);
        var tuned = TestModels.Perturb(random, @base, 0.2);
        // Entries equal to the base, and one within the 1e-6 floor.
        tuned[0] = @base[0];
        tuned[1] = @base[1] + 5e-7f;
        var baseModel = _models.Write("base", new[] { TestTensor.F32("w", @base) });
        var tunedModel = _models.Write("tuned", new[] { TestTensor.F32("w", tuned) });
        var output = _models.Export(Nearswap(TaskVector.FromModels(baseModel, tunedModel), t), "out", chunkElements: chunkElements);
        Assert.Equal(Expected(@base, tuned, t), TestModels.ReadFloats(output, "w"));
    }

    [Fact]
    public void Bfloat16_models_and_output_match_the_recomputation_rounded_to_bfloat16()
    {
        var random = new Random(4);
        var @base = TestModels.RandomFloats(random, 300).Select(v => Bf16Bits.ToFloat(Bf16Bits.FromFloat(v))).ToArray();
        var tuned = TestModels.Perturb(random, @base, 0.1).Select(v => Bf16Bits.ToFloat(Bf16Bits.FromFloat(v))).ToArray();
        var baseModel = _models.Write("base16", new[] { TestTensor.Bf16("w", @base) });
        var tunedModel = _models.Write("tuned16", new[] { TestTensor.Bf16("w", tuned) });
        var output = _models.Export(Nearswap(TaskVector.FromModels(baseModel, tunedModel), 0.03), "out16", dtype: SafetensorsDType.BF16);
        var expected = Expected(@base, tuned, 0.03f).Select(Bf16Bits.FromFloat).ToArray();
        Assert.Equal(expected, TestModels.ReadRaw<ushort>(output.Find("w")!));
    }

    [Fact]
    public void A_recipe_plans_the_same_merge_and_writes_a_recipe_that_replays_it()
    {
        var random = new Random(5);
        var @base = TestModels.RandomFloats(random, 40);
        var tuned = TestModels.Perturb(random, @base, 0.2);
        _models.Write("rbase", new[] { TestTensor.F32("w", @base) });
        _models.Write("rtuned", new[] { TestTensor.F32("w", tuned) });
        var yaml = "merge_method: nearswap\nbase_model: rbase\nmodels:\n  - model: rtuned\nparameters: { t: 0.07 }\nout_dtype: float32\n";
        var plan = RecipePlanner.Plan(RecipeParser.ParseText(yaml, _models.Root), new RecipePlanOptions { OutputPath = _models.PathOf("recipe-out") }).Plans[0];
        Assert.Empty(plan.Warnings);
        Assert.Equal("nearswap", plan.Vector.Merge!.Method.Name);
        new MergeExecutor().Export(plan.Vector, plan.Export);
        Assert.Equal(Expected(@base, tuned, 0.07f), TestModels.ReadFloats(Checkpoint.Open(_models.PathOf("recipe-out")), "w"));
        // The written recipe names nearswap and t, and plans to the same steps.
        var replay = RecipePlanner.Plan(RecipeParser.ParseText(plan.Export.RecipeYaml!, _models.Root), new RecipePlanOptions { OutputPath = _models.PathOf("replay") }).Plans[0];
        Assert.Equal(plan.Vector.Steps, replay.Vector.Steps);
        Assert.Contains("merge_method: nearswap", plan.Export.RecipeYaml);
        Assert.Empty(replay.Warnings);
    }

    [Theory]
    [InlineData("parameters: { t: -0.5 }", "t must satisfy t >= 0; -0.5 does not")]
    [InlineData("parameters: { lambda: 2 }", "needs 't'")]
    public void Recipes_with_a_bad_or_missing_t_are_rejected_in_the_users_terms(string parameters, string message)
    {
        _models.Write("ebase", new[] { TestTensor.F32("w", new[] { 1f }) });
        _models.Write("etuned", new[] { TestTensor.F32("w", new[] { 2f }) });
        var yaml = $"merge_method: nearswap\nbase_model: ebase\nmodels:\n  - model: etuned\n{parameters}\n";
        var error = Assert.Throws<DareException>(() => RecipePlanner.Plan(RecipeParser.ParseText(yaml, _models.Root), new RecipePlanOptions { OutputPath = _models.PathOf("e-out") }));
        Assert.Equal(DareErrorId.RecipeInvalid, error.ErrorId);
        Assert.Contains(message, error.Message);
    }

    [Theory]
    [InlineData("nearswap", "parameters: { t: 0.1 }\nmodels:\n  - model: wtuned\n    parameters: { weight: 2 }", "has no effect with merge_method nearswap; it takes t")]
    [InlineData("ties", "parameters: { t: 0.1, weight: 1, density: 0.5 }\nmodels:\n  - model: wtuned", "has no effect with merge_method ties; it takes weight, density, normalize, lambda, sign_method")]
    public void A_parameter_the_method_does_not_declare_is_a_warning_naming_what_it_takes(string method, string rest, string warning)
    {
        _models.Write("wbase", new[] { TestTensor.F32("w", new[] { 1f, 2f }) });
        _models.Write("wtuned", new[] { TestTensor.F32("w", new[] { 2f, 2.5f }) });
        var yaml = $"merge_method: {method}\nbase_model: wbase\n{rest}\n";
        var plan = RecipePlanner.Plan(RecipeParser.ParseText(yaml, _models.Root), new RecipePlanOptions { OutputPath = _models.PathOf("w-out") }).Plans[0];
        Assert.Contains(plan.Warnings, w => w.Contains(warning, StringComparison.Ordinal));
    }

    [Fact]
    public void More_than_one_model_is_rejected()
    {
        var baseModel = _models.Write("mbase", new[] { TestTensor.F32("w", new[] { 1f }) });
        var a = TaskVector.FromModels(baseModel, _models.Write("ma", new[] { TestTensor.F32("w", new[] { 2f }) }));
        var b = TaskVector.FromModels(baseModel, _models.Write("mb", new[] { TestTensor.F32("w", new[] { 3f }) }));
        var error = Assert.Throws<DareException>(() => TaskVector.Combine(new[] { a, b },
            new MergeOptions(MergeMethods.Find("nearswap")!, new TensorParameter[] { 1.0, 1.0 }, false) { Settings = new Dictionary<string, TensorParameter> { ["t"] = 0.1 } }));
        Assert.Equal(DareErrorId.InvalidParameter, error.ErrorId);
        Assert.Contains("exactly one model", error.Message);
    }
}
