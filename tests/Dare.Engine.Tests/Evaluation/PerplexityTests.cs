using System.Text.Json.Nodes;
using Dare.Engine.Evaluation;
using Dare.Engine.Safetensors;
using Dare.Engine.Tests.Merge;
using TorchSharp;
using Xunit;

namespace Dare.Engine.Tests.Evaluation;

/// <summary>The TorchSharp forward pass and perplexity against <see cref="ReferenceLlama"/> and hand cases.</summary>
public sealed class PerplexityTests : IDisposable
{
    private readonly TestModels _models = new();

    public void Dispose() => _models.Dispose();

    private static long LiveTensors => DisposeScopeManager.Statistics.TensorStatistics.ThreadTotalLiveCount;

    /// <summary>A random tiny model written as F32 safetensors with its config.json; returns it and its reference.</summary>
    private (Checkpoint Model, ReferenceLlama Reference) TinyModel(string name, string modelType = "llama", bool biases = false, bool tied = false,
        double linearFactor = 1, int seed = 1, Action<JsonObject>? editConfig = null, Func<string, float[], float[]>? editWeight = null)
    {
        const int hidden = 16, intermediate = 24, heads = 4, kvHeads = 2, layers = 2, vocab = 11;
        var random = new Random(seed);
        float[] Random(int count, double scale, double offset = 0) => Enumerable.Range(0, count).Select(_ => (float)(offset + scale * (random.NextDouble() * 2 - 1))).ToArray();
        var shapes = new List<(string Name, long[] Shape)> { ("model.embed_tokens.weight", new long[] { vocab, hidden }) };
        for (var l = 0; l < layers; l++)
        {
            var p = $"model.layers.{l}.";
            shapes.Add((p + "input_layernorm.weight", new long[] { hidden }));
            shapes.Add((p + "self_attn.q_proj.weight", new long[] { heads * 4, hidden }));
            shapes.Add((p + "self_attn.k_proj.weight", new long[] { kvHeads * 4, hidden }));
            shapes.Add((p + "self_attn.v_proj.weight", new long[] { kvHeads * 4, hidden }));
            if (biases)
            {
                shapes.Add((p + "self_attn.q_proj.bias", new long[] { heads * 4 }));
                shapes.Add((p + "self_attn.k_proj.bias", new long[] { kvHeads * 4 }));
                shapes.Add((p + "self_attn.v_proj.bias", new long[] { kvHeads * 4 }));
            }
            shapes.Add((p + "self_attn.o_proj.weight", new long[] { hidden, heads * 4 }));
            shapes.Add((p + "post_attention_layernorm.weight", new long[] { hidden }));
            shapes.Add((p + "mlp.gate_proj.weight", new long[] { intermediate, hidden }));
            shapes.Add((p + "mlp.up_proj.weight", new long[] { intermediate, hidden }));
            shapes.Add((p + "mlp.down_proj.weight", new long[] { hidden, intermediate }));
        }
        shapes.Add(("model.norm.weight", new long[] { hidden }));
        if (!tied) shapes.Add(("lm_head.weight", new long[] { vocab, hidden }));
        var weights = shapes.ToDictionary(s => s.Name, s =>
        {
            var count = (int)s.Shape.Aggregate(1L, (a, b) => a * b);
            var values = s.Name.EndsWith("norm.weight") ? Random(count, 0.2, 1) : Random(count, 0.5);
            return editWeight?.Invoke(s.Name, values) ?? values;
        });
        var model = _models.Write(name, shapes.Select(s => TestTensor.F32(s.Name, weights[s.Name], s.Shape)));
        var config = new JsonObject
        {
            ["model_type"] = modelType, ["hidden_size"] = hidden, ["intermediate_size"] = intermediate, ["num_attention_heads"] = heads,
            ["num_key_value_heads"] = kvHeads, ["num_hidden_layers"] = layers, ["vocab_size"] = vocab, ["rms_norm_eps"] = 1e-5,
            ["rope_theta"] = 500.0, ["tie_word_embeddings"] = tied, ["max_position_embeddings"] = 64,
            ["rope_scaling"] = linearFactor == 1 ? null : new JsonObject { ["type"] = "linear", ["factor"] = linearFactor },
        };
        editConfig?.Invoke(config);
        File.WriteAllText(Path.Combine(model.Path, "config.json"), config.ToJsonString());
        var reference = new ReferenceLlama
        {
            Hidden = hidden, Intermediate = intermediate, Heads = heads, KvHeads = kvHeads, Layers = layers, Vocab = vocab,
            Eps = 1e-5, Theta = 500, LinearFactor = linearFactor, Tied = tied, W = weights,
        };
        return (Checkpoint.Open(model.Path), reference);
    }

