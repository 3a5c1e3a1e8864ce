using Dare.Engine.Merge;
using Dare.Engine.Recipes;
using Xunit;

namespace Dare.Engine.Tests.Recipes;

public class RecipePlannerTests : IClassFixture<RecipeModels>
{
    private readonly RecipeModels _models;

    public RecipePlannerTests(RecipeModels models) => _models = models;

    private BatchPlan Plan(string yaml, string? output = "out-never-written") =>
        RecipePlanner.Plan(RecipeParser.ParseText(yaml, _models.Directory, "test.yml"),
            new RecipePlanOptions { OutputPath = output is null ? null : Path.Combine(_models.Directory, output), DefaultSeed = 5 });

    private TaskVector Vector(string yaml) => Plan(yaml).Plans[0].Vector;

    private static double At(TensorParameter parameter, string tensor) => parameter.Resolve(TensorPosition.Of(tensor, 2));

    private DareException PlanError(string yaml, string? output = "out-never-written") => Assert.Throws<DareException>(() => Plan(yaml, output));

    [Fact]
    public void Dare_ties_turns_density_into_a_drop_rate_and_elects_signs_without_trimming()
    {
        var vector = Vector("""
            merge_method: dare_ties
            base_model: ./base
            models:
              - model: ./base
              - model: ./math
                parameters: { weight: 1.0, density: 0.1 }
              - model: ./code
                parameters: { weight: 0.5, density: [{ filter: embed_tokens, value: 0.5 }, { value: 0.1 }] }
            random_seed: 42
            """);

        // The base listed among the models has no task vector (as in mergekit).
        Assert.Equal(new[] { "math", "code" }, vector.Inputs.Select(i => i.FineTuned!.Name));
        Assert.Equal(MergeMethod.Ties, vector.Merge!.Method);
        Assert.False(vector.Merge.Normalize);
        Assert.All(vector.Merge.KeepRatios!, k => Assert.Equal(new ConstantParameter(1.0), k));
        Assert.Equal(0.9, At(vector.Inputs[0].Dare!.DropRate, "model.layers.0.mlp.up_proj.weight"));
        Assert.Equal(0.5, At(vector.Inputs[1].Dare!.DropRate, "model.embed_tokens.weight"));
        Assert.Equal(0.9, At(vector.Inputs[1].Dare!.DropRate, "lm_head.weight"));
        Assert.Equal((42L, 0, DareRescale.InverseKeep), (vector.Inputs[0].Dare!.Seed, vector.Inputs[0].Dare!.Stream, vector.Inputs[0].Dare!.Rescale));
        Assert.Equal(1, vector.Inputs[1].Dare!.Stream);
    }

    [Fact]
    public void Method_defaults_follow_mergekit()
    {
        const string models = "base_model: ./base\nmodels:\n  - model: ./math\n    parameters: { weight: 1 }\n  - model: ./code\n    parameters: { weight: 1 }\n";
        var linear = Vector("merge_method: linear\n" + models).Merge!;
        Assert.Equal((MergeMethod.Linear, true), (linear.Method, linear.Normalize));
        var arithmetic = Vector("merge_method: task_arithmetic\n" + models).Merge!;
        Assert.Equal((MergeMethod.Linear, false), (arithmetic.Method, arithmetic.Normalize));
        var ties = Vector("merge_method: ties\n" + models).Merge!;
        Assert.Equal((MergeMethod.Ties, true, SignMethod.Sum), (ties.Method, ties.Normalize, ties.SignMethod));
        Assert.All(ties.KeepRatios!, k => Assert.Equal(new ConstantParameter(1.0), k)); // density defaults to 1
        var dareLinear = Vector("merge_method: dare_linear\n" + models);
        Assert.Equal((MergeMethod.Linear, false), (dareLinear.Merge!.Method, dareLinear.Merge.Normalize));
        Assert.All(dareLinear.Inputs, i => Assert.Null(i.Dare)); // density 1 drops nothing
    }

    [Fact]
    public void Per_model_settings_win_and_filters_without_a_fallback_fall_back_to_the_global_setting()
    {
        var vector = Vector("""
            merge_method: ties
            base_model: ./base
            models:
              - model: ./math
                parameters: { weight: [{ filter: mlp, value: 0 }] }
              - model: ./code
                parameters: { weight: 2, density: 0.3 }
            parameters: { weight: 0.5, density: 0.7 }
            """);
        var merge = vector.Merge!;
        Assert.Equal(0.0, At(merge.Weights[0], "model.layers.1.mlp.down_proj.weight"));
        Assert.Equal(0.5, At(merge.Weights[0], "model.layers.1.self_attn.q_proj.weight"));
        Assert.Equal(2.0, At(merge.Weights[1], "model.layers.1.mlp.down_proj.weight"));
        Assert.Equal(0.7, At(merge.KeepRatios![0], "lm_head.weight"));
        Assert.Equal(0.3, At(merge.KeepRatios[1], "lm_head.weight"));
    }

