using System.Text.Json.Nodes;
using Dare.Engine.Merge;
using Dare.Engine.Recipes;
using Dare.Engine.Safetensors;
using Dare.Engine.Tests.Merge;
using Xunit;

namespace Dare.Engine.Tests.Methods;

/// <summary>passthrough of one model and of layer slices (frankenmerges), checked against the sources on disk.</summary>
public sealed class PassthroughSlicesTests : IDisposable
{
    private readonly TestModels _models = new();

    public void Dispose() => _models.Dispose();

    /// <summary><see cref="TestModels.WriteDecoder"/> with layer_types in config.json, distinct per model and layer.</summary>
    private Checkpoint Decoder(string name, int layers, int seed) =>
        _models.WriteDecoder(name, layers, seed, $", \"layer_types\": [{string.Join(", ", Enumerable.Range(0, layers).Select(l => $"\"{name}-{l}\""))}]");

    private MergePlan Plan(string yaml, string output) =>
        RecipePlanner.Plan(RecipeParser.ParseText(yaml, _models.Root), new RecipePlanOptions { OutputPath = _models.PathOf(output) }).Plans[0];

    private Checkpoint Run(string yaml, string output)
    {
        var plan = Plan(yaml, output);
        new MergeExecutor().Export(plan.Vector, plan.Export);
        return Checkpoint.Open(_models.PathOf(output));
    }

    private const string Frankenmerge = """
        slices:
          - sources:
              - model: fa
                layer_range: [0, 3]
          - sources:
              - model: fb
                layer_range: [1, 4]
                parameters:
                  scale:
                    - filter: mlp
                      value: 0.5
                    - value: 1.0
        merge_method: passthrough
        dtype: float32
        """;

    [Fact]
    public void A_frankenmerge_stacks_the_layer_ranges_renamed_in_order_with_the_config_and_scale()
    {
        var a = Decoder("fa", 4, 1);
        var b = Decoder("fb", 5, 2);
        var output = Run(Frankenmerge, "franken");

        // Layers 0-2 are a's 0-2, layers 3-5 are b's 1-3; embed from the first slice's model, norm and lm_head from the last's.
        var expectedNames = new List<string> { "model.embed_tokens.weight" };
        for (var l = 0; l < 6; l++) expectedNames.AddRange(new[] { $"model.layers.{l}.self_attn.q_proj.weight", $"model.layers.{l}.mlp.up_proj.weight" });
        expectedNames.AddRange(new[] { "model.norm.weight", "lm_head.weight" });
        Assert.Equal(expectedNames.Order(StringComparer.Ordinal), output.Tensors.Select(t => t.Name).Order(StringComparer.Ordinal));
        Assert.Equal(TestModels.ReadFloats(a, "model.embed_tokens.weight"), TestModels.ReadFloats(output, "model.embed_tokens.weight"));
        Assert.Equal(TestModels.ReadFloats(b, "model.norm.weight"), TestModels.ReadFloats(output, "model.norm.weight"));
        Assert.Equal(TestModels.ReadFloats(b, "lm_head.weight"), TestModels.ReadFloats(output, "lm_head.weight"));
        for (var l = 0; l < 3; l++)
        {
            Assert.Equal(TestModels.ReadFloats(a, $"model.layers.{l}.mlp.up_proj.weight"), TestModels.ReadFloats(output, $"model.layers.{l}.mlp.up_proj.weight"));
            Assert.Equal(TestModels.ReadFloats(a, $"model.layers.{l}.self_attn.q_proj.weight"), TestModels.ReadFloats(output, $"model.layers.{l}.self_attn.q_proj.weight"));
        }
        for (var l = 3; l < 6; l++)
        {
            var source = l - 3 + 1;
            Assert.Equal(TestModels.ReadFloats(b, $"model.layers.{source}.self_attn.q_proj.weight"), TestModels.ReadFloats(output, $"model.layers.{l}.self_attn.q_proj.weight"));
            Assert.Equal(TestModels.ReadFloats(b, $"model.layers.{source}.mlp.up_proj.weight").Select(v => v * 0.5f), TestModels.ReadFloats(output, $"model.layers.{l}.mlp.up_proj.weight"));
            Assert.Equal(new long[] { 2, 3 }, output.Find($"model.layers.{l}.mlp.up_proj.weight")!.Shape);
        }
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(output.Directory, "config.json")))!;
        Assert.Equal(6, (int)config["num_hidden_layers"]!);
        Assert.Equal(new[] { "fa-0", "fa-1", "fa-2", "fb-1", "fb-2", "fb-3" }, config["layer_types"]!.AsArray().Select(n => (string)n!));
        Assert.Equal(3, (int)config["hidden_size"]!);
    }

    [Fact]
    public void The_written_recipe_names_the_slices_and_replays_to_identical_bytes()
    {
        Decoder("fa", 4, 1);
        Decoder("fb", 5, 2);
        var plan = Plan(Frankenmerge, "franken1");
        new MergeExecutor().Export(plan.Vector, plan.Export);
        Assert.Contains("slices:", plan.Export.RecipeYaml);
        Assert.Contains("layer_range:", plan.Export.RecipeYaml);
        var replay = Plan(plan.Export.RecipeYaml!, "franken2");
        Assert.Equal(plan.Vector.Steps, replay.Vector.Steps);
        new MergeExecutor().Export(replay.Vector, replay.Export);
        foreach (var file in new[] { "model.safetensors", "config.json", MergeExecutor.RecipeFileName })
        {
            Assert.Equal(File.ReadAllBytes(Path.Combine(_models.PathOf("franken1"), file)), File.ReadAllBytes(Path.Combine(_models.PathOf("franken2"), file)));
        }
    }

    [Theory]
    [InlineData(null)]
    [InlineData(2.5)]
    [InlineData(-1.0)]
    public void Passthrough_of_one_model_copies_it_times_scale(double? scale)
    {
        var a = Decoder("pa", 2, 3);
        var parameters = scale is null ? "" : $"\n    parameters: {{ scale: {scale.Value.ToString(System.Globalization.CultureInfo.InvariantCulture)} }}";
        var output = Run($"merge_method: passthrough\nmodels:\n  - model: pa{parameters}\n", $"p-out{scale}");
        foreach (var tensor in a.Tensors)
        {
            var expected = TestModels.ReadFloats(a, tensor.Name).Select(v => (float)(v * (scale ?? 1.0))).ToArray();
            var actual = TestModels.ReadFloats(output, tensor.Name);
            for (var j = 0; j < expected.Length; j++) Assert.Equal(expected[j], actual[j], 1e-6f);
        }
        // Without a scale the bytes are the model's own.
        if (scale is null) Assert.Equal(TestModels.ReadRaw<float>(a.Find("lm_head.weight")!), TestModels.ReadRaw<float>(output.Find("lm_head.weight")!));
        Assert.Equal(2, (int)JsonNode.Parse(File.ReadAllText(Path.Combine(output.Directory, "config.json")))!["num_hidden_layers"]!);
    }

    [Theory]
    [InlineData(null)]
    [InlineData(0.5)]
    public void A_bfloat16_model_passes_through_bit_for_bit_and_halves_exactly(double? scale)
    {
        var values = TestModels.RandomFloats(new Random(9), 50).Select(v => Bf16Bits.ToFloat(Bf16Bits.FromFloat(v))).ToArray();
        _models.Write("bf", new[] { TestTensor.Bf16("model.layers.0.w", values, 5, 10) });
        var parameters = scale is null ? "" : "\n    parameters: { scale: 0.5 }";
        var output = Run($"merge_method: passthrough\nmodels:\n  - model: bf{parameters}\nout_dtype: bfloat16\n", $"bf-out{scale}");
        var expected = values.Select(v => Bf16Bits.FromFloat(v * (float)(scale ?? 1.0))).ToArray();
        Assert.Equal(expected, TestModels.ReadRaw<ushort>(output.Find("model.layers.0.w")!));
    }

    [Fact]
    public void A_slice_merge_averages_the_sources_layer_ranges()
    {
        var a = Decoder("la", 4, 4);
        var b = Decoder("lb", 4, 5);
        const string yaml = """
            slices:
              - sources:
                  - model: la
                    layer_range: [2, 4]
                  - model: lb
                    layer_range: [0, 2]
            merge_method: linear
            parameters: { weight: 1.0 }
            dtype: float32
            """;
        var output = Run(yaml, "l-out");
        Assert.Equal(2 * 2 + 3, output.TensorCount);
        for (var l = 0; l < 2; l++)
        {
            var name = $"model.layers.{l}.mlp.up_proj.weight";
            var expected = TestModels.ReadFloats(a, $"model.layers.{l + 2}.mlp.up_proj.weight").Zip(TestModels.ReadFloats(b, name), (x, y) => (x + y) / 2f).ToArray();
            var actual = TestModels.ReadFloats(output, name);
            for (var j = 0; j < expected.Length; j++) Assert.Equal(expected[j], actual[j], 1e-6f);
        }
    }

    [Fact]
    public void A_frankenmerge_never_writes_over_one_of_its_source_models()
    {
        Decoder("fa", 4, 1);
        Decoder("fb", 5, 2);
        var before = File.ReadAllBytes(Path.Combine(_models.PathOf("fb"), "model.safetensors"));
        // The recipe names the folder as a source, so planning refuses; the executor refuses too, for a plan made elsewhere.
        var planned = Assert.Throws<DareException>(() => RecipePlanner.Plan(RecipeParser.ParseText(Frankenmerge, _models.Root), new RecipePlanOptions { OutputPath = _models.PathOf("fb"), Force = true }));
        Assert.Contains("also this recipe's output folder", planned.Message);
        var plan = Plan(Frankenmerge, "elsewhere");
        var error = Assert.Throws<DareException>(() => new MergeExecutor().Export(plan.Vector, new ExportOptions { Destination = _models.PathOf("fb"), Force = true }));
        Assert.Equal(DareErrorId.OutputNotReplaceable, error.ErrorId);
        Assert.Equal(before, File.ReadAllBytes(Path.Combine(_models.PathOf("fb"), "model.safetensors")));
    }

    [Fact]
    public void A_setting_in_a_slice_source_the_method_does_not_take_is_a_warning()
    {
        Decoder("wa", 2, 8);
        var plan = Plan("slices:\n  - sources:\n      - model: wa\n        layer_range: [0, 2]\n        parameters: { weight: 2 }\nmerge_method: passthrough\n", "w-out");
        Assert.Contains(plan.Warnings, w => w.Contains("has no effect with merge_method passthrough", StringComparison.Ordinal));
    }

    [Theory]
    [InlineData("slices:\n  - sources:\n      - model: ea\n        layer_range: [0, 9]\nmerge_method: passthrough\n", DareErrorId.LayerRangeInvalid, "which has 3 layers")]
    [InlineData("slices:\n  - sources:\n      - model: ea\n        layer_range: [2, 1]\nmerge_method: passthrough\n", DareErrorId.LayerRangeInvalid, "is not a layer range")]
    [InlineData("slices:\n  - sources:\n      - model: ea\n        layer_range: [0, 2]\n      - model: eb\n        layer_range: [0, 2]\nmerge_method: passthrough\n", DareErrorId.RecipeInvalid, "exactly one source")]
    [InlineData("merge_method: passthrough\nmodels:\n  - model: ea\n  - model: eb\n", DareErrorId.RecipeInvalid, "exactly one model")]
    [InlineData("slices:\n  - sources:\n      - model: ea\n        layer_range: [0, 2]\n      - model: eb\n        layer_range: [0, 3]\nmerge_method: linear\n", DareErrorId.LayerRangeInvalid, "same number of layers")]
    public void Bad_slices_are_refused_naming_the_place_in_the_recipe(string yaml, DareErrorId id, string message)
    {
        Decoder("ea", 3, 6);
        Decoder("eb", 3, 7);
        var error = Assert.Throws<DareException>(() => Plan(yaml, "e-out"));
        Assert.Equal(id, error.ErrorId);
        Assert.Contains(message, error.Message);
        Assert.Contains("line", error.Message);
        Assert.False(Directory.Exists(_models.PathOf("e-out")));
    }
}