    private static readonly int[] Text = { 1, 5, 9, 2, 2, 7, 10, 0, 3, 4, 8, 6, 1 };

    [Theory]
    [InlineData("llama", false, false, 1.0)]
    [InlineData("qwen2", true, true, 1.0)]
    [InlineData("mistral", false, false, 2.5)]
    public void Logits_equal_a_plain_reimplementation_of_the_forward_pass(string modelType, bool biases, bool tied, double linearFactor)
    {
        var (model, reference) = TinyModel(modelType, modelType, biases, tied, linearFactor);
        var expected = reference.Logits(Text);
        var actual = PerplexityEvaluator.Logits(model, Text, SafetensorsDType.F32);
        Assert.Equal(Text.Length * reference.Vocab, actual.Length);
        for (var t = 0; t < Text.Length; t++)
            for (var v = 0; v < reference.Vocab; v++)
                Assert.True(Math.Abs(expected[t][v] - actual[t * reference.Vocab + v]) < 1e-4, $"logit [{t},{v}]: {actual[t * reference.Vocab + v]} vs {expected[t][v]}");
    }

    [Fact]
    public void Bfloat16_logits_stay_close_to_the_reference()
    {
        var (model, reference) = TinyModel("bf16");
        var expected = reference.Logits(Text);
        var actual = PerplexityEvaluator.Logits(model, Text, SafetensorsDType.BF16);
        var worst = Enumerable.Range(0, actual.Length).Max(i => Math.Abs(expected[i / reference.Vocab][i % reference.Vocab] - actual[i]));
        Assert.InRange(worst, 0, 0.15); // bf16 keeps 8 mantissa bits through two layers
    }

    [Fact]
    public void Perplexity_over_windows_equals_the_reference_nll_and_leaks_no_tensors()
    {
        var (model, reference) = TinyModel("windows", "qwen2", biases: true);
        var (nll, scored) = reference.WindowNll(Text, context: 5); // windows of 5, 5 and 3 tokens
        var live = LiveTensors;
        var result = PerplexityEvaluator.Measure(model, Text, new PerplexityOptions { ContextLength = 5, ActivationBytes = 1 });
        Assert.Equal(live, LiveTensors);
        Assert.Equal(3, result.Windows);
        Assert.Equal(scored, result.Tokens);
        Assert.Equal(Text.Length - 3, result.Tokens);
        Assert.Equal(nll / scored, result.NegativeLogLikelihood, 5);
        Assert.Equal(Math.Exp(nll / scored), result.Perplexity, 4);
    }

    [Fact]
    public void Max_tokens_keeps_only_the_start_of_the_text()
    {
        var (model, reference) = TinyModel("max");
        var (nll, scored) = reference.WindowNll(Text.Take(7).ToArray(), context: 64);
        var result = PerplexityEvaluator.Measure(model, Text, new PerplexityOptions { MaxTokens = 7 });
        Assert.Equal(6, result.Tokens);
        Assert.Equal(1, result.Windows);
        Assert.Equal(nll / scored, result.NegativeLogLikelihood, 5);
    }

