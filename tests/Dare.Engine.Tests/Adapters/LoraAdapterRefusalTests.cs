using System.Text.Json.Nodes;
using Dare.Engine.Adapters;
using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using Dare.Engine.Tests.Merge;
using Xunit;
using static Dare.Engine.Tests.Adapters.TestAdapters;

namespace Dare.Engine.Tests.Adapters;

/// <summary>Adapters Dare cannot read correctly are refused with a stable id and a message naming the key, file or tensor.</summary>
public sealed class LoraAdapterRefusalTests : IDisposable
{
    private readonly TestModels _models = new();
    private readonly Checkpoint _base;

    public LoraAdapterRefusalTests() =>
        _base = _models.Write("base", new[] { TestTensor.F32("model.q_proj.weight", new float[12], 3, 4), TestTensor.I64("model.ids", new long[] { 1, 2 }) });

    public void Dispose() => _models.Dispose();

    private static TestTensor[] Factors(int r = 2, int outFeatures = 3, int inFeatures = 4, string module = "model.q_proj") => new[]
    {
        TestTensor.F32($"base_model.model.{module}.lora_A.weight", new float[r * inFeatures], r, inFeatures),
        TestTensor.F32($"base_model.model.{module}.lora_B.weight", new float[outFeatures * r], outFeatures, r),
    };

    private DareException Refused(JsonObject config, TestTensor[] tensors, string name = "bad")
    {
        var folder = Write(_models, name, config, tensors);
        return Assert.Throws<DareException>(() => TaskVector.FromAdapter(_base, LoraAdapter.Open(folder)));
    }

    [Theory]
    [InlineData("use_dora", true)]
    [InlineData("lora_bias", true)]
    [InlineData("peft_type", "PREFIX_TUNING")]
    [InlineData("trainable_token_indices", 3)]
    public void An_adapter_kind_Dare_does_not_compute_is_refused_naming_the_key(string key, object value)
    {
        var config = Config(2, 2);
        config[key] = JsonValue.Create(value);
        var error = Refused(config, Factors());
        Assert.Equal(DareErrorId.AdapterUnsupported, error.ErrorId);
        Assert.Contains($"'{key}'", error.Message);
    }

    [Fact]
    public void A_DoRA_magnitude_vector_is_refused_naming_the_tensor()
    {
        var tensors = Factors().Append(TestTensor.F32("base_model.model.model.q_proj.lora_magnitude_vector", new float[3], 3)).ToArray();
        var error = Refused(Config(2, 2), tensors);
        Assert.Equal(DareErrorId.AdapterUnsupported, error.ErrorId);
        Assert.Equal("base_model.model.model.q_proj.lora_magnitude_vector", error.TensorName);
    }

    [Fact]
    public void Pickled_weights_are_refused_and_never_loaded()
    {
        var folder = _models.PathOf("pickled");
        Directory.CreateDirectory(folder);
        File.WriteAllText(Path.Combine(folder, "adapter_config.json"), Config(2, 2).ToJsonString());
        File.WriteAllBytes(Path.Combine(folder, "adapter_model.bin"), new byte[] { 0x80, 0x02 });
        var error = Assert.Throws<DareException>(() => LoraAdapter.Open(folder));
        Assert.Equal(DareErrorId.AdapterUnsupported, error.ErrorId);
        Assert.EndsWith("adapter_model.bin", error.FilePath);
    }

    [Fact]
    public void Factors_that_do_not_fit_the_base_tensor_are_a_shape_mismatch()
    {
        var error = Refused(Config(2, 2), Factors(outFeatures: 5));
        Assert.Equal(DareErrorId.TensorShapeMismatch, error.ErrorId);
        Assert.Contains("model.q_proj.weight", error.Message);
    }

    [Fact]
    public void A_module_the_base_lacks_is_refused_naming_it()
    {
        var error = Refused(Config(2, 2), Factors(module: "model.v_proj"));
        Assert.Equal(DareErrorId.AdapterInvalid, error.ErrorId);
        Assert.Contains("model.v_proj.weight", error.Message);
    }

    [Fact]
    public void Factors_whose_rank_is_not_the_configs_r_are_refused()
    {
        var error = Refused(Config(4, 2), Factors(r: 2));
        Assert.Equal(DareErrorId.AdapterInvalid, error.ErrorId);
        Assert.Contains("r = 4", error.Message);
    }

    [Fact]
    public void An_A_factor_without_its_B_is_refused()
    {
        var error = Refused(Config(2, 2), Factors().Take(1).ToArray());
        Assert.Equal(DareErrorId.AdapterInvalid, error.ErrorId);
        Assert.Contains("not its B factor", error.Message);
    }
}
