using System.Text.Json.Nodes;
using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using Dare.Engine.Tests.Merge;
using Xunit;

namespace Dare.Engine.Tests.Vocabulary;

/// <summary>
/// tokenizer_source: union writes every tokenizer file the base has consistent with the merged vocabulary:
/// added_tokens.json, tokenizer_config.json's added_tokens_decoder and additional_special_tokens, and
/// special_tokens_map.json's additional_special_tokens, each read back here against the ids the union gives.
/// </summary>
public sealed class UnionTokenizerFilesTests : IDisposable
{
    private const int Rows = 16;
    private readonly TestModels _models = new();

    public void Dispose() => _models.Dispose();

    private static readonly JsonObject SpecialFlags = new() { ["lstrip"] = false, ["normalized"] = false, ["rstrip"] = false, ["single_word"] = false };

    /// <summary>
    /// A base of 16 tokens and two fine-tunes: "chat" adds the special &lt;tool&gt; (id 16 there), "code" the ordinary ▁code
    /// (id 16 there). The union puts &lt;tool&gt; at 16 and ▁code at 17. Returns the merged folder.
    /// </summary>
    private string MergeUnion(bool baseHasAllFiles)
    {
        var random = new Random(3);
        var family = ModelFamily.Llama2 with { Hidden = 4 };
        var tokenizer = TestTokenizer.Llama(Rows);
        var (@base, values) = ShapedModels.Write(_models, "base", family, Rows, tokenizer, random);
        var folder = @base.Directory;
        File.WriteAllText(Path.Combine(folder, "tokenizer_config.json"), new JsonObject
        {
            ["add_bos_token"] = true,
            ["added_tokens_decoder"] = new JsonObject { ["0"] = Decoded("<unk>", special: true) },
            ["additional_special_tokens"] = new JsonArray("</s>"),
            ["model_max_length"] = 4096,
        }.ToJsonString());
        if (baseHasAllFiles)
        {
            File.WriteAllText(Path.Combine(folder, "added_tokens.json"), new JsonObject { ["</s>"] = 2 }.ToJsonString());
            File.WriteAllText(Path.Combine(folder, "special_tokens_map.json"), new JsonObject
            {
                ["bos_token"] = "<s>",
                ["additional_special_tokens"] = new JsonArray(WithContent("</s>")),
            }.ToJsonString());
        }
        var chat = ShapedModels.FineTune(_models, "chat", family, Rows + 1, tokenizer.With(new[] { "<tool>" }, _ => true), values, random).Model;
        var code = ShapedModels.FineTune(_models, "code", family, Rows + 1, tokenizer.With(new[] { "▁code" }, _ => false), values, random).Model;
        var vectors = TaskVector.FromModels(Checkpoint.Open(folder), new[] { chat, code }, TokenizerChoice.Union);
        var merged = TaskVector.Combine(vectors, new MergeOptions(MergeMethod.Linear, new TensorParameter[] { 0.5, 0.5 }, true, 1.0));
        return _models.Export(merged, "merged").Directory;
    }

    private static JsonObject Decoded(string content, bool special)
    {
        var entry = new JsonObject { ["content"] = content };
        foreach (var (key, value) in SpecialFlags) entry[key] = value!.DeepClone();
        entry["special"] = special;
        return entry;
    }

    private static JsonObject WithContent(string content)
    {
        var entry = new JsonObject { ["content"] = content };
        foreach (var (key, value) in SpecialFlags) entry[key] = value!.DeepClone();
        return entry;
    }

    private static JsonObject Read(string folder, string name) => (JsonObject)JsonNode.Parse(File.ReadAllText(Path.Combine(folder, name)))!;

    [Fact]
    public void Added_tokens_json_lists_the_new_tokens_at_their_union_ids()
    {
        var output = MergeUnion(baseHasAllFiles: true);
        Assert.True(JsonNode.DeepEquals(new JsonObject { ["</s>"] = 2, ["<tool>"] = 16, ["▁code"] = 17 }, Read(output, "added_tokens.json")));
    }

    [Fact]
    public void Tokenizer_config_decodes_the_new_ids_and_lists_the_new_special_token()
    {
        var output = MergeUnion(baseHasAllFiles: true);
        var expected = new JsonObject
        {
            ["add_bos_token"] = true,
            ["added_tokens_decoder"] = new JsonObject
            {
                ["0"] = Decoded("<unk>", special: true),
                ["16"] = Decoded("<tool>", special: true),
                ["17"] = Decoded("▁code", special: false),
            },
            ["additional_special_tokens"] = new JsonArray("</s>", "<tool>"),
            ["model_max_length"] = 4096,
        };
        Assert.True(JsonNode.DeepEquals(expected, Read(output, "tokenizer_config.json")), Read(output, "tokenizer_config.json").ToJsonString());
    }

    [Fact]
    public void Special_tokens_map_gains_the_new_special_token_in_the_form_of_its_list()
    {
        var output = MergeUnion(baseHasAllFiles: true);
        var expected = new JsonObject { ["bos_token"] = "<s>", ["additional_special_tokens"] = new JsonArray(WithContent("</s>"), WithContent("<tool>")) };
        Assert.True(JsonNode.DeepEquals(expected, Read(output, "special_tokens_map.json")), Read(output, "special_tokens_map.json").ToJsonString());
    }

    [Fact]
    public void Files_the_base_lacks_are_not_written_and_the_tokenizer_json_agrees_with_the_config()
    {
        var output = MergeUnion(baseHasAllFiles: false);
        Assert.False(File.Exists(Path.Combine(output, "added_tokens.json")));
        Assert.False(File.Exists(Path.Combine(output, "special_tokens_map.json")));
        var added = ((JsonArray)Read(output, "tokenizer.json")["added_tokens"]!).Cast<JsonObject>().ToDictionary(e => e["content"]!.GetValue<string>(), e => e["id"]!.GetValue<int>());
        var decoder = (JsonObject)Read(output, "tokenizer_config.json")["added_tokens_decoder"]!;
        Assert.Equal(16, added["<tool>"]);
        Assert.Equal(17, added["▁code"]);
        foreach (var (token, id) in added.Where(e => e.Value >= Rows)) Assert.Equal(token, decoder[id.ToString()]!["content"]!.GetValue<string>());
        Assert.Equal(Rows + 2, Checkpoint.Open(output).Find("model.embed_tokens.weight")!.Shape[0]);
    }
}