    [Fact]
    public void Ties_with_drop_rate_is_dare_then_trim()
    {
        var vector = Vector("merge_method: ties\nbase_model: ./base\nmodels:\n  - model: ./math\n    parameters: { weight: 1, density: 0.5, drop_rate: 0.8 }\nrandom_seed: 3\nparameters: { rescale: l1 }\n");
        Assert.Equal(new DareOptions(0.8, 3, 0, DareRescale.L1), vector.Inputs[0].Dare);
        Assert.Equal(new ConstantParameter(0.5), vector.Merge!.KeepRatios![0]);
    }

    [Fact]
    public void A_recipe_without_random_seed_uses_the_default_seed_and_says_so()
    {
        var plan = Plan("merge_method: dare_linear\nbase_model: ./base\nmodels:\n  - model: ./math\n    parameters: { weight: 1, density: 0.5 }\n").Plans[0];
        Assert.True(plan.UsesDefaultSeed);
        Assert.Equal(5, plan.Vector.Dare!.Seed);
    }

    [Fact]
    public void Linear_without_a_base_uses_the_first_model_and_keeps_its_weight()
    {
        var vector = Vector("merge_method: linear\nmodels:\n  - model: ./math\n    parameters: { weight: 1 }\n  - model: ./code\n    parameters: { weight: 3 }\n");
        Assert.Equal(_models.Math.Path, vector.Base.Path);
        Assert.Equal(new[] { "math", "code" }, vector.Inputs.Select(i => i.FineTuned!.Name));
        Assert.True(vector.Merge!.Normalize);
    }

    [Fact]
    public void Unnormalized_linear_is_accepted_only_where_the_weights_sum_to_one()
    {
        const string head = "merge_method: linear\nbase_model: ./base\nparameters: { normalize: false }\nmodels:\n";
        var accepted = Vector(head + "  - model: ./base\n    parameters: { weight: 0.25 }\n  - model: ./math\n    parameters: { weight: 0.75 }\n");
        Assert.False(accepted.Merge!.Normalize);

        var error = PlanError(head + "  - model: ./math\n    parameters: { weight: 0.5 }\n  - model: ./code\n    parameters: { weight: 0.8 }\n");
        Assert.Equal(DareErrorId.RecipeUnsupported, error.ErrorId);
        Assert.Contains("test.yml, line 3, column 15 (parameters.normalize)", error.Message);
        Assert.Contains("task_arithmetic", error.Message);
    }

    [Theory]
    [InlineData("parameters: { weight: 1, density: 1.5 }", "density must satisfy 0 < density <= 1", "line 6, column 39")]
    [InlineData("parameters: { weight: 1, density: 0 }", "density must satisfy", "line 6, column 39")]
    [InlineData("parameters: { weight: 1, drop_rate: 1 }", "drop_rate must satisfy 0 <= drop_rate < 1", "line 6, column 41")]
    [InlineData("parameters: { weight: -1 }", "must not be negative when normalize is true", "line 6, column 27")]
    [InlineData("parameters: { weight: 1, density: 0.5, drop_rate: 0.5 }", "density or drop_rate, not both", "line 6, column 55")]
    [InlineData("parameters: { density: 0.5 }", "has no weight", "line 5, column 12")]
    [InlineData("parameters: { weight: [{ filter: mlp, value: 1 }] }", "no weight for tensors that match none of its filters", "line 6, column 27")]
    public void Value_errors_name_the_setting(string parameters, string message, string line)
    {
        var error = PlanError($"merge_method: dare_ties\nbase_model: ./base\nparameters: {{ normalize: true }}\nmodels:\n  - model: ./math\n    {parameters}\n");
        Assert.Equal(DareErrorId.RecipeInvalid, error.ErrorId);
        Assert.Contains(message, error.Message);
        Assert.Contains($"test.yml, {line}", error.Message);
    }

