using System.Text;
using System.Text.Json.Nodes;
using Dare.Engine.Evaluation;
using Dare.Engine.Safetensors;
using Xunit;

namespace Dare.Engine.Tests.Evaluation;

/// <summary>ModelTokenizer on tokenizer files built here, checked against ids worked out by hand.</summary>
public sealed class TokenizerTests : IDisposable
{
    private readonly string _folder = Path.Combine(Path.GetTempPath(), "dare-tokenizer-tests", Guid.NewGuid().ToString("N"));

    public TokenizerTests() => Directory.CreateDirectory(_folder);

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    private void WriteJson(JsonObject tokenizer) => File.WriteAllText(Path.Combine(_folder, "tokenizer.json"), tokenizer.ToJsonString());

    private static JsonObject ByteLevelBpe(JsonNode merges) => new()
    {
        ["model"] = new JsonObject
        {
            ["type"] = "BPE",
            ["vocab"] = new JsonObject
            {
                ["h"] = 0, ["e"] = 1, ["l"] = 2, ["o"] = 3, ["Ġ"] = 4, ["w"] = 5, ["r"] = 6, ["d"] = 7,
                ["he"] = 8, ["ll"] = 9, ["hell"] = 10, ["hello"] = 11, ["Ġw"] = 12, ["or"] = 13,
            },
            ["merges"] = merges,
        },
        ["pre_tokenizer"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false },
    };

    [Fact]
    public void Byte_level_BPE_from_tokenizer_json_applies_its_merges_in_rank_order()
    {
        WriteJson(ByteLevelBpe(new JsonArray("h e", "l l", "he ll", "hell o", "Ġ w", "o r")));
        var tokenizer = ModelTokenizer.Load(_folder);
        Assert.Equal("BPE", tokenizer.Kind);
        // "hello" merges fully; " world" is Ġ w o r l d: "Ġ w" and "o r" apply, "l d" is no merge.
        Assert.Equal(new[] { 11, 12, 13, 2, 7 }, tokenizer.Encode("hello world"));
    }

    [Fact]
    public void Merges_written_as_pairs_read_the_same_as_merges_written_as_lines()
    {
        var pairs = new JsonArray(new[] { "h e", "l l", "he ll", "hell o", "Ġ w", "o r" }.Select(m => (JsonNode)new JsonArray(m.Split(' ').Select(p => (JsonNode)p!).ToArray())).ToArray());
        WriteJson(ByteLevelBpe(pairs));
        Assert.Equal(new[] { 11, 12, 13, 2, 7 }, ModelTokenizer.Load(_folder).Encode("hello world"));
    }

    [Fact]
    public void The_synthetic_tokenizer_json_maps_each_known_character_to_its_id_and_others_to_unk()
    {
        WriteJson(SyntheticTokenizer.Json(16)); // <unk> <s> </s> then a..m
        Assert.Equal(new[] { 3, 4, 5, 15, 0, 3 }, ModelTokenizer.Load(_folder).Encode("abc m z a"));
    }

    [Theory]
    [InlineData("WordPiece", null, "tokenizer type is WordPiece")]
    [InlineData("Unigram", null, "tokenizer type is Unigram")]
    [InlineData("BPE", "Metaspace", "pre-tokenizer type is Metaspace")]
    public void Other_tokenizer_kinds_are_refused_by_name(string type, string? preTokenizer, string message)
    {
        var json = ByteLevelBpe(new JsonArray());
        json["model"]!["type"] = type;
        if (preTokenizer is not null) json["pre_tokenizer"] = new JsonObject { ["type"] = preTokenizer };
        WriteJson(json);
        var error = Assert.Throws<DareException>(() => ModelTokenizer.Load(_folder));
        Assert.Equal(DareErrorId.TokenizerUnsupported, error.ErrorId);
        Assert.Contains(message, error.Message);
    }

