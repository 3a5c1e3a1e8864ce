using System.Text.Json.Nodes;
using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using Dare.Engine.Tests.Merge;
using Xunit;

namespace Dare.Engine.Tests.Vocabulary;

/// <summary>
/// The seed paper's own merge, shaped as the real checkpoints are: a Llama-2 base (32000 tokens), WizardLM and
/// WizardMath (32001: [PAD] added) and a CodeLlama-style fine-tune (32016: sixteen more tokens, four of them special),
/// merged with DARE-TIES. Expected values come from mergekit's embedding rules (mergekit/tokenizer/embed.py) written
/// out plainly below: each participant's embedding re-rowed to the output vocabulary (its own row where it has the
/// token; else the only owner's row, the base's row, or the average of the owners' rows), then δ = re-rowed − re-rowed
/// base, DARE on δ, TIES.
/// </summary>
/// <summary>The four checkpoints, written once for the class.</summary>
public sealed class WizardSet : IDisposable
{
    public const int Vocab = 32000;
    public static readonly string[] CodeTokens = Enumerable.Range(0, 16).Select(i => i is >= 7 and <= 10 ? $"▁<FIM{i}>" : $"code{i}").ToArray();
    public static readonly ModelFamily Family = ModelFamily.Llama2 with { Hidden = 4, Intermediate = 6, Heads = 2, KvHeads = 2 };
    public TestModels Models { get; } = new();
    public Checkpoint[] Checkpoints { get; }
    public Dictionary<string, float[]>[] Values { get; }
    public TestTokenizer[] Tokenizers { get; }

    public WizardSet()
    {
        var random = new Random(31);
        var llama = TestTokenizer.Llama(Vocab);
        var wizard = llama.With(new[] { "[PAD]" }, _ => true);
        var code = llama.With(CodeTokens, t => t.StartsWith('▁'));
        Tokenizers = new[] { llama, wizard, wizard, code };
        var (@base, baseValues) = ShapedModels.Write(Models, "llama-2-7b", Family, Vocab, llama, random);
        var lm = ShapedModels.FineTune(Models, "WizardLM-7B", Family, Vocab + 1, wizard, baseValues, random);
        var math = ShapedModels.FineTune(Models, "WizardMath-7B", Family, Vocab + 1, wizard, baseValues, random);
        var codeModel = ShapedModels.FineTune(Models, "CodeLlama-7b", Family, Vocab + 16, code, baseValues, random);
        Checkpoints = new[] { @base, lm.Model, math.Model, codeModel.Model };
        Values = new[] { baseValues, lm.Values, math.Values, codeModel.Values };
    }

    public void Dispose() => Models.Dispose();
}

public sealed class VocabularyMergeTests(WizardSet set) : IClassFixture<WizardSet>
{
    private const int Vocab = WizardSet.Vocab;
    private const double Drop = 0.3;
    private const long Seed = 5;
    private readonly TestModels _models = set.Models;
    private readonly Checkpoint[] _checkpoints = set.Checkpoints;
    private readonly Dictionary<string, float[]>[] _values = set.Values;
    private readonly TestTokenizer[] _tokenizers = set.Tokenizers;

    private static readonly double[] Weights = { 1.0, 0.8, 0.6 };

    private Checkpoint Merge(TokenizerChoice tokenizer, string output)
    {
        var vectors = TaskVector.FromModels(_checkpoints[0], _checkpoints.Skip(1).ToList(), tokenizer);
        var dared = vectors.Select((v, i) => v.WithDare(new DareOptions(Drop, Seed, i))).ToList();
        var merged = TaskVector.Combine(dared, new MergeOptions(MergeMethod.Ties, Weights.Select(w => (TensorParameter)w).ToList(), true, 1.0, new TensorParameter[] { 1.0, 1.0, 1.0 }));
        return _models.Export(merged, output, chunkElements: 40_000);
    }

    /// <summary>The output vocabulary: the base's tokens, or the union (base first, then each model's new tokens in id order).</summary>
    private string[] OutputTokens(bool union)
    {
        var tokens = _tokenizers[0].Tokens.Select(t => t!).ToList();
        if (!union) return tokens.ToArray();
        var seen = new HashSet<string>(tokens);
        foreach (var tokenizer in _tokenizers.Skip(1))
        {
            foreach (var token in tokenizer.Tokens) if (seen.Add(token!)) tokens.Add(token!);
        }
        return tokens.ToArray();
    }

