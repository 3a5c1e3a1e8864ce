using System.Text.Json;
using System.Text.Json.Nodes;
using Dare.Engine.Safetensors;

namespace Dare.Engine.Merge;

/// <summary>
/// The tokenizer files of a <c>tokenizer_source: union</c> output: each file the base has, with the union's new tokens
/// at their output ids — tokenizer.json's added_tokens, added_tokens.json, tokenizer_config.json's added_tokens_decoder
/// (and its additional_special_tokens), special_tokens_map.json's additional_special_tokens. A new token keeps the
/// flags (special, lstrip, …) its first owning model gives it. Files the base lacks are not invented, except
/// added_tokens.json where nothing else would record the new tokens.
/// </summary>
internal static class UnionTokenizerFiles
{
    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };
    private static readonly string[] Flags = { "lstrip", "normalized", "rstrip", "single_word", "special" };

    public static void Write(VocabularyAlignment a, Dictionary<string, string> files)
    {
        var baseVocabulary = a.Vocabularies[0];
        var added = new List<JsonObject>();
        for (var r = 0; r < a.OutTokens.Length; r++)
        {
            var token = a.OutTokens[r];
            if (token is null || baseVocabulary.Ids.ContainsKey(token)) continue;
            var owner = Enumerable.Range(1, a.Participants.Length - 1).First(p => a.Vocabularies[p].Ids.ContainsKey(token));
            var entry = a.Vocabularies[owner].AddedTokens.TryGetValue(token, out var e) ? (JsonObject)e.DeepClone()
                : new JsonObject { ["content"] = token, ["single_word"] = false, ["lstrip"] = false, ["rstrip"] = false, ["normalized"] = false, ["special"] = false };
            entry["id"] = r;
            added.Add(entry);
        }
        if (baseVocabulary.TokenizerJson is { } baseJson)
        {
            var merged = (JsonObject)baseJson.DeepClone();
            var list = merged["added_tokens"] as JsonArray ?? new JsonArray();
            merged["added_tokens"] = list;
            foreach (var entry in added) list.Add(entry.DeepClone());
            files["tokenizer.json"] = merged.ToJsonString(Indented);
        }
        if (added.Count == 0) return;
        var folder = a.Participants[0].Directory;
        // A base with neither tokenizer.json nor tokenizer_config.json (SentencePiece's tokenizer.model alone) would keep
        // no record of the new tokens: it gets an added_tokens.json, which Hugging Face loads beside tokenizer.model.
        var addedTokens = Read(folder, "added_tokens.json")
            ?? (baseVocabulary.TokenizerJson is null && Read(folder, "tokenizer_config.json") is null ? new JsonObject() : null);
        if (addedTokens is not null)
        {
            foreach (var entry in added) addedTokens[Content(entry)] = Id(entry);
            files["added_tokens.json"] = addedTokens.ToJsonString(Indented);
        }
        if (Read(folder, "tokenizer_config.json") is { } config)
        {
            var decoder = config["added_tokens_decoder"] as JsonObject ?? new JsonObject();
            config["added_tokens_decoder"] = decoder;
            foreach (var entry in added)
            {
                var decoded = new JsonObject { ["content"] = Content(entry) };
                foreach (var flag in Flags) decoded[flag] = entry[flag]?.DeepClone() ?? false;
                decoder[Id(entry).ToString(System.Globalization.CultureInfo.InvariantCulture)] = decoded;
            }
            AppendSpecial(config, added, asObjects: false);
            files["tokenizer_config.json"] = config.ToJsonString(Indented);
        }
        if (Read(folder, "special_tokens_map.json") is { } map && map["additional_special_tokens"] is JsonArray existing)
        {
            AppendSpecial(map, added, asObjects: existing.Any(item => item is JsonObject));
            files["special_tokens_map.json"] = map.ToJsonString(Indented);
        }
    }

    /// <summary>New special tokens join an existing additional_special_tokens list (as strings, or objects where the list holds objects).</summary>
    private static void AppendSpecial(JsonObject file, IEnumerable<JsonObject> added, bool asObjects)
    {
        if (file["additional_special_tokens"] is not JsonArray list) return;
        foreach (var entry in added.Where(e => e["special"] is JsonValue special && special.TryGetValue<bool>(out var isSpecial) && isSpecial))
        {
            var content = Content(entry);
            if (list.Any(item => (item is JsonObject o ? o["content"]?.GetValue<string>() : item?.GetValue<string>()) == content)) continue;
            if (!asObjects)
            {
                list.Add(content);
                continue;
            }
            var item = new JsonObject { ["content"] = content };
            foreach (var flag in Flags.Where(f => f != "special")) item[flag] = entry[flag]?.DeepClone() ?? false;
            list.Add(item);
        }
    }

    private static string Content(JsonObject entry) => entry["content"]!.GetValue<string>();

    private static int Id(JsonObject entry) => entry["id"]!.GetValue<int>();

    /// <summary>The base's file as a JSON object, or null when it has none (or it is not an object).</summary>
    private static JsonObject? Read(string folder, string name)
    {
        var path = Path.Combine(folder, name);
        if (RegularFile.Check(path, "tokenizer file").Kind != FileKind.Regular) return null;
        try
        {
            return JsonNode.Parse(File.ReadAllBytes(path)) as JsonObject;
        }
        catch (JsonException ex)
        {
            throw new DareException(DareErrorId.TokenizerInvalid, DareErrorKind.InvalidData, $"'{path}' is not valid JSON: {ex.Message}", ex) { FilePath = path };
        }
    }
}
