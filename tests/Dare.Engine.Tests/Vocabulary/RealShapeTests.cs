using System.Text.Json.Nodes;
using Dare.Engine.Merge;
using Dare.Engine.Recipes;
using Dare.Engine.Safetensors;
using Dare.Engine.Tests.Merge;
using Xunit;

namespace Dare.Engine.Tests.Vocabulary;

/// <summary>Checkpoints shaped like Llama-2, Mistral, Qwen2, Gemma 2 and Phi-3 (scaled down): each family merges; tied heads, padded vocabularies, overrides.</summary>
public sealed class RealShapeTests : IDisposable
{
    private readonly TestModels _models = new();

    public void Dispose() => _models.Dispose();

    public static TheoryData<string> Families => new() { "llama", "mistral", "qwen2", "gemma2", "phi3" };

    private static ModelFamily FamilyOf(string name) => name switch
    {
        "llama" => ModelFamily.Llama2,
        "mistral" => ModelFamily.Mistral,
        "qwen2" => ModelFamily.Qwen2,
        "gemma2" => ModelFamily.Gemma2,
        _ => ModelFamily.Phi3,
    };

    [Theory]
    [MemberData(nameof(Families))]
    public void Each_family_merges_with_ties_tensor_by_tensor(string name)
    {
        var family = FamilyOf(name);
        var random = new Random(name.Length);
        var tokenizer = TestTokenizer.Llama(64);
        var (@base, baseValues) = ShapedModels.Write(_models, "base", family, 64, tokenizer, random);
        var tuned = Enumerable.Range(0, 2).Select(i => ShapedModels.FineTune(_models, $"t{i}", family, 64, tokenizer, baseValues, random)).ToList();
        var vectors = TaskVector.FromModels(@base, tuned.Select(t => t.Model).ToList(), TokenizerChoice.Base);
        var merged = TaskVector.Combine(vectors, new MergeOptions(MergeMethod.Ties, new TensorParameter[] { 1.0, 0.5 }, true, 1.0, new TensorParameter[] { 0.7, 0.7 }));
        var output = _models.Export(merged, "out");
        Assert.Equal(family.Tensors(64).Select(t => t.Name).Order(), output.Tensors.Select(t => t.Name).Order());
        foreach (var (tensor, _) in family.Tensors(64))
        {
            var deltas = tuned.Select(t => Reference.Delta(baseValues[tensor], t.Values[tensor])).ToArray();
            var expected = Reference.Apply(baseValues[tensor], Reference.Ties(deltas, new[] { 1.0, 0.5 }, new[] { 0.7, 0.7 }, true, 1.0));
            Reference.AssertClose(expected, TestModels.ReadFloats(output, tensor), what: tensor);
        }
    }

    [Fact]
    public void A_tied_gemma_set_merges_and_stays_tied()
    {
        var random = new Random(3);
        var tokenizer = TestTokenizer.Llama(48);
        var (@base, baseValues) = ShapedModels.Write(_models, "gemma", ModelFamily.Gemma2, 48, tokenizer, random);
        var tuned = ShapedModels.FineTune(_models, "gemma-it", ModelFamily.Gemma2, 48, tokenizer, baseValues, random);
        var output = _models.Export(TaskVector.FromModels(@base, tuned.Model), "out");
        Assert.Null(output.Find("lm_head.weight"));
        Reference.AssertClose(tuned.Values["model.embed_tokens.weight"], TestModels.ReadFloats(output, "model.embed_tokens.weight"));
        Assert.True(JsonNode.Parse(File.ReadAllText(Path.Combine(output.Directory, "config.json")))!["tie_word_embeddings"]!.GetValue<bool>());
    }

    [Fact]
    public void A_tied_fine_tune_of_an_untied_base_reads_its_head_as_its_embedding()
    {
        var random = new Random(4);
        var tokenizer = TestTokenizer.Llama(40);
        var (@base, baseValues) = ShapedModels.Write(_models, "llama", ModelFamily.Llama2, 40, tokenizer, random);
        var tuned = ShapedModels.FineTune(_models, "tied", ModelFamily.Llama2, 40, tokenizer, baseValues, random, tied: true);
        Assert.Null(tuned.Model.Find("lm_head.weight"));
        var vector = TaskVector.FromModels(@base, tuned.Model);
        Assert.Empty(vector.MissingTensors);
        var output = _models.Export(vector, "out");
        // Its head is its embedding: δ = embedding − base head, so the output head is the fine-tune's embedding.
        Reference.AssertClose(tuned.Values["model.embed_tokens.weight"], TestModels.ReadFloats(output, "lm_head.weight"));
    }

