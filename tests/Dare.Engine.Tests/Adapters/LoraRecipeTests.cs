using Dare.Engine.Adapters;
using Dare.Engine.Merge;
using Dare.Engine.Recipes;
using Dare.Engine.Safetensors;
using Dare.Engine.Tests.Merge;
using Xunit;
using static Dare.Engine.Tests.Adapters.TestAdapters;

namespace Dare.Engine.Tests.Adapters;

/// <summary>Adapters in recipes: mergekit's model: base+adapter and Dare's lora: key give the adapter's δ; the written recipe replays.</summary>
public sealed class LoraRecipeTests : IDisposable
{
    private const string Q = "model.layers.0.self_attn.q_proj.weight";
    private readonly TestModels _models = new();
    private readonly float[] _base, _tuned, _a, _b;

    public LoraRecipeTests()
    {
        var random = new Random(3);
        _base = TestModels.RandomFloats(random, 12);
        _tuned = TestModels.Perturb(random, _base, 0.2);
        _a = TestModels.RandomFloats(random, 2 * 4);
        _b = TestModels.RandomFloats(random, 3 * 2);
        _models.Write("base", new[] { TestTensor.F32(Q, _base, 3, 4) });
        _models.Write("tuned", new[] { TestTensor.F32(Q, _tuned, 3, 4) });
        Write(_models, "lora+math", Config(2, 4), new[]
        {
            TestTensor.F32("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", _a, 2, 4),
            TestTensor.F32("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", _b, 3, 2),
        });
        Directory.Move(_models.PathOf("lora+math"), _models.PathOf("lora-math"));
    }

    public void Dispose() => _models.Dispose();

    private BatchPlan Plan(string yaml) =>
        RecipePlanner.Plan(RecipeParser.ParseText(yaml, _models.Root, "test.yml"), new RecipePlanOptions { OutputPath = _models.PathOf("out"), DefaultSeed = 5 });

    private float[] Run(string yaml)
    {
        var plan = Plan(yaml).Plans[0];
        new MergeExecutor().Export(plan.Vector, plan.Export);
        return TestModels.ReadFloats(Checkpoint.Open(_models.PathOf("out")), Q);
    }

    private double[] LoraDelta => Product(_b, _a, 3, 2, 4, 2.0);

    [Theory]
    [InlineData("- model: ./base+./lora-math")]
    [InlineData("- model: ./base\n    lora: ./lora-math")]
    public void An_adapter_entry_is_the_adapters_delta_against_the_base(string entry)
    {
        var merged = Run($"merge_method: task_arithmetic\nbase_model: ./base\nmodels:\n  {entry}\n    parameters: {{ weight: 0.5 }}\n  - model: ./tuned\n    parameters: {{ weight: 1 }}\n");
        var lora = LoraDelta;
        var expected = _base.Select((b, i) => (float)(b + (0.5 * (float)lora[i] + 1.0 * (_tuned[i] - b)))).ToArray();
        Reference.AssertClose(expected, merged, 1e-6);
    }

    [Fact]
    public void The_written_recipe_names_the_adapter_and_replays_to_the_same_plan()
    {
        var vector = TaskVector.FromAdapter(Checkpoint.Open(_models.PathOf("base")), LoraAdapter.Open(_models.PathOf("lora-math")));
        var yaml = RecipeWriter.ToYaml(vector);
        Assert.Contains($"{_models.PathOf("base")}+{_models.PathOf("lora-math")}", yaml);
        var replayed = Plan(yaml).Plans[0].Vector;
        Assert.Equal(_models.PathOf("lora-math"), replayed.LoraAdapters.Single().Path);
        Assert.Equal(Reference.ToFloats(LoraDelta).Select((d, i) => _base[i] + d), Run(yaml));
    }

    [Fact]
    public void An_adapter_on_a_model_other_than_the_base_is_refused_at_its_line()
    {
        var error = Assert.Throws<DareException>(() => Plan("merge_method: task_arithmetic\nbase_model: ./base\nmodels:\n  - model: ./tuned+./lora-math\n"));
        Assert.Equal(DareErrorId.RecipeUnsupported, error.ErrorId);
        Assert.Contains("line 4", error.Message);
    }

    [Fact]
    public void An_adapter_folder_as_a_plain_model_is_refused()
    {
        var error = Assert.Throws<DareException>(() => Plan("merge_method: task_arithmetic\nbase_model: ./base\nmodels:\n  - model: ./lora-math\n"));
        Assert.Equal(DareErrorId.AdapterInvalid, error.ErrorId);
        Assert.Contains("model: <base>+./lora-math", error.Message);
    }
}