    [Fact]
    public void A_tokenizer_json_with_a_field_of_the_wrong_type_is_refused_as_invalid_data()
    {
        var json = ByteLevelBpe(new JsonArray("h e"));
        json["model"]!["vocab"]!["h"] = "zero";
        WriteJson(json);
        var error = Assert.Throws<DareException>(() => ModelTokenizer.Load(_folder));
        Assert.Equal(DareErrorId.TokenizerUnsupported, error.ErrorId);
        Assert.Equal(DareErrorKind.InvalidData, error.Kind);
    }

    [Fact]
    public void SentencePiece_tokenizer_model_adds_bos_and_merges_by_score()
    {
        // Pieces: <unk> <s> </s> ▁ a b c ▁a ab ▁ab; in BPE the merge whose result scores highest goes first.
        var pieces = new (string Piece, float Score, int Type)[]
        {
            ("<unk>", 0, 2), ("<s>", 0, 3), ("</s>", 0, 3), ("▁", -10, 1), ("a", -11, 1), ("b", -12, 1), ("c", -13, 1),
            ("▁a", -1, 1), ("ab", -5, 1), ("▁ab", -3, 1),
        };
        File.WriteAllBytes(Path.Combine(_folder, "tokenizer.model"), SentencePieceModel(pieces));
        WriteJson(ByteLevelBpe(new JsonArray())); // tokenizer.model wins when both exist
        var tokenizer = ModelTokenizer.Load(_folder);
        Assert.Equal("SentencePiece", tokenizer.Kind);
        // "ab abc" → "▁ab▁abc" (dummy prefix, spaces as ▁): ▁+a → ▁a twice, then ▁a+b → ▁ab twice; c stays.
        Assert.Equal(new[] { 1, 9, 9, 6 }, tokenizer.Encode("ab abc"));
    }

    /// <summary>A minimal sentencepiece ModelProto (BPE, unk 0, bos 1, eos 2, dummy prefix, whitespace escaping), encoded by hand.</summary>
    private static byte[] SentencePieceModel(IEnumerable<(string Piece, float Score, int Type)> pieces)
    {
        var model = new MemoryStream();
        foreach (var (piece, score, type) in pieces)
        {
            var entry = new MemoryStream();
            Bytes(entry, 1, Encoding.UTF8.GetBytes(piece));
            Tag(entry, 2, 5);
            entry.Write(BitConverter.GetBytes(score));
            Varint(entry, 3, type);
            Bytes(model, 1, entry.ToArray());
        }
        var trainer = new MemoryStream();
        Varint(trainer, 3, 2); // model_type BPE
        Varint(trainer, 4, 10); // vocab_size
        Varint(trainer, 40, 0); // unk_id
        Varint(trainer, 41, 1); // bos_id
        Varint(trainer, 42, 2); // eos_id
        Varint(trainer, 43, -1); // pad_id
        Bytes(model, 2, trainer.ToArray());
        var normalizer = new MemoryStream();
        Bytes(normalizer, 1, Encoding.UTF8.GetBytes("identity"));
        Varint(normalizer, 3, 1); // add_dummy_prefix
        Varint(normalizer, 4, 1); // remove_extra_whitespaces
        Varint(normalizer, 5, 1); // escape_whitespaces
        Bytes(model, 3, normalizer.ToArray());
        return model.ToArray();
    }

    private static void Tag(Stream s, int field, int wire) => RawVarint(s, (ulong)(field << 3 | wire));

    private static void Varint(Stream s, int field, long value)
    {
        Tag(s, field, 0);
        RawVarint(s, unchecked((ulong)value));
    }

    private static void Bytes(Stream s, int field, byte[] data)
    {
        Tag(s, field, 2);
        RawVarint(s, (ulong)data.Length);
        s.Write(data);
    }

    private static void RawVarint(Stream s, ulong value)
    {
        while (value >= 0x80)
        {
            s.WriteByte((byte)(value | 0x80));
            value >>= 7;
        }
        s.WriteByte((byte)value);
    }
}
