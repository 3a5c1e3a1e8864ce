using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using Xunit;

namespace Dare.Engine.Tests.Merge;

/// <summary>Per-tensor parameters: constants, filter rules and layer gradients, alone and inside a merge.</summary>
public sealed class TensorParameterTests
{
    [Theory]
    [InlineData("model.layers.12.mlp.up_proj.weight", 12)]
    [InlineData("transformer.h.3.attn.c_attn.weight", 3)]
    [InlineData("encoder.layer.0.output.dense.weight", 0)]
    [InlineData("layers.7.w", 7)]
    [InlineData("model.embed_tokens.weight", null)]
    [InlineData("model.norm.weight", null)]
    public void Layer_index_is_found_in_common_tensor_names(string name, int? layer)
    {
        Assert.Equal(layer, TensorPosition.Of(name, 32).LayerIndex);
    }

    [Fact]
    public void First_matching_rule_wins_and_the_default_applies_otherwise()
    {
        var parameter = new RuleParameter(new[]
        {
            new ParameterRule("self_attn", 0.1),
            new ParameterRule("*mlp.up*", 0.2, FilterMatch.Wildcard),
            new ParameterRule("mlp", 0.3),
        }, 0.9);
        double At(string name) => parameter.Resolve(TensorPosition.Of(name, 4));
        Assert.Equal(0.1, At("model.layers.0.self_attn.q_proj.weight"));
        Assert.Equal(0.2, At("model.layers.0.mlp.up_proj.weight"));
        Assert.Equal(0.3, At("model.layers.0.mlp.down_proj.weight"));
        Assert.Equal(0.9, At("lm_head.weight"));
        // A wildcard matches the whole name, a substring filter any part of it.
        Assert.Equal(0.9, new RuleParameter(new[] { new ParameterRule("mlp", 0.5, FilterMatch.Wildcard) }, 0.9).Resolve(TensorPosition.Of("a.mlp.b", 1)));
        Assert.Equal(new[] { 0.1, 0.2, 0.3, 0.9 }, parameter.PossibleValues.Order());
    }

    [Fact]
    public void Gradient_interpolates_linearly_across_layers()
    {
        var gradient = new GradientParameter(new[] { 0.0, 1.0, 0.0 });
        double At(string name) => gradient.Resolve(TensorPosition.Of(name, 5));
        // Layers 0..4 map to t = 0, 0.25, 0.5, 0.75, 1 over the points (0, 1, 0).
        Assert.Equal(0.0, At("model.layers.0.w"));
        Assert.Equal(0.5, At("model.layers.1.w"));
        Assert.Equal(1.0, At("model.layers.2.w"));
        Assert.Equal(0.5, At("model.layers.3.w"));
        Assert.Equal(0.0, At("model.layers.4.w"));
        // Outside the layers every tensor takes the first point (mergekit 0.1.4, t = 0); the pre-#534 rule on request puts the head and final norm last.
        Assert.Equal(0.0, At("model.embed_tokens.weight"));
        Assert.Equal(0.2, new GradientParameter(new[] { 0.2, 0.8 }).Resolve(TensorPosition.Of("model.embed_tokens.weight", 5)), 12);
        Assert.Equal(0.2, new GradientParameter(new[] { 0.2, 0.8 }).Resolve(TensorPosition.Of("lm_head.weight", 5)), 12);
        var legacy = new GradientParameter(new[] { 0.2, 0.8 }) { OutsideLayers = GradientOutsideLayers.EmbeddingsFirstOthersLast };
        Assert.Equal(0.2, legacy.Resolve(TensorPosition.Of("model.embed_tokens.weight", 5)), 12);
        Assert.Equal(0.8, legacy.Resolve(TensorPosition.Of("lm_head.weight", 5)), 12);
        Assert.Equal(0.8, legacy.Resolve(TensorPosition.Of("model.norm.weight", 5)), 12);
        Assert.Equal(0.4, new GradientParameter(new[] { 0.4 }).Resolve(TensorPosition.Of("model.layers.3.w", 5)));
    }

    [Fact]
    public void Per_tensor_weights_and_drop_rates_apply_to_each_tensor_in_a_merge()
    {
        using var models = new TestModels();
        var random = new Random(12);
        string[] names = { "model.embed_tokens.weight", "model.layers.0.w", "model.layers.1.w", "lm_head.weight" };
        var @base = names.ToDictionary(n => n, _ => TestModels.RandomFloats(random, 50));
        var tuned = new[] { 0, 1 }.Select(_ => names.ToDictionary(n => n, n => TestModels.Perturb(random, @base[n]))).ToArray();
        var baseCheckpoint = models.Write("base", names.Select(n => TestTensor.F32(n, @base[n])));
        var vectors = tuned.Select((t, i) => TaskVector.FromModels(baseCheckpoint, models.Write($"t{i}", names.Select(n => TestTensor.F32(n, t[n]))))).ToList();

        // Weights: model 0 follows a gradient 1 -> 3 over the 2 layers (t = 0 outside them); model 1 has 0.5 on lm_head and 1 elsewhere.
        // Model 1 is DAREd only on layer 1 (p = 0.5; 0 elsewhere leaves it untouched).
        var weight0 = new GradientParameter(new[] { 1.0, 3.0 });
        var weight1 = new RuleParameter(new[] { new ParameterRule("lm_head", 0.5) }, 1.0);
        var drop1 = new RuleParameter(new[] { new ParameterRule("layers.1.", 0.5) }, 0.0);
        var merged = TaskVector.Combine(
            new[] { vectors[0], vectors[1].WithDare(new DareOptions(drop1, 9, 1)) },
            new MergeOptions(MergeMethod.Linear, new TensorParameter[] { weight0, weight1 }, Normalize: false));
        var output = models.Export(merged, "out", deltaOnly: true);

        var expectedWeights = new Dictionary<string, (double, double)>
        {
            ["model.embed_tokens.weight"] = (1, 1),
            ["model.layers.0.w"] = (1, 1),
            ["model.layers.1.w"] = (3, 1),
            ["lm_head.weight"] = (1, 0.5),
        };
        foreach (var name in names)
        {
            var d0 = Reference.Delta(@base[name], tuned[0][name]);
            var d1 = Reference.Delta(@base[name], tuned[1][name]);
            if (name == "model.layers.1.w")
            {
                var key = DareMask.Key(9, 1, name);
                var threshold = DareMask.Threshold(0.5);
                for (var j = 0; j < d1.Length; j++) d1[j] = DareMask.IsDropped(key, j, threshold) ? 0f : d1[j] * 2f;
            }
            var (w0, w1) = expectedWeights[name];
            var expected = Reference.ToFloats(Reference.Linear(new[] { d0, d1 }, new[] { w0, w1 }, false, 1.0));
            Reference.AssertClose(expected, TestModels.ReadFloats(output, name), what: name);
        }
    }
}