    [Fact]
    public void An_untied_fine_tune_of_a_tied_base_is_warned_about_and_the_output_stays_tied()
    {
        var random = new Random(5);
        var tokenizer = TestTokenizer.Llama(40);
        var (@base, baseValues) = ShapedModels.Write(_models, "gemma", ModelFamily.Gemma2, 40, tokenizer, random);
        var tuned = ShapedModels.FineTune(_models, "untied", ModelFamily.Gemma2, 40, tokenizer, baseValues, random, tied: false);
        var warnings = new List<string>();
        var executor = new MergeExecutor(new ListObserver(warnings));
        executor.Export(TaskVector.FromModels(@base, tuned.Model), new ExportOptions { Destination = _models.PathOf("out"), OutputDType = SafetensorsDType.F32 });
        var output = Checkpoint.Open(_models.PathOf("out"));
        Assert.Null(output.Find("lm_head.weight"));
        Assert.Contains(warnings, w => w.Contains("lm_head.weight") && w.Contains("ties its head"));
        Reference.AssertClose(tuned.Values["model.embed_tokens.weight"], TestModels.ReadFloats(output, "model.embed_tokens.weight"));
    }

    private sealed class ListObserver(List<string> warnings) : IMergeObserver
    {
        public void Progress(MergeProgress progress) { }
        public void Verbose(string message) { }
        public void Warning(string message) => warnings.Add(message);
    }

    [Fact]
    public void A_padded_vocabulary_keeps_its_padding_rows_under_the_base_tokenizer()
    {
        // Qwen2.5's layout scaled down: 100 tokens in 128 rows. The fine-tune adds a token at id 100, inside the padding.
        var random = new Random(6);
        var family = ModelFamily.Qwen2;
        var tokenizer = TestTokenizer.Llama(100);
        var tunedTokenizer = tokenizer.With(new[] { "<|im_start|>" }, _ => true);
        var (@base, baseValues) = ShapedModels.Write(_models, "qwen", family, 128, tokenizer, random);
        var tuned = ShapedModels.FineTune(_models, "qwen-chat", family, 128, tunedTokenizer, baseValues, random);
        var output = _models.Export(TaskVector.FromModels(@base, tuned.Model), "out");
        var name = "model.embed_tokens.weight";
        Assert.Equal(new long[] { 128, 8 }, output.Find(name)!.Shape);
        var actual = TestModels.ReadFloats(output, name);
        for (var row = 0; row < 128; row++)
        {
            // Row 100 is a token in the fine-tune but padding in the base: no delta there. Other rows, padding included, merge by index.
            var source = row == 100 ? baseValues[name] : tuned.Values[name];
            Reference.AssertClose(source.Skip(row * 8).Take(8).ToArray(), actual.Skip(row * 8).Take(8).ToArray(), what: $"row {row}");
        }
    }

