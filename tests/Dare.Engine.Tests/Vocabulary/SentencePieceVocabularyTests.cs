using System.Text;
using System.Text.Json.Nodes;
using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using Dare.Engine.Tests.Merge;
using Xunit;

namespace Dare.Engine.Tests.Vocabulary;

/// <summary>
/// Models with only SentencePiece's tokenizer.model (no tokenizer.json) are aligned by token, not by index: the test
/// writes the protobuf itself (pieces with score and type, and the trainer and normalizer specs a reader must skip).
/// </summary>
public sealed class SentencePieceVocabularyTests : IDisposable
{
    private const int Rows = 16;
    private const string Embed = "model.embed_tokens.weight";
    private const int Hidden = 4;
    private readonly TestModels _models = new();

    public void Dispose() => _models.Dispose();

    private static readonly string[] BasePieces = Enumerable.Range(0, Rows).Select(i => i switch { 0 => "<unk>", 1 => "<s>", 2 => "</s>", _ => $"▁t{i}" }).ToArray();

    // --- protobuf, written out by hand: tag = field << 3 | wire type; varints of 7 bits, low first. ---
    private static byte[] Varint(ulong value)
    {
        var bytes = new List<byte>();
        do
        {
            var b = (byte)(value & 0x7F);
            value >>= 7;
            bytes.Add(value == 0 ? b : (byte)(b | 0x80));
        }
        while (value != 0);
        return bytes.ToArray();
    }

    private static byte[] Bytes(int field, byte[] payload) => Varint((ulong)(field << 3 | 2)).Concat(Varint((ulong)payload.Length)).Concat(payload).ToArray();

    private static byte[] Piece(string text, float score, int type) =>
        Bytes(1, Encoding.UTF8.GetBytes(text)).Concat(Varint(2 << 3 | 5)).Concat(BitConverter.GetBytes(score)).Concat(Varint(3 << 3 | 0)).Concat(Varint((ulong)type)).ToArray();

    /// <summary>A ModelProto: a trainer spec (field 2) first, the pieces (field 1), then a normalizer spec (field 3).</summary>
    private static byte[] ModelProto(IEnumerable<string> pieces)
    {
        var trainer = Bytes(1, Encoding.UTF8.GetBytes("corpus.txt")).Concat(Varint(3 << 3 | 0)).Concat(Varint(Rows)).ToArray();
        var body = Bytes(2, trainer).ToList();
        var i = 0;
        foreach (var piece in pieces) body.AddRange(Bytes(1, Piece(piece, -i++, piece.StartsWith('<') ? 3 : 1)));
        body.AddRange(Bytes(3, Bytes(1, Encoding.UTF8.GetBytes("nmt_nfkc"))));
        return body.ToArray();
    }

    /// <summary>A SentencePiece-only base and one fine-tune whose tokenizer.model swaps two pieces (so index and token disagree), with [PAD] in added_tokens.json.</summary>
    private (Checkpoint Base, Checkpoint Tuned, string[] TunedPieces) Models()
    {
        var random = new Random(9);
        var family = ModelFamily.Llama2 with { Hidden = Hidden };
        var (@base, values) = ShapedModels.Write(_models, "base", family, Rows, null, random);
        File.WriteAllBytes(Path.Combine(@base.Directory, "tokenizer.model"), ModelProto(BasePieces));
        var tunedPieces = BasePieces.ToArray();
        (tunedPieces[3], tunedPieces[4]) = (tunedPieces[4], tunedPieces[3]);
        var tuned = ShapedModels.FineTune(_models, "tuned", family, Rows + 1, null, values, random).Model;
        File.WriteAllBytes(Path.Combine(tuned.Directory, "tokenizer.model"), ModelProto(tunedPieces));
        File.WriteAllText(Path.Combine(tuned.Directory, "added_tokens.json"), new JsonObject { ["[PAD]"] = Rows }.ToJsonString());
        return (Checkpoint.Open(@base.Directory), Checkpoint.Open(tuned.Directory), tunedPieces.Append("[PAD]").ToArray());
    }

    private static float[] Row(float[] embedding, int row) => embedding.AsSpan(row * Hidden, Hidden).ToArray();

