using System.Text.Json;
using System.Text.Json.Nodes;
using Dare.Engine.Safetensors;

namespace Dare.Engine.Merge;

/// <summary>
/// A model's tokens and their ids (= embedding rows), read from its tokenizer files: tokenizer.json (the model's
/// vocab, an object for BPE/WordPiece or a list of [piece, score] for Unigram, and its added_tokens) or, without it,
/// SentencePiece's tokenizer.model (<see cref="SentencePieceModel"/>), then added_tokens.json and
/// tokenizer_config.json's added_tokens_decoder. A folder without any of them has no token
/// names: its rows are matched by index (<see cref="ByIndex"/>).
/// </summary>
public sealed class TokenizerVocabulary
{
    private TokenizerVocabulary(string folder, Dictionary<string, int> ids, Dictionary<string, JsonObject> added, JsonObject? tokenizerJson, bool byIndex)
    {
        Folder = folder;
        Ids = ids;
        AddedTokens = added;
        TokenizerJson = tokenizerJson;
        ByIndex = byIndex;
        Tokens = new string?[ids.Count == 0 ? 0 : ids.Values.Max() + 1];
        foreach (var (token, id) in ids) Tokens[id] ??= token;
    }

    public string Folder { get; }

    /// <summary>Token → id.</summary>
    public IReadOnlyDictionary<string, int> Ids { get; }

    /// <summary>Id → token (null where no token has that id).</summary>
    internal string?[] Tokens { get; }

    /// <summary>Added tokens by content: their tokenizer.json entries (special, normalized, …).</summary>
    public IReadOnlyDictionary<string, JsonObject> AddedTokens { get; }

    /// <summary>The parsed tokenizer.json, when the folder has one.</summary>
    internal JsonObject? TokenizerJson { get; }

    /// <summary>True when the folder has no tokenizer files: tokens are the row numbers.</summary>
    public bool ByIndex { get; }

    public int Count => Ids.Count;

    /// <summary>The row of <paramref name="token"/> in a model with <paramref name="rows"/> rows, or -1.</summary>
    public int RowOf(string token, long rows) => Ids.TryGetValue(token, out var id) && id < rows ? id : -1;

    /// <summary>Every file a vocabulary may be read from; two folders whose files are equal have equal vocabularies.</summary>
    internal static readonly string[] FileNames = { "tokenizer.json", "added_tokens.json", "tokenizer_config.json", "tokenizer.model" };

    /// <summary>
    /// True when both folders hold the same tokenizer files with the same bytes (or both lack them): their vocabularies
    /// are equal without parsing. Anything but regular files answers false, so the full read reports it. One file
    /// reached by both (a Hugging Face cache's snapshots link their files to shared blobs) is not read at all.
    /// </summary>
    public static bool SameFiles(string folder, string other)
    {
        foreach (var name in FileNames)
        {
            var (kind, identity) = FileIdentity.Stat(Path.Combine(folder, name));
            var (otherKind, otherIdentity) = FileIdentity.Stat(Path.Combine(other, name));
            if (kind == FileKind.Missing && otherKind == FileKind.Missing) continue;
            if (kind != FileKind.Regular || otherKind != FileKind.Regular || identity.Size != otherIdentity.Size) return false;
            if (identity.Inode != 0 && (identity.Device, identity.Inode) == (otherIdentity.Device, otherIdentity.Inode)) continue;
            if (!SameBytes(Path.Combine(folder, name), Path.Combine(other, name))) return false;
        }
        return true;
    }