    [Fact]
    public void A_forced_token_takes_its_source_row_and_padding_rows_take_the_mean_embedding()
    {
        var random = new Random(7);
        var family = ModelFamily.Llama2 with { Hidden = 4 };
        var tokenizer = TestTokenizer.Llama(10);
        var (@base, baseValues) = ShapedModels.Write(_models, "base", family, 10, tokenizer, random);
        var tuned = ShapedModels.FineTune(_models, "tuned", family, 10, tokenizer, baseValues, random);
        var choice = new TokenizerChoice(TokenizerSourceKind.Base)
        {
            PadToMultipleOf = 8,
            Tokens = new Dictionary<string, TokenOverride> { ["t5"] = new(new TokenEmbeddingSource(@base.Path, Token: "t7"), Force: true) },
        };
        var output = _models.Export(TaskVector.FromModels(@base, new[] { tuned.Model }, choice)[0], "out");
        var name = "model.embed_tokens.weight";
        var actual = TestModels.ReadFloats(output, name);
        Assert.Equal(16 * 4, actual.Length);
        double[] Row(float[] values, int row) => values.Skip(row * 4).Take(4).Select(v => (double)v).ToArray();
        // Forced: every model's row for t5 is the base's row for t7, so δ = 0 there and the output row is that row.
        Assert.Equal(Row(baseValues[name], 7), Row(actual, 5).Select(v => (double)(float)v));
        // Padding rows 10..15: mean over token rows of the re-rowed base, plus the mean of the model's δ (mergekit pads each model with its mean).
        var expected = new double[4];
        for (var row = 0; row < 10; row++)
        {
            var baseRow = row == 5 ? Row(baseValues[name], 7) : Row(baseValues[name], row);
            var tunedRow = row == 5 ? baseRow : Row(tuned.Values[name], row);
            for (var c = 0; c < 4; c++) expected[c] += tunedRow[c] / 10;
        }
        for (var row = 10; row < 16; row++) Reference.AssertClose(expected.Select(v => (float)v).ToArray(), Row(actual, row).Select(v => (float)v).ToArray(), 1e-6, $"row {row}");
    }

    [Fact]
    public void A_mismatched_shape_outside_the_vocabulary_is_an_error_naming_the_tensor()
    {
        var random = new Random(8);
        var tokenizer = TestTokenizer.Llama(20);
        var (@base, baseValues) = ShapedModels.Write(_models, "base", ModelFamily.Llama2, 20, tokenizer, random);
        var (other, _) = ShapedModels.Write(_models, "wider", ModelFamily.Llama2 with { Intermediate = 16 }, 20, tokenizer, random);
        var error = Assert.Throws<DareException>(() => TaskVector.FromModels(@base, other));
        Assert.Equal(DareErrorId.TensorShapeMismatch, error.ErrorId);
        Assert.Contains("mlp.gate_proj.weight", error.TensorName);
        var (narrow, _) = ShapedModels.Write(_models, "narrow", ModelFamily.Llama2 with { Hidden = 4 }, 20, tokenizer, random);
        Assert.Equal(DareErrorId.TensorShapeMismatch, Assert.Throws<DareException>(() => TaskVector.FromModels(@base, narrow)).ErrorId);
    }

    [Fact]
    public void A_recipe_with_tokenizer_union_replays_from_its_written_recipe()
    {
        var random = new Random(9);
        var family = ModelFamily.Llama2 with { Hidden = 4 };
        var tokenizer = TestTokenizer.Llama(30);
        var (_, baseValues) = ShapedModels.Write(_models, "base", family, 30, tokenizer, random);
        ShapedModels.FineTune(_models, "chat", family, 32, tokenizer.With(new[] { "<|user|>", "<|bot|>" }, _ => true), baseValues, random);
        var yaml = "merge_method: dare_ties\nbase_model: ./base\ntokenizer:\n  source: union\n  pad_to_multiple_of: 8\nmodels:\n  - model: ./chat\n    parameters: { weight: 1, density: 0.5 }\n";
        var plan = RecipePlanner.Plan(RecipeParser.ParseText(yaml, _models.Root), new RecipePlanOptions { OutputPath = _models.PathOf("r") }).Plans[0];
        new MergeExecutor().Export(plan.Vector, plan.Export);
        Assert.Contains("pad_to_multiple_of: 8", plan.Export.RecipeYaml);
        var replay = RecipePlanner.Plan(RecipeParser.ParseText(plan.Export.RecipeYaml!, _models.Root), new RecipePlanOptions { OutputPath = _models.PathOf("replay") }).Plans[0];
        new MergeExecutor().Export(replay.Vector, replay.Export);
        var first = Checkpoint.Open(_models.PathOf("r"));
        Assert.Equal(new long[] { 32, 4 }, first.Find("model.embed_tokens.weight")!.Shape);
        foreach (var tensor in first.Tensors) Assert.Equal(TestModels.ReadRaw<byte>(tensor), TestModels.ReadRaw<byte>(Checkpoint.Open(_models.PathOf("replay")).Find(tensor.Name)!));
    }
}
