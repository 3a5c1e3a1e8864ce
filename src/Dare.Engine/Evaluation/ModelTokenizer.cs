using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Dare.Engine.Safetensors;
using Microsoft.ML.Tokenizers;

namespace Dare.Engine.Evaluation;

/// <summary>
/// A model's own tokenizer, from its folder: SentencePiece tokenizer.model (Hugging Face's LlamaTokenizer; a
/// beginning-of-sentence token is added, as LlamaTokenizer does) or a BPE tokenizer.json (Qwen2, Llama 3, GPT-2
/// style byte-level BPE, or plain whitespace-split BPE; no special tokens are added). tokenizer.model wins when both
/// exist, since the SentencePiece-converted tokenizer.json of Llama 2 and Mistral (Metaspace, byte fallback) is what
/// Microsoft.ML.Tokenizers' BPE does not reproduce. Anything else is refused by name.
/// </summary>
public sealed class ModelTokenizer
{
    public const string SentencePieceFile = "tokenizer.model";
    public const string HuggingFaceFile = "tokenizer.json";

    // GPT-2's pre-tokenisation pattern (the ByteLevel pre-tokenizer's use_regex).
    private const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    private readonly Tokenizer _tokenizer;

    private ModelTokenizer(Tokenizer tokenizer, string kind, string path)
    {
        _tokenizer = tokenizer;
        Kind = kind;
        Path = path;
    }

    /// <summary>"SentencePiece" or "BPE".</summary>
    public string Kind { get; }

    /// <summary>The tokenizer file read.</summary>
    public string Path { get; }

    public IReadOnlyList<int> Encode(string text) => _tokenizer.EncodeToIds(text);

    public static ModelTokenizer Load(string folder)
    {
        var sentencePiece = System.IO.Path.Combine(folder, SentencePieceFile);
        var huggingFace = System.IO.Path.Combine(folder, HuggingFaceFile);
        if (RegularFile.Check(sentencePiece, "tokenizer").Kind == FileKind.Regular) return LoadSentencePiece(sentencePiece);
        if (RegularFile.Check(huggingFace, "tokenizer").Kind == FileKind.Regular) return LoadHuggingFace(huggingFace);
        throw new DareException(DareErrorId.TokenizerNotFound, DareErrorKind.ObjectNotFound,
            $"'{folder}' has neither {SentencePieceFile} nor {HuggingFaceFile}; Measure-Perplexity tokenises with the model's own tokenizer.") { FilePath = folder };
    }

    private static ModelTokenizer LoadSentencePiece(string path)
    {
        try
        {
            using var stream = File.OpenRead(path);
            return new ModelTokenizer(LlamaTokenizer.Create(stream), "SentencePiece", path);
        }
        catch (Exception ex) when (ex is not DareException and not IOException)
        {
            throw new DareException(DareErrorId.TokenizerUnsupported, DareErrorKind.InvalidData,
                $"'{path}' could not be read as a SentencePiece model: {ex.Message}", ex) { FilePath = path };
        }
    }

    private static ModelTokenizer LoadHuggingFace(string path)
    {
        try
        {
            return ReadHuggingFace(path);
        }
        catch (Exception ex) when (ex is InvalidOperationException or FormatException or KeyNotFoundException or NullReferenceException or ArgumentException)
        {
            // A field of the wrong JSON type or a missing required entry (GetValue on a string, a token without an id).
            throw new DareException(DareErrorId.TokenizerUnsupported, DareErrorKind.InvalidData, $"'{path}' is not a tokenizer.json Dare can read: {ex.Message}", ex) { FilePath = path };
        }
    }