    [Fact]
    public void The_pieces_of_a_tokenizer_model_are_its_token_ids()
    {
        var (@base, _, _) = Models();
        var vocabulary = TokenizerVocabulary.Read(@base.Directory, Rows);
        Assert.False(vocabulary.ByIndex);
        Assert.Equal(Enumerable.Range(0, Rows), BasePieces.Select(p => vocabulary.Ids[p]));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_fine_tune_with_swapped_pieces_is_aligned_by_token(bool union)
    {
        var (@base, tuned, tunedPieces) = Models();
        var vector = TaskVector.FromModels(@base, new[] { tuned }, union ? TokenizerChoice.Union : TokenizerChoice.Base).Single();
        var output = _models.Export(vector, union ? "union" : "base-vocab");
        var merged = TestModels.ReadFloats(output, Embed);
        var tunedRows = TestModels.ReadFloats(tuned, Embed);
        var outputTokens = union ? BasePieces.Append("[PAD]").ToArray() : BasePieces;
        Assert.Equal(outputTokens.Length * Hidden, merged.Length);
        // base + (tuned row of the same token − base) is the tuned row of that token.
        for (var r = 0; r < outputTokens.Length; r++)
        {
            var expected = Row(tunedRows, Array.IndexOf(tunedPieces, outputTokens[r]));
            var actual = Row(merged, r);
            for (var c = 0; c < Hidden; c++) Assert.Equal(expected[c], actual[c], 5);
        }
        // The base keeps its tokenizer.model; the union's new token is recorded where Hugging Face looks beside it.
        Assert.Equal(File.ReadAllBytes(Path.Combine(@base.Directory, "tokenizer.model")), File.ReadAllBytes(Path.Combine(output.Directory, "tokenizer.model")));
        var addedTokens = Path.Combine(output.Directory, "added_tokens.json");
        if (union) Assert.True(JsonNode.DeepEquals(new JsonObject { ["[PAD]"] = Rows }, JsonNode.Parse(File.ReadAllText(addedTokens))));
        else Assert.False(File.Exists(addedTokens));
    }

    [Fact]
    public void A_SentencePiece_models_vocabulary_chosen_as_tokenizer_source_brings_its_own_tokenizer_files()
    {
        var (@base, tuned, _) = Models();
        // The base also has a tokenizer.json (the same ids): none of the base's tokenizer files may stay beside the model's vocabulary.
        var vocab = new JsonObject();
        for (var i = 0; i < Rows; i++) vocab[BasePieces[i]] = i;
        File.WriteAllText(Path.Combine(@base.Directory, "tokenizer.json"), new JsonObject { ["added_tokens"] = new JsonArray(), ["model"] = new JsonObject { ["type"] = "BPE", ["vocab"] = vocab } }.ToJsonString());
        var choice = new TokenizerChoice(TokenizerSourceKind.Model, tuned.Path);
        var output = _models.Export(TaskVector.FromModels(Checkpoint.Open(@base.Directory), new[] { tuned }, choice).Single(), "tuned-vocab");

        Assert.Equal(File.ReadAllBytes(Path.Combine(tuned.Directory, "tokenizer.model")), File.ReadAllBytes(Path.Combine(output.Directory, "tokenizer.model")));
        Assert.Equal(File.ReadAllText(Path.Combine(tuned.Directory, "added_tokens.json")), File.ReadAllText(Path.Combine(output.Directory, "added_tokens.json")));
        Assert.False(File.Exists(Path.Combine(output.Directory, "tokenizer.json")), "the base's tokenizer.json does not describe the tuned model's vocabulary");
        // Every row is the tuned model's own: base + (tuned − base) row by row of the tuned vocabulary.
        var expected = TestModels.ReadFloats(tuned, Embed);
        var actual = TestModels.ReadFloats(output, Embed);
        Assert.Equal(expected.Length, actual.Length);
        for (var i = 0; i < expected.Length; i++) Assert.Equal(expected[i], actual[i], 5);
    }

    [Fact]
    public void A_cut_off_tokenizer_model_is_TokenizerInvalid_naming_the_file()
    {
        var (@base, _, _) = Models();
        var path = Path.Combine(@base.Directory, "tokenizer.model");
        var bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..(bytes.Length - 5)]);
        var error = Assert.Throws<DareException>(() => TokenizerVocabulary.Read(@base.Directory, Rows));
        Assert.Equal(DareErrorId.TokenizerInvalid, error.ErrorId);
        Assert.Contains(path, error.Message);
    }
}
