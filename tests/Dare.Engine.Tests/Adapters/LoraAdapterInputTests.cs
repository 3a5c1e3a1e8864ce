using System.Text.Json.Nodes;
using Dare.Engine.Adapters;
using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using Dare.Engine.Tests.Merge;
using Xunit;
using static Dare.Engine.Tests.Adapters.TestAdapters;

namespace Dare.Engine.Tests.Adapters;

/// <summary>
/// A PEFT adapter as a task vector: every module kind (linear, fan_in_fan_out, embedding, full tensors) and every
/// scaling rule (α/r, rsLoRA's α/√r, rank_pattern and alpha_pattern) against δ = s·B·A computed in float64 here.
/// </summary>
public sealed class LoraAdapterInputTests : IDisposable
{
    private const int Vocabulary = 7, Hidden = 4, QOut = 6, UpOut = 5;
    private readonly TestModels _models = new();
    private readonly Random _random = new(15);
    private readonly Dictionary<string, float[]> _base = new();
    private readonly Checkpoint _baseModel;

    public LoraAdapterInputTests()
    {
        var shapes = new (string Name, long[] Shape)[]
        {
            ("model.embed_tokens.weight", new long[] { Vocabulary, Hidden }),
            ("model.layers.0.self_attn.q_proj.weight", new long[] { QOut, Hidden }),
            ("model.layers.0.mlp.up_proj.weight", new long[] { UpOut, Hidden }),
            ("model.layers.0.attn.c_attn.weight", new long[] { Hidden, QOut }),
            ("model.norm.weight", new long[] { Hidden }),
            ("lm_head.weight", new long[] { Vocabulary, Hidden }),
        };
        foreach (var (name, shape) in shapes) _base[name] = TestModels.RandomFloats(_random, (int)shape.Aggregate(1L, (a, b) => a * b));
        _baseModel = _models.Write("base", shapes.Select(s => TestTensor.F32(s.Name, _base[s.Name], s.Shape)));
    }

    public void Dispose() => _models.Dispose();

    private float[] Random(int count) => TestModels.RandomFloats(_random, count);

    private Checkpoint Export(string adapterFolder, long chunkElements = 5) =>
        _models.Export(TaskVector.FromAdapter(_baseModel, LoraAdapter.Open(adapterFolder)), Path.GetFileName(adapterFolder) + "-merged", chunkElements: chunkElements);

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_linear_lora_gives_base_plus_s_B_A_with_rank_and_alpha_patterns(bool rsLora)
    {
        // q_proj: r = 2, α = 2 (s = 1, or 2/√2 with rsLoRA); up_proj: rank_pattern 3 and alpha_pattern 1.5 (s = 0.5, or 1.5/√3).
        var (qa, qb) = (Random(2 * Hidden), Random(QOut * 2));
        var (ua, ub) = (Bf16Exact(Random(3 * Hidden)), Bf16Exact(Random(UpOut * 3)));
        var config = Config(2, 2.0);
        config["use_rslora"] = rsLora;
        config["rank_pattern"] = new JsonObject { ["up_proj"] = 3 };
        config["alpha_pattern"] = new JsonObject { ["mlp.up_proj"] = 1.5 };
        var folder = Write(_models, "lora", config, new[]
        {
            TestTensor.F32("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", qa, 2, Hidden),
            TestTensor.F32("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", qb, QOut, 2),
            TestTensor.Bf16("base_model.model.model.layers.0.mlp.up_proj.lora_A.weight", ua, 3, Hidden),
            TestTensor.Bf16("base_model.model.model.layers.0.mlp.up_proj.lora_B.weight", ub, UpOut, 3),
        });
        var output = Export(folder);

        var qScale = rsLora ? 2.0 / Math.Sqrt(2) : 2.0 / 2;
        var upScale = rsLora ? 1.5 / Math.Sqrt(3) : 1.5 / 3;
        Assert.Equal(Apply(_base["model.layers.0.self_attn.q_proj.weight"], Product(qb, qa, QOut, 2, Hidden, qScale)),
            TestModels.ReadFloats(output, "model.layers.0.self_attn.q_proj.weight"));
        Assert.Equal(Apply(_base["model.layers.0.mlp.up_proj.weight"], Product(ub, ua, UpOut, 3, Hidden, upScale)),
            TestModels.ReadFloats(output, "model.layers.0.mlp.up_proj.weight"));
        foreach (var untouched in new[] { "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight" })
        {
            Assert.Equal(_base[untouched], TestModels.ReadFloats(output, untouched));
        }
    }

    [Fact]
    public void A_bfloat16_base_gets_base_plus_s_B_A_rounded_once_to_bfloat16()
    {
        const string name = "model.layers.0.self_attn.q_proj.weight";
        var baseValues = Bf16Exact(_base[name]);
        var bf16Base = _models.Write("bf16-base", new[] { TestTensor.Bf16(name, baseValues, QOut, Hidden) });
        var (a, b) = (Random(2 * Hidden), Random(QOut * 2));
        var folder = Write(_models, "lora-bf16", Config(2, 2.0), new[]
        {
            TestTensor.F32("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", a, 2, Hidden),
            TestTensor.F32("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", b, QOut, 2),
        });
        var output = _models.Export(TaskVector.FromAdapter(bf16Base, LoraAdapter.Open(folder)), "bf16-out", dtype: null, chunkElements: 7);
        var expected = Apply(baseValues, Product(b, a, QOut, 2, Hidden, 1.0)).Select(Bf16Bits.FromFloat).ToArray();
        Assert.Equal(expected, TestModels.ReadRaw<ushort>(output.Find(name)!));
    }