    private static ModelTokenizer ReadHuggingFace(string path)
    {
        DareException Unsupported(string what) => new(DareErrorId.TokenizerUnsupported, DareErrorKind.NotImplemented,
            $"'{path}': {what}; Measure-Perplexity reads BPE tokenizer.json files with a ByteLevel, Whitespace or WhitespaceSplit pre-tokenizer, and SentencePiece tokenizer.model files.") { FilePath = path };
        JsonObject root;
        try
        {
            root = JsonNode.Parse(File.ReadAllBytes(path)) as JsonObject ?? throw new JsonException("the top level is not an object");
        }
        catch (Exception ex) when (ex is JsonException or ArgumentException or InvalidOperationException)
        {
            throw new DareException(DareErrorId.TokenizerUnsupported, DareErrorKind.InvalidData, $"'{path}' is not valid JSON: {ex.Message}", ex) { FilePath = path };
        }
        var model = root["model"] as JsonObject ?? throw Unsupported("it has no 'model' object");
        var type = model["type"]?.GetValue<string>() ?? "(none)";
        if (type != "BPE") throw Unsupported($"the tokenizer type is {type}");
        if (root["normalizer"] is JsonObject normalizer) throw Unsupported($"its {normalizer["type"]?.ToString() ?? "unnamed"} normalizer is not implemented");
        if (model["vocab"] is not JsonObject vocabNode) throw Unsupported("model.vocab is not an object");
        var vocabulary = vocabNode.Select(e => new KeyValuePair<string, int>(e.Key, e.Value!.GetValue<int>())).ToList();
        var merges = (model["merges"] as JsonArray ?? new JsonArray()).Select(m => m switch
        {
            JsonArray pair when pair.Count == 2 => $"{pair[0]!.GetValue<string>()} {pair[1]!.GetValue<string>()}",
            JsonValue line => line.GetValue<string>(),
            _ => throw Unsupported("a merge is neither \"a b\" nor [\"a\", \"b\"]"),
        }).ToList();
        var special = (root["added_tokens"] as JsonArray ?? new JsonArray()).OfType<JsonObject>()
            .Where(t => t["special"]?.GetValue<bool>() == true)
            .ToDictionary(t => t["content"]!.GetValue<string>(), t => t["id"]!.GetValue<int>());
        var (preTokenizer, byteLevel) = PreTokenizerFor(root["pre_tokenizer"] as JsonObject, special, Unsupported);
        var options = new BpeOptions(vocabulary)
        {
            Merges = merges,
            PreTokenizer = preTokenizer,
            ByteLevel = byteLevel,
            SpecialTokens = special.Count > 0 ? special : null,
            UnknownToken = model["unk_token"]?.GetValue<string>(),
            FuseUnknownTokens = model["fuse_unk"]?.GetValue<bool>() ?? false,
            ContinuingSubwordPrefix = model["continuing_subword_prefix"]?.GetValue<string>(),
            EndOfWordSuffix = model["end_of_word_suffix"]?.GetValue<string>(),
        };
        if (model["byte_fallback"]?.GetValue<bool>() == true) throw Unsupported("byte_fallback BPE (SentencePiece-converted) is not implemented; give the model's tokenizer.model");
        try
        {
            return new ModelTokenizer(BpeTokenizer.Create(options), "BPE", path);
        }
        catch (Exception ex) when (ex is ArgumentException or InvalidOperationException or FormatException)
        {
            throw new DareException(DareErrorId.TokenizerUnsupported, DareErrorKind.InvalidData, $"'{path}': the BPE vocabulary or merges are invalid: {ex.Message}", ex) { FilePath = path };
        }
    }

    private static (PreTokenizer? PreTokenizer, bool ByteLevel) PreTokenizerFor(JsonObject? node, Dictionary<string, int> special, Func<string, DareException> unsupported)
    {
        var specials = special.Count > 0 ? special : null;
        switch (node?["type"]?.GetValue<string>())
        {
            case null:
                return (null, false);
            case "Whitespace":
                return (PreTokenizer.CreateWordOrNonWord(specials), false);
            case "WhitespaceSplit":
                return (PreTokenizer.CreateWhiteSpace(specials), false);
            case "ByteLevel":
                return (new RegexPreTokenizer(new Regex(Gpt2Pattern, RegexOptions.Compiled), specials), true);
            case "Sequence":
                // Qwen2 / Llama 3: Split(regex) then ByteLevel(use_regex: false).
                var steps = (node["pretokenizers"] as JsonArray ?? new JsonArray()).OfType<JsonObject>().ToList();
                if (steps.Count == 2 && steps[0]["type"]?.GetValue<string>() == "Split" && steps[1]["type"]?.GetValue<string>() == "ByteLevel"
                    && steps[0]["pattern"]?["Regex"]?.GetValue<string>() is { } pattern)
                {
                    return (new RegexPreTokenizer(new Regex(pattern, RegexOptions.Compiled), specials), true);
                }
                throw unsupported("its Sequence pre-tokenizer is not Split(Regex) + ByteLevel");
            case var other:
                throw unsupported($"its pre-tokenizer type is {other}");
        }
    }
}
