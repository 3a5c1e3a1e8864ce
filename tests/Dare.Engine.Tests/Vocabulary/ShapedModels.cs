using System.Text.Json.Nodes;
using Dare.Engine.Safetensors;
using Dare.Engine.Tests.Merge;

namespace Dare.Engine.Tests.Vocabulary;

/// <summary>
/// A model family as its config.json describes it (Llama-2, Mistral, Qwen2, Gemma 2, Phi-3, scaled down): the
/// config keys, the tensor names and shapes it implies, and a tokenizer.json in the Hugging Face layout (a BPE vocab
/// object plus added_tokens).
/// </summary>
public sealed record ModelFamily(string ModelType, string Class, int Hidden, int Layers, int Intermediate, int Heads, int KvHeads, bool Tied,
    bool QkvBias = false, bool FusedProjections = false, bool SandwichNorms = false)
{
    public static readonly ModelFamily Llama2 = new("llama", "LlamaForCausalLM", 8, 2, 12, 2, 2, false);
    public static readonly ModelFamily Mistral = new("mistral", "MistralForCausalLM", 8, 2, 12, 4, 2, false);
    public static readonly ModelFamily Qwen2 = new("qwen2", "Qwen2ForCausalLM", 8, 3, 12, 4, 2, false, QkvBias: true);
    public static readonly ModelFamily Gemma2 = new("gemma2", "Gemma2ForCausalLM", 8, 2, 12, 2, 1, true, SandwichNorms: true);
    public static readonly ModelFamily Phi3 = new("phi3", "Phi3ForCausalLM", 8, 3, 12, 2, 2, false, FusedProjections: true);

    /// <summary>(name, shape) of every tensor, in the order the family's checkpoints store them.</summary>
    public IEnumerable<(string Name, long[] Shape)> Tensors(int rows)
    {
        var headDim = Hidden / Heads;
        yield return ("model.embed_tokens.weight", new long[] { rows, Hidden });
        for (var layer = 0; layer < Layers; layer++)
        {
            var p = $"model.layers.{layer}.";
            yield return (p + "input_layernorm.weight", new long[] { Hidden });
            if (FusedProjections)
            {
                yield return (p + "self_attn.qkv_proj.weight", new long[] { Hidden + 2 * KvHeads * headDim, Hidden });
                yield return (p + "mlp.gate_up_proj.weight", new long[] { 2 * Intermediate, Hidden });
            }
            else
            {
                yield return (p + "self_attn.q_proj.weight", new long[] { Hidden, Hidden });
                yield return (p + "self_attn.k_proj.weight", new long[] { KvHeads * headDim, Hidden });
                yield return (p + "self_attn.v_proj.weight", new long[] { KvHeads * headDim, Hidden });
                if (QkvBias)
                {
                    yield return (p + "self_attn.q_proj.bias", new long[] { Hidden });
                    yield return (p + "self_attn.k_proj.bias", new long[] { KvHeads * headDim });
                    yield return (p + "self_attn.v_proj.bias", new long[] { KvHeads * headDim });
                }
                yield return (p + "mlp.gate_proj.weight", new long[] { Intermediate, Hidden });
                yield return (p + "mlp.up_proj.weight", new long[] { Intermediate, Hidden });
            }
            yield return (p + "self_attn.o_proj.weight", new long[] { Hidden, Hidden });
            yield return (p + "mlp.down_proj.weight", new long[] { Hidden, Intermediate });
            yield return (p + "post_attention_layernorm.weight", new long[] { Hidden });
            if (SandwichNorms)
            {
                yield return (p + "pre_feedforward_layernorm.weight", new long[] { Hidden });
                yield return (p + "post_feedforward_layernorm.weight", new long[] { Hidden });
            }
        }
        yield return ("model.norm.weight", new long[] { Hidden });
        if (!Tied) yield return ("lm_head.weight", new long[] { rows, Hidden });
    }

    public JsonObject Config(int rows) => new()
    {
        ["architectures"] = new JsonArray(Class),
        ["model_type"] = ModelType,
        ["hidden_size"] = Hidden,
        ["intermediate_size"] = Intermediate,
        ["num_hidden_layers"] = Layers,
        ["num_attention_heads"] = Heads,
        ["num_key_value_heads"] = KvHeads,
        ["vocab_size"] = rows,
        ["tie_word_embeddings"] = Tied,
        ["torch_dtype"] = "float32",
    };
}

