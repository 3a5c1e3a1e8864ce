using Dare.Engine.Merge;
using Dare.Engine.Recipes;
using Dare.Engine.Safetensors;
using Dare.Engine.Tests.Merge;
using Xunit;

namespace Dare.Engine.Tests.Vocabulary;

/// <summary>Layer numbers come from the architecture table by config.json; gradients put values where mergekit 0.1.4 would.</summary>
public sealed class ArchitectureTests : IDisposable
{
    private readonly TestModels _models = new();

    public void Dispose() => _models.Dispose();

    private static Dictionary<string, object?> Config(string modelType, string? architecture = null) => new()
    {
        ["model_type"] = modelType,
        ["architectures"] = architecture is null ? null : new object?[] { architecture },
    };

    [Theory]
    [InlineData("llama", "model.layers.7.self_attn.q_proj.weight", 7)]
    [InlineData("phi3", "model.layers.2.self_attn.qkv_proj.weight", 2)]
    [InlineData("gpt2", "transformer.h.3.attn.c_attn.weight", 3)]
    [InlineData("gpt2", "h.4.mlp.c_fc.weight", 4)]
    [InlineData("gpt_neox", "gpt_neox.layers.5.attention.query_key_value.weight", 5)]
    [InlineData("falcon", "transformer.h.6.self_attention.query_key_value.weight", 6)]
    [InlineData("mixtral", "model.layers.1.block_sparse_moe.experts.7.w1.weight", 1)]
    [InlineData("qwen2_moe", "model.layers.2.mlp.experts.12.gate_proj.weight", 2)]
    [InlineData("gemma3", "language_model.model.layers.8.mlp.up_proj.weight", 8)]
    [InlineData("gemma3", "model.language_model.layers.9.mlp.up_proj.weight", 9)]
    [InlineData("gemma3", "vision_tower.vision_model.encoder.layers.3.mlp.fc1.weight", null)]
    [InlineData("llava", "multi_modal_projector.linear_1.weight", null)]
    [InlineData("llama", "model.embed_tokens.weight", null)]
    [InlineData("something_new", "backbone.blocks.4.mixer.weight", 4)]
    public void Layer_numbers_follow_the_naming_scheme_of_the_configs_architecture(string modelType, string tensor, int? layer)
    {
        Assert.Equal(layer, ModelArchitecture.Of(Config(modelType)).LayerOf(tensor));
    }

    [Fact]
    public void The_architecture_is_found_by_class_name_when_model_type_is_unknown_and_is_generic_otherwise()
    {
        Assert.Equal("gpt2", ModelArchitecture.Of(Config("custom", "GPT2LMHeadModel")).Name);
        Assert.True(ModelArchitecture.Of(Config("custom", "CustomForCausalLM")).IsGeneric);
        Assert.True(ModelArchitecture.Of(null).IsGeneric);
    }

    /// <summary>mergekit 0.1.4: layer i of L at t = i/(L − 1); every tensor outside the layers at t = 0; value (1 − f)·v[k] + f·v[k+1].</summary>
    private static double GradientAt(double[] points, int? layer, int layers)
    {
        var t = layer is { } i ? (layers == 1 ? 1.0 : (double)i / (layers - 1)) : 0.0;
        var scaled = t * (points.Length - 1);
        var k = Math.Min((int)Math.Floor(scaled), points.Length - 1);
        var f = scaled - k;
        return k + 1 < points.Length ? (1 - f) * points[k] + f * points[k + 1] : points[k];
    }

    [Theory]
    [InlineData("qwen2")]
    [InlineData("phi3")]
    public void A_gradient_recipe_puts_each_value_on_the_layers_mergekit_would(string name)
    {
        var family = name == "qwen2" ? ModelFamily.Qwen2 with { Layers = 4 } : ModelFamily.Phi3 with { Layers = 4 };
        var random = new Random(11);
        var tokenizer = TestTokenizer.Llama(32);
        var (_, baseValues) = ShapedModels.Write(_models, "base", family, 32, tokenizer, random);
        var tuned = ShapedModels.FineTune(_models, "tuned", family, 32, tokenizer, baseValues, random);
        var points = new[] { 0.2, 1.0, 0.4 };
        var yaml = "merge_method: task_arithmetic\nbase_model: ./base\nmodels:\n  - model: ./tuned\n    parameters: { weight: [0.2, 1.0, 0.4] }\n";
        var plan = RecipePlanner.Plan(RecipeParser.ParseText(yaml, _models.Root), new RecipePlanOptions { OutputPath = _models.PathOf("out"), OutputDType = SafetensorsDType.F32 }).Plans[0];
        new MergeExecutor().Export(plan.Vector, plan.Export);
        var output = Checkpoint.Open(_models.PathOf("out"));
        foreach (var (tensor, _) in family.Tensors(32))
        {
            var match = System.Text.RegularExpressions.Regex.Match(tensor, @"^model\.layers\.(\d+)\.");
            int? layer = match.Success ? int.Parse(match.Groups[1].Value) : null;
            var weight = GradientAt(points, layer, 4);
            var expected = Reference.Apply(baseValues[tensor], Reference.Linear(new[] { Reference.Delta(baseValues[tensor], tuned.Values[tensor]) }, new[] { weight }, false, 1.0));
            Reference.AssertClose(expected, TestModels.ReadFloats(output, tensor), what: $"{tensor} (weight {weight})");
        }
    }

    [Fact]
    public void The_layer_count_comes_from_the_families_config_key()
    {
        var random = new Random(12);
        var (model, _) = ShapedModels.Write(_models, "phi", ModelFamily.Phi3 with { Layers = 3 }, 16, null, random);
        Assert.Equal(3, ModelLayout.Of(model).LayerCount);
        Assert.Equal("llama", ModelLayout.Of(model).Architecture.Name);
    }
}