    /// <summary>
    /// Whether two files of the same size hold the same bytes, compared a piece at a time (a tokenizer.json is up to
    /// ~17 MB, and a merge compares the base's with every fine-tune's).
    /// </summary>
    private static bool SameBytes(string path, string otherPath)
    {
        const int Piece = 1 << 16;
        using var file = File.OpenHandle(path);
        using var otherFile = File.OpenHandle(otherPath);
        var buffer = System.Buffers.ArrayPool<byte>.Shared.Rent(2 * Piece);
        try
        {
            var mine = buffer.AsSpan(0, Piece);
            var theirs = buffer.AsSpan(Piece, Piece);
            for (long offset = 0; ; offset += Piece)
            {
                var read = ReadFully(file, mine, offset);
                if (ReadFully(otherFile, theirs, offset) != read || !mine[..read].SequenceEqual(theirs[..read])) return false;
                if (read < Piece) return true;
            }
        }
        finally
        {
            System.Buffers.ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>Reads until <paramref name="into"/> is full or the file ends; returns the bytes read.</summary>
    private static int ReadFully(Microsoft.Win32.SafeHandles.SafeFileHandle file, Span<byte> into, long offset)
    {
        var total = 0;
        while (total < into.Length)
        {
            var read = RandomAccess.Read(file, into[total..], offset + total);
            if (read == 0) break;
            total += read;
        }
        return total;
    }

    /// <summary>Reads the tokenizer files of <paramref name="folder"/>; with none, tokens are "row 0" … "row rows−1".</summary>
    public static TokenizerVocabulary Read(string folder, long rows)
    {
        var ids = new Dictionary<string, int>(StringComparer.Ordinal);
        var added = new Dictionary<string, JsonObject>(StringComparer.Ordinal);
        var tokenizerJson = ReadJson(Path.Combine(folder, "tokenizer.json")) as JsonObject;
        if (tokenizerJson is not null)
        {
            var path = Path.Combine(folder, "tokenizer.json");
            switch (tokenizerJson["model"]?["vocab"])
            {
                case JsonObject vocab:
                    foreach (var (token, id) in vocab) ids[token] = Id(id, path, token);
                    break;
                case JsonArray pieces:
                    for (var i = 0; i < pieces.Count; i++)
                    {
                        if (pieces[i] is JsonArray { Count: > 0 } piece && piece[0] is JsonValue text && text.TryGetValue<string>(out var token)) ids.TryAdd(token, i);
                        else throw Invalid(path, $"model.vocab[{i}] is not a [piece, score] pair");
                    }
                    break;
            }
            if (tokenizerJson["added_tokens"] is JsonArray list)
            {
                foreach (var entry in list.OfType<JsonObject>())
                {
                    if (entry["content"] is not JsonValue content || !content.TryGetValue<string>(out var token)) throw Invalid(path, "an added_tokens entry has no content");
                    ids[token] = Id(entry["id"], path, token);
                    added[token] = entry;
                }
            }
        }
        else if (RegularFile.Check(Path.Combine(folder, SentencePieceModel.FileName), "tokenizer file").Kind == FileKind.Regular)
        {
            // A SentencePiece-only model (Llama 1/2 and Mistral uploads without tokenizer.json): its pieces in id order.
            var pieces = SentencePieceModel.ReadPieces(Path.Combine(folder, SentencePieceModel.FileName));
            for (var i = 0; i < pieces.Count; i++) ids.TryAdd(pieces[i], i);
        }
        if (ReadJson(Path.Combine(folder, "added_tokens.json")) is JsonObject addedJson)
        {
            foreach (var (token, id) in addedJson) AddToken(ids, added, token, Id(id, Path.Combine(folder, "added_tokens.json"), token));
        }
        if (ReadJson(Path.Combine(folder, "tokenizer_config.json")) is JsonObject config && config["added_tokens_decoder"] is JsonObject decoder)
        {
            foreach (var (key, entry) in decoder)
            {
                if (!int.TryParse(key, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var id)
                    || entry?["content"] is not JsonValue content || !content.TryGetValue<string>(out var token))
                {
                    throw Invalid(Path.Combine(folder, "tokenizer_config.json"), $"added_tokens_decoder entry '{key}' is not an id with a content");
                }
                AddToken(ids, added, token, id);
            }
        }
        var byIndex = ids.Count == 0;
        if (byIndex)
        {
            for (var row = 0; row < rows; row++) ids[$"row {row}"] = row;
        }
        return new TokenizerVocabulary(folder, ids, added, tokenizerJson, byIndex);
    }

    private static void AddToken(Dictionary<string, int> ids, Dictionary<string, JsonObject> added, string token, int id)
    {
        if (ids.ContainsKey(token)) return;
        ids[token] = id;
        added[token] = new JsonObject { ["id"] = id, ["content"] = token, ["single_word"] = false, ["lstrip"] = false, ["rstrip"] = false, ["normalized"] = false, ["special"] = true };
    }

    private static int Id(JsonNode? node, string path, string token) =>
        node is JsonValue value && value.TryGetValue<int>(out var id) && id >= 0 ? id : throw Invalid(path, $"token '{token}' has no valid id");

    private static DareException Invalid(string path, string reason) =>
        new(DareErrorId.TokenizerInvalid, DareErrorKind.InvalidData, $"'{path}' is not a tokenizer file Dare can read: {reason}.") { FilePath = path };

    private static JsonNode? ReadJson(string path)
    {
        if (RegularFile.Check(path, "tokenizer file").Kind == FileKind.Missing) return null;
        try
        {
            return JsonNode.Parse(File.ReadAllBytes(path), documentOptions: new JsonDocumentOptions { MaxDepth = 64 });
        }
        catch (Exception ex) when (ex is JsonException or ArgumentException or InvalidOperationException)
        {
            throw new DareException(DareErrorId.TokenizerInvalid, DareErrorKind.InvalidData, $"'{path}' is not valid JSON: {ex.Message}", ex) { FilePath = path };
        }
    }
}
