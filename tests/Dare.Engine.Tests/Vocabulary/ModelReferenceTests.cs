using Dare.Engine.Merge;
using Dare.Engine.Recipes;
using Dare.Engine.Safetensors;
using Dare.Engine.Tests.Merge;
using Xunit;

namespace Dare.Engine.Tests.Vocabulary;

/// <summary>Model ids resolve offline from a Hugging Face cache laid out as huggingface_hub writes it; pickle-only folders are refused; float dtypes mix.</summary>
[Collection("Environment")]
public sealed class ModelReferenceTests : IDisposable
{
    private readonly TestModels _models = new();
    private readonly string? _previous = Environment.GetEnvironmentVariable("HF_HUB_CACHE");

    public ModelReferenceTests() => Environment.SetEnvironmentVariable("HF_HUB_CACHE", _models.PathOf("hub"));

    public void Dispose()
    {
        Environment.SetEnvironmentVariable("HF_HUB_CACHE", _previous);
        _models.Dispose();
    }

    /// <summary>models--org--name/snapshots/&lt;commit&gt; holding a model, refs/&lt;branch&gt; naming the commit.</summary>
    private string Cache(string org, string name, string commit, string branch, float[] values)
    {
        var written = _models.Write($"src-{name}-{commit}", new[] { TestTensor.F32("w", values, values.Length) });
        var root = Path.Combine(_models.PathOf("hub"), $"models--{org}--{name}");
        var snapshot = Path.Combine(root, "snapshots", commit);
        Directory.CreateDirectory(snapshot);
        foreach (var file in Directory.GetFiles(written.Directory)) File.Copy(file, Path.Combine(snapshot, Path.GetFileName(file)));
        Directory.CreateDirectory(Path.Combine(root, "refs"));
        File.WriteAllText(Path.Combine(root, "refs", branch), commit);
        return snapshot;
    }

    [Fact]
    public void Org_name_and_org_name_at_revision_resolve_to_cached_snapshots()
    {
        var main = Cache("meta-llama", "Llama-2-7b-hf", "aaaa1111", "main", new[] { 1f, 2f });
        var other = Cache("meta-llama", "Llama-2-7b-hf", "bbbb2222", "v2", new[] { 3f, 4f });
        Assert.Equal(main, HubCache.Resolve("meta-llama/Llama-2-7b-hf"));
        Assert.Equal(other, HubCache.Resolve("meta-llama/Llama-2-7b-hf@v2"));
        Assert.Equal(main, HubCache.Resolve("meta-llama/Llama-2-7b-hf@aaaa1111"));
        var missing = Assert.Throws<DareException>(() => HubCache.Resolve("WizardLMTeam/WizardMath-7B-V1.0"));
        Assert.Equal(DareErrorId.PathNotFound, missing.ErrorId);
        Assert.Contains(_models.PathOf("hub"), missing.Message);
        Assert.Contains("models--WizardLMTeam--WizardMath-7B-V1.0", missing.Message);
        Assert.Equal(DareErrorId.PathNotFound, Assert.Throws<DareException>(() => HubCache.Resolve("meta-llama/Llama-2-7b-hf@v9")).ErrorId);
    }

    [Fact]
    public void A_recipe_merges_models_named_by_id_from_the_cache()
    {
        Cache("org", "base", "c0", "main", new[] { 1f, 2f, 3f });
        Cache("org", "tuned", "c1", "main", new[] { 2f, 2f, 5f });
        var yaml = "merge_method: task_arithmetic\nbase_model: org/base\nmodels:\n  - model: org/tuned@main\n    parameters: { weight: 0.5 }\n";
        var plan = RecipePlanner.Plan(RecipeParser.ParseText(yaml, _models.Root), new RecipePlanOptions { OutputPath = _models.PathOf("out") }).Plans[0];
        new MergeExecutor().Export(plan.Vector, plan.Export);
        Assert.Equal(new[] { 1.5f, 2f, 4f }, TestModels.ReadFloats(Checkpoint.Open(_models.PathOf("out")), "w"));
        var error = Assert.Throws<DareException>(() => RecipePlanner.Plan(RecipeParser.ParseText(yaml.Replace("org/tuned@main", "org/absent"), _models.Root),
            new RecipePlanOptions { OutputPath = _models.PathOf("out2") }));
        Assert.Equal(DareErrorId.PathNotFound, error.ErrorId);
        Assert.Contains("models[0].model", error.Message);
    }

    [Fact]
    public void A_folder_with_only_pickle_weights_is_refused_with_why()
    {
        var folder = _models.PathOf("pickled");
        Directory.CreateDirectory(folder);
        File.WriteAllBytes(Path.Combine(folder, "pytorch_model.bin"), new byte[] { 0x80, 0x02 });
        var error = Assert.Throws<DareException>(() => Checkpoint.Open(folder));
        Assert.Equal(DareErrorId.NoSafetensorsFound, error.ErrorId);
        Assert.Contains("pytorch_model.bin", error.Message);
        Assert.Contains("never unpickles", error.Message);
    }

    [Fact]
    public void Float16_bfloat16_and_float32_inputs_mix_freely()
    {
        var random = new Random(21);
        var @base = TestModels.RandomFloats(random, 64).Select(v => Bf16Bits.ToFloat(Bf16Bits.FromFloat(v))).ToArray();
        var half = TestModels.Perturb(random, @base).Select(v => (float)(Half)v).ToArray();
        var single = TestModels.Perturb(random, @base);
        var baseModel = _models.Write("bf16", new[] { TestTensor.Bf16("w", @base, 64) });
        var halfModel = _models.Write("f16", new[] { new TestTensor("w", SafetensorsDType.F16, new long[] { 64 }, half.Select(v => BitConverter.HalfToUInt16Bits((Half)v)).ToArray()) });
        var singleModel = _models.Write("f32", new[] { TestTensor.F32("w", single, 64) });
        var vectors = TaskVector.FromModels(baseModel, new[] { halfModel, singleModel }, TokenizerChoice.Base);
        var merged = TaskVector.Combine(vectors, new MergeOptions(MergeMethod.Linear, new TensorParameter[] { 1.0, 1.0 }, true));
        var output = _models.Export(merged, "mixed");
        var expected = Reference.Apply(@base, Reference.Linear(new[] { Reference.Delta(@base, half), Reference.Delta(@base, single) }, new[] { 1.0, 1.0 }, true, 1.0));
        Reference.AssertClose(expected, TestModels.ReadFloats(output, "w"));
    }
}
