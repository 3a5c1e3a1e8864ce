using Dare.Engine.Merge;
using Dare.Engine.Recipes;
using Dare.Engine.Tests.Merge;
using Xunit;

namespace Dare.Engine.Tests.Methods;

/// <summary>The registry drives recipes and validation; weights and λ are checked where they are given.</summary>
public sealed class MethodRegistryTests : IDisposable
{
    private readonly TestModels _models = new();

    public void Dispose() => _models.Dispose();

    [Fact]
    public void Every_recipe_name_of_every_method_is_a_merge_method_recipes_accept()
    {
        var names = MergeMethods.All.SelectMany(m => m.RecipeForms).Select(f => f.Name).ToList();
        Assert.Equal(names.Count, names.Distinct().Count());
        Assert.Equal(new[] { "linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "della", "della_linear", "breadcrumbs", "breadcrumbs_ties", "arcee_fusion", "karcher", "model_stock", "multislerp", "nearswap", "nuslerp", "passthrough", "ram", "ramplus_tl", "sce", "slerp" }, MergeMethods.RecipeForms.Select(f => f.Name));
        foreach (var name in names)
        {
            var recipe = RecipeParser.ParseText($"merge_method: {name}\nbase_model: b\nmodels: [a]\n", "/tmp").Recipes[0];
            Assert.Same(MergeMethods.FindRecipeForm(name), recipe.Method);
        }
        Assert.DoesNotContain("nearswap", RecipeParser.UnsupportedMethods);
        // Every method mergekit 0.1.4 registers (and ram, added after it) is a recipe name now.
        Assert.Empty(RecipeParser.UnsupportedMethods);
    }

    [Fact]
    public void Every_declared_parameter_is_a_recipe_key_and_every_range_rejects_non_finite_values()
    {
        foreach (var spec in MergeMethods.AllParameters)
        {
            Assert.Contains(spec.Key, RecipeParser.ParameterKeys);
            if (spec.Kind != ParameterKind.Number) continue;
            Assert.Equal($"{spec.Key} must be a finite number, not NaN", spec.Problem(double.NaN));
            Assert.NotNull(spec.Problem(double.PositiveInfinity));
        }
    }

    [Theory]
    [InlineData(0.0, "KeepRatio must satisfy 0 < KeepRatio <= 1; 0 does not")]
    [InlineData(1.5, "KeepRatio must satisfy 0 < KeepRatio <= 1; 1.5 does not")]
    [InlineData(1.0, null)]
    public void The_keep_ratio_message_is_in_the_users_terms(double value, string? message)
    {
        var density = MergeMethods.Find("ties")!.Parameter("density");
        Assert.Equal(message, density.Problem(value, density.CmdletName));
        // One declaration, two defaults: the cmdlet's and mergekit's (the help states both).
        Assert.Equal((0.2, 1.0), ((double)density.CmdletDefault!, (double)density.Default!));
    }

    private TaskVector[] Vectors()
    {
        var @base = _models.Write("base", new[] { TestTensor.F32("a", new[] { 1f, 2f }), TestTensor.F32("b", new[] { 3f }) });
        return new[] { "x", "y" }.Select((name, i) =>
            TaskVector.FromModels(@base, _models.Write(name, new[] { TestTensor.F32("a", new[] { 2f + i, 4f }), TestTensor.F32("b", new[] { 5f - i }) }))).ToArray();
    }

    [Theory]
    [InlineData("linear")]
    [InlineData("ties")]
    public void Weights_that_sum_to_zero_at_a_tensor_under_normalize_are_an_error_naming_it(string method)
    {
        var vectors = Vectors();
        // Zero for tensor b only: the plan is fine, the export stops at b.
        var zeroAtB = new RuleParameter(new[] { new ParameterRule("b", 0.0) }, 1.0);
        var options = new MergeOptions(MergeMethods.Find(method)!, new TensorParameter[] { zeroAtB, zeroAtB }, true, 1.0, new TensorParameter[] { 1.0, 1.0 });
        var error = Assert.Throws<DareException>(() => _models.Export(TaskVector.Combine(vectors, options), "out"));
        Assert.Equal((DareErrorId.WeightSumZero, "b"), (error.ErrorId, error.TensorName));
        Assert.Contains("'b'", error.Message);
        Assert.False(Directory.Exists(_models.PathOf("out")));
        // Constant zero weights are refused when the merge is planned.
        Assert.Equal(DareErrorId.WeightSumZero, Assert.Throws<DareException>(() => TaskVector.Combine(vectors,
            options with { Weights = new TensorParameter[] { 0.0, 0.0 } })).ErrorId);
        // Without normalize a zero sum is a plain (zero) merge.
        TaskVector.Combine(vectors, options with { Weights = new TensorParameter[] { 0.0, 0.0 }, Normalize = false });
    }

    [Theory]
    [InlineData("linear", "weight: 0")]
    [InlineData("ties", "weight: 0, density: 0.5")]
    [InlineData("task_arithmetic", "normalize: true, weight: [{ filter: b, value: 0 }, { value: 1 }]")]
    public void A_recipe_whose_normalized_weights_sum_to_zero_at_a_tensor_is_refused_when_planned(string method, string parameters)
    {
        Vectors();
        var yaml = $"merge_method: {method}\nbase_model: base\nmodels: [x, y]\nparameters: {{ {parameters} }}\n";
        var error = Assert.Throws<DareException>(() => RecipePlanner.Plan(RecipeParser.ParseText(yaml, _models.Root), new RecipePlanOptions { OutputPath = _models.PathOf("r-out") }));
        Assert.Equal(DareErrorId.WeightSumZero, error.ErrorId);
        Assert.Contains(method == "task_arithmetic" ? "at tensor 'b'" : "at tensor 'a'", error.Message);
        Assert.Contains("line 4", error.Message);
    }

    [Theory]
    [InlineData(double.NaN, 1.0)]
    [InlineData(double.PositiveInfinity, 1.0)]
    [InlineData(1.0, double.NaN)]
    [InlineData(1.0, double.NegativeInfinity)]
    public void Non_finite_weights_and_lambda_are_rejected_when_the_merge_is_planned(double weight, double lambda)
    {
        var error = Assert.Throws<DareException>(() => TaskVector.Combine(Vectors(),
            new MergeOptions(MergeMethod.Linear, new TensorParameter[] { weight, 1.0 }, false, lambda)));
        Assert.Equal(DareErrorId.InvalidParameter, error.ErrorId);
        Assert.Contains("must be a finite number", error.Message);
    }
}