    [Fact]
    public void Missing_models_architecture_mismatches_and_existing_outputs_fail_before_any_work()
    {
        var missing = PlanError("merge_method: linear\nbase_model: ./base\nmodels:\n  - model: ./nowhere\n    parameters: { weight: 1 }\n");
        Assert.Equal(DareErrorId.PathNotFound, missing.ErrorId);
        Assert.Contains("line 4, column 12 (models[0].model)", missing.Message);

        var other = Path.Combine(_models.Directory, $"wide-{Guid.NewGuid():N}");
        Dare.Engine.Safetensors.SyntheticModel.Write(other, new(HiddenSize: 64, Layers: 3, VocabSize: 256), 3, dtype: Dare.Engine.Safetensors.SafetensorsDType.F32);
        var mismatch = PlanError($"merge_method: linear\nbase_model: ./base\nmodels:\n  - model: {other}\n    parameters: {{ weight: 1 }}\n");
        Assert.Equal(DareErrorId.ArchitectureMismatch, mismatch.ErrorId);
        Assert.Contains("num_hidden_layers 3", mismatch.Message);

        var exists = PlanError("merge_method: linear\nbase_model: ./base\nmodels:\n  - model: ./math\n    parameters: { weight: 1 }\n", output: "code");
        Assert.Equal(DareErrorId.OutputExists, exists.ErrorId);

        var noOutput = PlanError("merge_method: linear\nbase_model: ./base\nmodels:\n  - model: ./math\n    parameters: { weight: 1 }\n", output: null);
        Assert.Contains("give -OutputPath or 'output: { path: <folder> }'", noOutput.Message);
    }

    [Fact]
    public void A_batch_plans_later_recipes_against_earlier_outputs()
    {
        var plan = Plan("""
            name: math-code
            merge_method: linear
            base_model: ./base
            models:
              - model: ./math
                parameters: { weight: 1 }
              - model: ./code
                parameters: { weight: 1 }
            output: { path: ./batch-never-written/math-code }
            ---
            name: final
            merge_method: task_arithmetic
            base_model: ./base
            models:
              - model: math-code
                parameters: { weight: 1 }
              - model: ./chat
                parameters: { weight: 0.5 }
            """);

        Assert.Equal(2, plan.Plans.Count);
        Assert.Empty(plan.Plans[0].ReadsOutputsOf);
        Assert.Equal(new[] { 0 }, plan.Plans[1].ReadsOutputsOf);
        Assert.Equal(Path.Combine(_models.Directory, "batch-never-written", "math-code"), plan.Outputs[0]);
        Assert.Equal(Path.Combine(_models.Directory, "out-never-written"), plan.Outputs[1]);

        var later = PlanError("name: a\nmerge_method: linear\nbase_model: ./base\nmodels: [{ model: b, parameters: { weight: 1 } }]\noutput: { path: ./x }\n---\nname: b\nmerge_method: linear\nbase_model: ./base\nmodels: [{ model: ./math, parameters: { weight: 1 } }]\n");
        Assert.Contains("written by a later recipe", later.Message);
    }

    [Theory]
    // mergekit 0.1.4: layer i of n at t = i/(n-1), t = 1 for a single layer; every tensor outside the layers at t = 0 (since its #534).
    [InlineData("model.layers.0.mlp.up_proj.weight", 2, 0.0)]
    [InlineData("model.layers.1.mlp.up_proj.weight", 2, 1.0)]
    [InlineData("model.layers.0.mlp.up_proj.weight", 1, 1.0)]
    [InlineData("model.layers.1.mlp.up_proj.weight", 5, 0.25)]
    [InlineData("model.layers.3.mlp.up_proj.weight", 5, 0.75)]
    [InlineData("model.embed_tokens.weight", 5, 0.0)]
    [InlineData("model.norm.weight", 5, 0.0)]
    [InlineData("lm_head.weight", 5, 0.0)]
    public void Gradients_interpolate_across_layers_as_mergekit_does(string tensor, int layers, double expected)
    {
        var gradient = new GradientParameter(new[] { 0.0, 1.0 });
        Assert.Equal(expected, gradient.Resolve(TensorPosition.Of(tensor, layers)), 15);
    }

    [Fact]
    public void Gradients_with_several_points_interpolate_between_neighbours()
    {
        var gradient = new GradientParameter(new[] { 0.0, 1.0, 0.5 });
        double At(int layer) => gradient.Resolve(TensorPosition.Of($"model.layers.{layer}.mlp.up_proj.weight", 5));
        Assert.Equal(new[] { 0.0, 0.5, 1.0, 0.75, 0.5 }, Enumerable.Range(0, 5).Select(At));
    }
}
