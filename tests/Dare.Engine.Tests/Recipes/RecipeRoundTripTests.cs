using System.Globalization;
using Dare.Engine.Merge;
using Dare.Engine.Recipes;
using Dare.Engine.Safetensors;
using Xunit;

namespace Dare.Engine.Tests.Recipes;

/// <summary>The recipe RecipeWriter puts into every exported model must plan back to the same task vector.</summary>
public class RecipeRoundTripTests : IClassFixture<RecipeModels>
{
    private readonly RecipeModels _models;

    public RecipeRoundTripTests(RecipeModels models) => _models = models;

    public static TheoryData<string> Plans => new()
    {
        "single vector, no DARE",
        "single vector, DARE with rules",
        "DARE + TIES, shared seed",
        "TIES, per-model seeds, streams and rescale, count signs",
        "linear, normalized",
        "linear, unnormalized with lambda",
        "linear, normalized with lambda",
        "gradient and wildcard weights",
        "mixed DARE and plain inputs",
        "DARE with the DAREx-q rescale",
        "DELLA then sign election (della), per-model epsilon",
        "DELLA then a weighted sum (della_linear), l1 and q rescales",
    };

    private TaskVector Build(string name)
    {
        var math = _models.Vector(_models.Math);
        var code = _models.Vector(_models.Code);
        var chat = _models.Vector(_models.Chat);
        var rules = new RuleParameter(new[] { new ParameterRule("embed_tokens", 0.5), new ParameterRule("*mlp*", new GradientParameter(new[] { 0.2, 0.8 }), FilterMatch.Wildcard) }, 0.9);
        return name switch
        {
            "single vector, no DARE" => math,
            "single vector, DARE with rules" => math.WithDare(new DareOptions(rules, 42, 0)),
            "DARE + TIES, shared seed" => TaskVector.Combine(
                new[] { math, code, chat }.Select((v, i) => v.WithDare(new DareOptions(0.9, 42, i))).ToList(),
                new MergeOptions(MergeMethod.Ties, new TensorParameter[] { 1, 0.5, 0.25 }, true, 1.0, new TensorParameter[] { 0.5, 0.5, 0.5 })),
            "TIES, per-model seeds, streams and rescale, count signs" => TaskVector.Combine(
                new[] { math.WithDare(new DareOptions(0.8, 1, 5, DareRescale.L1)), code.WithDare(new DareOptions(1.0 / 3, 2, 1, DareRescale.None)) },
                new MergeOptions(MergeMethod.Ties, new TensorParameter[] { 1, 1 }, false, 0.7, new TensorParameter[] { 1.0, 0.3 }, SignMethod.Count)),
            "linear, normalized" => TaskVector.Combine(new[] { math, code }, new MergeOptions(MergeMethod.Linear, new TensorParameter[] { 0.3, 0.7 }, true)),
            "linear, unnormalized with lambda" => TaskVector.Combine(new[] { math, code }, new MergeOptions(MergeMethod.Linear, new TensorParameter[] { 1, -0.5 }, false, 0.5)),
            "linear, normalized with lambda" => TaskVector.Combine(new[] { math, code }, new MergeOptions(MergeMethod.Linear, new TensorParameter[] { 1, 2 }, true, 1.5)),
            "gradient and wildcard weights" => TaskVector.Combine(new[] { math, code },
                new MergeOptions(MergeMethod.Linear, new TensorParameter[] { new GradientParameter(new[] { 0.0, 1.0 }), rules }, false)),
            "mixed DARE and plain inputs" => TaskVector.Combine(new[] { math.WithDare(new DareOptions(0.53, 7, 0)), code },
                new MergeOptions(MergeMethod.Ties, new TensorParameter[] { 1, 1 }, true, 1.0, new TensorParameter[] { 0.2, 0.4 })),
            "DARE with the DAREx-q rescale" => TaskVector.Combine(new[] { math.WithDare(new DareOptions(0.95, 7, 0, DareRescale.Q) { Q = 0.2 }), code.WithDare(new DareOptions(0.9, 7, 1)) },
                new MergeOptions(MergeMethod.Linear, new TensorParameter[] { 1, 1 }, false)),
            "DELLA then sign election (della), per-model epsilon" => TaskVector.Combine(
                new[] { math.WithDella(new DellaOptions(0.4, 0.1, 42, 0)), code.WithDella(new DellaOptions(new GradientParameter(new[] { 0.3, 0.6 }), 0.2, 42, 1)) },
                new MergeOptions(MergeMethod.Ties, new TensorParameter[] { 1, 0.5 }, true, 1.0, new TensorParameter[] { 1.0, 1.0 })),
            "DELLA then a weighted sum (della_linear), l1 and q rescales" => TaskVector.Combine(
                new[] { math.WithDella(new DellaOptions(0.5, 0.15, 3, 0, DareRescale.L1)), chat.WithDella(new DellaOptions(0.2, 0.1, 4, 1, DareRescale.Q) { Q = 0.3 }), code },
                new MergeOptions(MergeMethod.Linear, new TensorParameter[] { 1, 1, 0.5 }, false, 0.8)),
            _ => throw new ArgumentException(name),
        };
    }