    /// <summary>Participant p's tensor re-rowed to <paramref name="tokens"/> by mergekit's rules, in float64.</summary>
    private double[][] ReRowed(string tensor, string[] tokens)
    {
        const int H = 4;
        var ids = _tokenizers.Select(t => t.Tokens.Select((token, id) => (token, id)).ToDictionary(e => e.token!, e => e.id)).ToArray();
        var result = _values.Select(_ => new double[tokens.Length * H]).ToArray();
        for (var r = 0; r < tokens.Length; r++)
        {
            var present = Enumerable.Range(0, 4).Where(p => ids[p].ContainsKey(tokens[r])).ToList();
            double Row(int p, int c) => _values[p][tensor][ids[p][tokens[r]] * H + c];
            for (var c = 0; c < H; c++)
            {
                double fallback = present.Count == 1 ? Row(present[0], c)
                    : present.Contains(0) ? Row(0, c)
                    : present.Average(p => Row(p, c));
                for (var p = 0; p < 4; p++) result[p][r * H + c] = present.Contains(p) ? Row(p, c) : fallback;
            }
        }
        return result;
    }

    /// <summary>DARE (the mask's definition, 1/(1 − p) rescale) then TIES without trimming, over re-rowed δs; base + merged in float32.</summary>
    private float[] Expected(string tensor, double[][] reRowed)
    {
        var deltas = new float[3][];
        var key = Enumerable.Range(0, 3).Select(i => DareMask.Key(Seed, i, tensor)).ToArray();
        var threshold = DareMask.Threshold(Drop);
        for (var i = 0; i < 3; i++)
        {
            deltas[i] = new float[reRowed[0].Length];
            for (var j = 0; j < deltas[i].Length; j++)
            {
                var delta = (float)reRowed[i + 1][j] - (float)reRowed[0][j];
                deltas[i][j] = DareMask.IsDropped(key[i], j, threshold) ? 0f : delta * (float)(1 / (1 - Drop));
            }
        }
        var merged = Reference.Ties(deltas, Weights, new[] { 1.0, 1.0, 1.0 }, true, 1.0);
        return Reference.Apply(reRowed[0].Select(v => (float)v).ToArray(), merged);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void The_wizard_set_merges_with_dare_ties_with_the_rows_mergekits_rules_give(bool union)
    {
        var output = Merge(union ? TokenizerChoice.Union : TokenizerChoice.Base, union ? "union" : "base");
        var tokens = OutputTokens(union);
        Assert.Equal(union ? Vocab + 17 : Vocab, tokens.Length);
        foreach (var tensor in new[] { "model.embed_tokens.weight", "lm_head.weight" })
        {
            Assert.Equal(new long[] { tokens.Length, 4 }, output.Find(tensor)!.Shape);
            Reference.AssertClose(Expected(tensor, ReRowed(tensor, tokens)), TestModels.ReadFloats(output, tensor), 1e-5, tensor);
        }
        // Every other tensor is a plain DARE-TIES merge of the shared shapes.
        var layerTensor = "model.layers.1.mlp.down_proj.weight";
        Reference.AssertClose(Expected(layerTensor, _values.Select(v => v[layerTensor].Select(x => (double)x).ToArray()).ToArray()), TestModels.ReadFloats(output, layerTensor), 1e-5);
        Assert.Equal(tokens.Length, JsonNode.Parse(File.ReadAllText(Path.Combine(output.Directory, "config.json")))!["vocab_size"]!.GetValue<long>());
    }

    [Fact]
    public void The_union_writes_a_tokenizer_json_with_the_new_tokens_at_their_rows()
    {
        var output = Merge(TokenizerChoice.Union, "union-tokenizer");
        var written = TokenizerVocabulary.Read(output.Directory, Vocab + 17);
        Assert.False(written.ByIndex);
        var tokens = OutputTokens(union: true);
        Assert.Equal(tokens.Length, written.Count);
        for (var id = 0; id < tokens.Length; id++) Assert.Equal(id, written.Ids[tokens[id]]);
        // The added tokens keep their settings from the model that added them: CodeLlama's ▁<FIM…> tokens are special.
        Assert.True(written.AddedTokens["▁<FIM7>"]["special"]!.GetValue<bool>());
        Assert.Equal(Vocab, written.Ids["[PAD]"]);
    }

    [Fact]
    public void Base_tokenizer_drops_the_models_extra_rows_and_leaves_the_base_vocabulary_files()
    {
        var output = Merge(TokenizerChoice.Base, "base-files");
        Assert.Equal(File.ReadAllText(Path.Combine(_checkpoints[0].Directory, "tokenizer.json")), File.ReadAllText(Path.Combine(output.Directory, "tokenizer.json")));
        Assert.Equal(Vocab, output.Find("model.embed_tokens.weight")!.Shape[0]);
    }
}