    [Fact]
    public void A_model_whose_logits_are_uniform_has_perplexity_equal_to_its_vocabulary_size()
    {
        var (model, _) = TinyModel("uniform", editWeight: (name, values) => name == "lm_head.weight" ? new float[values.Length] : null!);
        var result = PerplexityEvaluator.Measure(model, Text, new PerplexityOptions());
        Assert.Equal(Math.Log(11), result.NegativeLogLikelihood, 6);
        Assert.Equal(11, result.Perplexity, 4);
    }

    [Theory]
    [InlineData("gpt_neox", null, "model_type 'gpt_neox'")]
    [InlineData("llama", "dynamic", "rope_scaling type 'dynamic'")]
    public void Unsupported_architectures_and_rope_scalings_are_refused_by_name(string modelType, string? rope, string message)
    {
        var (model, _) = TinyModel("unsupported", modelType,
            editConfig: c => { if (rope is not null) c["rope_scaling"] = new JsonObject { ["type"] = rope, ["factor"] = 2.0 }; });
        var error = Assert.Throws<DareException>(() => PerplexityEvaluator.Measure(model, Text, new PerplexityOptions()));
        Assert.Equal(DareErrorId.ArchitectureUnsupported, error.ErrorId);
        Assert.Contains(message, error.Message);
    }

    [Fact]
    public void A_context_longer_than_the_model_allows_and_a_one_token_text_are_refused()
    {
        var (model, _) = TinyModel("limits");
        Assert.Equal(DareErrorId.InvalidParameter, Assert.Throws<DareException>(() => PerplexityEvaluator.Measure(model, Text, new PerplexityOptions { ContextLength = 65 })).ErrorId);
        Assert.Equal(DareErrorId.TextTooShort, Assert.Throws<DareException>(() => PerplexityEvaluator.Measure(model, new[] { 3 }, new PerplexityOptions())).ErrorId);
    }

    [Fact]
    public void Text_files_are_tokenised_with_the_model_tokenizer_json()
    {
        var (model, reference) = TinyModel("tokenised");
        File.WriteAllText(Path.Combine(model.Path, "tokenizer.json"), SyntheticTokenizer.Json(11).ToJsonString());
        var text = Path.Combine(_models.Root, "text.txt");
        File.WriteAllText(text, "abc cab\nhgfed");
        var ids = "abccabhgfed".Select(c => SyntheticTokenizer.Id(c, 11)).ToArray(); // a=3, b=4, ... h=10: whitespace drops out
        Assert.Equal(new[] { 3, 4, 5, 5, 3, 4, 10, 9, 8, 7, 6 }, ids);
        var (nll, scored) = reference.WindowNll(ids, 64);
        var result = PerplexityEvaluator.Measure(model, text, new PerplexityOptions());
        Assert.Equal(scored, result.Tokens);
        Assert.Equal(nll / scored, result.NegativeLogLikelihood, 5);
        Assert.Equal(Path.GetFullPath(text), result.TextPath);
    }

    [Fact]
    public void Token_ids_beyond_the_embedding_are_refused_naming_the_position()
    {
        var (model, _) = TinyModel("outside");
        var error = Assert.Throws<DareException>(() => PerplexityEvaluator.Measure(model, new[] { 1, 2, 11, 3 }, new PerplexityOptions()));
        Assert.Equal(DareErrorId.TokenizerUnsupported, error.ErrorId);
        Assert.Contains("Token 2 of the text has id 11", error.Message);
    }

    [Fact]
    public void A_model_without_tokenizer_files_is_refused_with_TokenizerNotFound()
    {
        var (model, _) = TinyModel("untokenised");
        var text = Path.Combine(_models.Root, "text.txt");
        File.WriteAllText(text, "abc");
        Assert.Equal(DareErrorId.TokenizerNotFound, Assert.Throws<DareException>(() => PerplexityEvaluator.Measure(model, text, new PerplexityOptions())).ErrorId);
    }
}