    [Fact]
    public void Fan_in_fan_out_adds_the_transpose_of_s_B_A()
    {
        var (a, b) = (Random(3 * Hidden), Random(QOut * 3));
        var config = Config(3, 6.0);
        config["fan_in_fan_out"] = true;
        var folder = Write(_models, "gpt2-lora", config, new[]
        {
            TestTensor.F32("base_model.model.model.layers.0.attn.c_attn.lora_A.weight", a, 3, Hidden),
            TestTensor.F32("base_model.model.model.layers.0.attn.c_attn.lora_B.weight", b, QOut, 3),
        });
        // The base stores c_attn as [in, out]: δ = (s·B·A)ᵀ = s·Aᵀ·Bᵀ.
        var expected = Product(Transpose(a, 3, Hidden), Transpose(b, QOut, 3), Hidden, 3, QOut, 2.0);
        Assert.Equal(Apply(_base["model.layers.0.attn.c_attn.weight"], expected), TestModels.ReadFloats(Export(folder), "model.layers.0.attn.c_attn.weight"));
    }

    [Fact]
    public void An_embedding_lora_and_a_module_to_save_give_their_deltas()
    {
        // lora_embedding_A is [r, vocabulary], lora_embedding_B [hidden, r]; δ = (s·B·A)ᵀ in the embedding's [vocabulary, hidden].
        var (a, b) = (Random(2 * Vocabulary), Random(Hidden * 2));
        var head = Random(Vocabulary * Hidden);
        var config = Config(2, 1.0);
        config["modules_to_save"] = new JsonArray("lm_head");
        var folder = Write(_models, "embed-lora", config, new[]
        {
            TestTensor.F32("base_model.model.model.embed_tokens.lora_embedding_A", a, 2, Vocabulary),
            TestTensor.F32("base_model.model.model.embed_tokens.lora_embedding_B", b, Hidden, 2),
            TestTensor.F32("base_model.model.lm_head.weight", head, Vocabulary, Hidden),
        });
        var output = Export(folder, chunkElements: 3);
        var expected = Product(Transpose(a, 2, Vocabulary), Transpose(b, Hidden, 2), Vocabulary, 2, Hidden, 0.5);
        Assert.Equal(Apply(_base["model.embed_tokens.weight"], expected), TestModels.ReadFloats(output, "model.embed_tokens.weight"));
        // A full tensor replaces the base's: δ = stored − base, and base + δ in float32.
        var baseHead = _base["lm_head.weight"];
        Assert.Equal(baseHead.Select((v, i) => v + (head[i] - v)).ToArray(), TestModels.ReadFloats(output, "lm_head.weight"));
        Reference.AssertClose(head, TestModels.ReadFloats(output, "lm_head.weight"), 1e-6);
    }

    [Fact]
    public void An_adapter_merges_with_a_fine_tune_by_ties_after_dare()
    {
        var (a, b) = (Random(2 * Hidden), Random(QOut * 2));
        var folder = Write(_models, "lora-ties", Config(2, 4.0), new[]
        {
            TestTensor.F32("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", a, 2, Hidden),
            TestTensor.F32("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", b, QOut, 2),
        });
        const string name = "model.layers.0.self_attn.q_proj.weight";
        var baseQ = _base[name];
        var tuned = TestModels.Perturb(_random, baseQ, 0.3);
        var tunedModel = _models.Write("tuned", _base.Select(p => TestTensor.F32(p.Key, p.Key == name ? tuned : p.Value, _baseModel.Find(p.Key)!.Shape)));
        var lora = TaskVector.FromAdapter(_baseModel, LoraAdapter.Open(folder)).WithDare(new DareOptions(0.5, 11, 0));
        var merged = TaskVector.Combine(new[] { lora, TaskVector.FromModels(_baseModel, tunedModel) },
            new MergeOptions(MergeMethod.Ties, new TensorParameter[] { 1.0, 0.5 }, true, 1.0, new TensorParameter[] { 1.0, 0.6 }));
        var output = _models.Export(merged, "ties-out", chunkElements: 7);

        var delta = Product(b, a, QOut, 2, Hidden, 2.0).Select(d => (float)d).ToArray();
        var key = DareMask.Key(11, 0, name);
        var threshold = DareMask.Threshold(0.5);
        var dropped = delta.Select((d, i) => DareMask.IsDropped(key, i, threshold) ? 0f : d * 2f).ToArray();
        var expected = Reference.Ties(new[] { dropped, Reference.Delta(baseQ, tuned) }, new[] { 1.0, 0.5 }, new[] { 1.0, 0.6 }, true, 1.0);
        Reference.AssertClose(Reference.Apply(baseQ, expected), TestModels.ReadFloats(output, name));
    }
}