    [Theory]
    [MemberData(nameof(Plans))]
    public void The_written_recipe_plans_back_to_an_equal_task_vector(string name)
    {
        var original = Build(name);
        var yaml = RecipeWriter.ToYaml(original, SafetensorsDType.BF16, 123_456_789, deltaOnly: name.Contains("lambda"));

        var plan = PlanFromYaml(yaml);

        Assert.Equal(Describe(original), Describe(plan.Vector));
        Assert.Equal(SafetensorsDType.BF16, plan.Export.OutputDType);
        Assert.Equal(123_456_789, plan.Export.MaxShardSize);
        Assert.Equal(name.Contains("lambda"), plan.Export.DeltaOnly);
        // Writing the replayed plan gives the same recipe again.
        Assert.Equal(yaml, plan.Export.RecipeYaml);
    }

    [Fact]
    public void Without_an_output_dtype_the_recipe_keeps_each_tensors_dtype()
    {
        var yaml = RecipeWriter.ToYaml(_models.Vector(_models.Math));
        Assert.DoesNotContain("dtype", yaml);
        Assert.Null(PlanFromYaml(yaml).Export.OutputDType);
    }

    [Fact]
    public void Linear_merges_are_written_as_linear_only_when_mergekit_would_compute_the_same()
    {
        string Method(bool normalize, double lambda) => RecipeWriter.ToYaml(TaskVector.Combine(
            new[] { _models.Vector(_models.Math), _models.Vector(_models.Code) },
            new MergeOptions(MergeMethod.Linear, new TensorParameter[] { 1, 1 }, normalize, lambda))).Split('\n')[1];
        Assert.Equal("merge_method: linear", Method(true, 1.0));
        Assert.Equal("merge_method: task_arithmetic", Method(false, 1.0));
        Assert.Equal("merge_method: task_arithmetic", Method(true, 0.5));
    }

    [Theory]
    [InlineData(0.1)]
    [InlineData(1.0 / 3)]
    [InlineData(1 - 0.53)]
    [InlineData(0.123456789012345678)]
    [InlineData(1e-20)]
    public void Written_numbers_read_back_to_the_same_double(double value)
    {
        var yaml = RecipeWriter.ToYaml(TaskVector.Combine(new[] { _models.Vector(_models.Math) },
            new MergeOptions(MergeMethod.Linear, new TensorParameter[] { value }, false)));
        var plan = PlanFromYaml(yaml);
        var weight = Assert.IsType<ConstantParameter>(plan.Vector.Merge!.Weights[0]);
        Assert.Equal(BitConverter.DoubleToInt64Bits(value), BitConverter.DoubleToInt64Bits(weight.Value));
    }

    private MergePlan PlanFromYaml(string yaml)
    {
        var batch = RecipeParser.ParseText(yaml, _models.Directory);
        var output = Path.Combine(_models.Directory, $"never-written-{Guid.NewGuid():N}");
        return Assert.Single(RecipePlanner.Plan(batch, new RecipePlanOptions { OutputPath = output, DefaultSeed = 999 }).Plans);
    }

    /// <summary>Everything that decides the computed values, resolved at every tensor of the base.</summary>
    private static string Describe(TaskVector vector)
    {
        var layers = TensorPosition.LayerCountOf(vector.Base);
        var positions = vector.Base.Tensors.Select(t => TensorPosition.Of(t.Name, layers)).ToList();
        string Values(TensorParameter p) => string.Join(",", positions.Select(x => p.Resolve(x).ToString("R", CultureInfo.InvariantCulture)));
        var lines = new List<string> { $"base {vector.Base.Path}" };
        var inputs = vector.IsMerged ? vector.Inputs : new[] { vector };
        for (var i = 0; i < inputs.Count; i++)
        {
            lines.Add($"input {i}: {inputs[i].FineTuned!.Path}");
            if (inputs[i].Dare is { } d) lines.Add($"  dare seed={d.Seed} stream={d.Stream} rescale={d.Rescale} q={d.Q:R} p={Values(d.DropRate)}");
            if (inputs[i].Della is { } e) lines.Add($"  della seed={e.Seed} stream={e.Stream} rescale={e.Rescale} q={e.Q:R} density={Values(e.Density)} epsilon={Values(e.Epsilon)}");
            if (vector.Merge is { } m)
            {
                lines.Add($"  weight={Values(m.Weights[i])}");
                if (m.KeepRatios is { } k) lines.Add($"  keep={Values(k[i])}");
            }
        }
        if (vector.Merge is { } merge) lines.Add($"merge {merge.Method} normalize={merge.Normalize} lambda={merge.Lambda:R} sign={merge.SignMethod}");
        return string.Join("\n", lines);
    }
}