/// <summary>A tokenizer: <see cref="Tokens"/>[id] is the token with that id (null: a padding row without a token); Added lists the ids in added_tokens.</summary>
public sealed record TestTokenizer(string?[] Tokens, IReadOnlySet<int> Added)
{
    /// <summary>Llama-2's layout: &lt;unk&gt;, &lt;s&gt;, &lt;/s&gt; (added, special) then ordinary pieces t3 … t(n−1).</summary>
    public static TestTokenizer Llama(int count) =>
        new(Enumerable.Range(0, count).Select(i => i switch { 0 => "<unk>", 1 => "<s>", 2 => "</s>", _ => $"t{i}" }).ToArray(), new HashSet<int> { 0, 1, 2 });

    /// <summary>This tokenizer with tokens appended (ids continue from the last); <paramref name="added"/> of them listed in added_tokens.</summary>
    public TestTokenizer With(IEnumerable<string> tokens, Func<string, bool> added)
    {
        var list = Tokens.ToList();
        var ids = new HashSet<int>(Added);
        foreach (var token in tokens)
        {
            if (added(token)) ids.Add(list.Count);
            list.Add(token);
        }
        return new TestTokenizer(list.ToArray(), ids);
    }

    public JsonObject Json()
    {
        var vocab = new JsonObject();
        var added = new JsonArray();
        for (var id = 0; id < Tokens.Length; id++)
        {
            if (Tokens[id] is not { } token) continue;
            if (Added.Contains(id)) added.Add(new JsonObject { ["id"] = id, ["content"] = token, ["single_word"] = false, ["lstrip"] = false, ["rstrip"] = false, ["normalized"] = false, ["special"] = true });
            else vocab[token] = id;
        }
        return new JsonObject
        {
            ["version"] = "1.0",
            ["added_tokens"] = added,
            ["normalizer"] = null,
            ["pre_tokenizer"] = null,
            ["model"] = new JsonObject { ["type"] = "BPE", ["unk_token"] = "<unk>", ["vocab"] = vocab, ["merges"] = new JsonArray() },
        };
    }
}

public static class ShapedModels
{
    /// <summary>
    /// Writes a model folder of <paramref name="family"/> with <paramref name="rows"/> embedding rows: random float32
    /// weights (its values in the returned map), config.json and tokenizer.json; the checkpoint is opened after.
    /// </summary>
    public static (Checkpoint Model, Dictionary<string, float[]> Values) Write(TestModels models, string name, ModelFamily family, int rows, TestTokenizer? tokenizer, Random random)
    {
        var values = new Dictionary<string, float[]>(StringComparer.Ordinal);
        var tensors = new List<TestTensor>();
        foreach (var (tensorName, shape) in family.Tensors(rows))
        {
            var data = TestModels.RandomFloats(random, (int)shape.Aggregate(1L, (a, b) => a * b));
            values[tensorName] = data;
            tensors.Add(TestTensor.F32(tensorName, data, shape));
        }
        models.Write(name, tensors);
        var folder = models.PathOf(name);
        File.WriteAllText(Path.Combine(folder, "config.json"), family.Config(rows).ToJsonString());
        if (tokenizer is not null) File.WriteAllText(Path.Combine(folder, "tokenizer.json"), tokenizer.Json().ToJsonString());
        return (Checkpoint.Open(folder), values);
    }

    /// <summary>A fine-tune of <paramref name="base"/>: the base's values plus noise, with <paramref name="rows"/> rows (new rows random).</summary>
    public static (Checkpoint Model, Dictionary<string, float[]> Values) FineTune(TestModels models, string name, ModelFamily family, int rows, TestTokenizer? tokenizer,
        Dictionary<string, float[]> @base, Random random, bool? tied = null)
    {
        var tunedFamily = tied is { } t ? family with { Tied = t } : family;
        var values = new Dictionary<string, float[]>(StringComparer.Ordinal);
        var tensors = new List<TestTensor>();
        foreach (var (tensorName, shape) in tunedFamily.Tensors(rows))
        {
            var count = (int)shape.Aggregate(1L, (a, b) => a * b);
            var source = @base.TryGetValue(tensorName, out var known) ? known : @base["model.embed_tokens.weight"];
            var data = new float[count];
            for (var i = 0; i < count; i++) data[i] = i < source.Length ? source[i] + (float)(0.1 * (random.NextDouble() * 2 - 1)) : (float)(random.NextDouble() * 2 - 1);
            values[tensorName] = data;
            tensors.Add(TestTensor.F32(tensorName, data, shape));
        }
        models.Write(name, tensors);
        var folder = models.PathOf(name);
        File.WriteAllText(Path.Combine(folder, "config.json"), tunedFamily.Config(rows).ToJsonString());
        if (tokenizer is not null) File.WriteAllText(Path.Combine(folder, "tokenizer.json"), tokenizer.Json().ToJsonString());
        return (Checkpoint.Open(folder), values);
    }
}
