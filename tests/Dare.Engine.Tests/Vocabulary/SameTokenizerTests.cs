using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using Dare.Engine.Tests.Merge;
using Xunit;

namespace Dare.Engine.Tests.Vocabulary;

/// <summary>
/// Fine-tunes that kept the base's tokenizer files (the common case) are aligned row for row without parsing them;
/// any difference in those files, or in the row count, takes the full token-by-token alignment.
/// </summary>
public sealed class SameTokenizerTests : IDisposable
{
    private readonly TestModels _models = new();

    public void Dispose() => _models.Dispose();

    private string Folder(string name, params (string File, string Text)[] files)
    {
        var folder = _models.PathOf(name);
        Directory.CreateDirectory(folder);
        foreach (var (file, text) in files) File.WriteAllText(Path.Combine(folder, file), text);
        return folder;
    }

    [Fact]
    public void Folders_are_the_same_exactly_when_every_tokenizer_file_has_the_same_bytes_or_is_absent_from_both()
    {
        var json = "{\"model\":{\"vocab\":{\"a\":0,\"b\":1}}}";
        var a = Folder("a", ("tokenizer.json", json), ("tokenizer_config.json", "{}"));
        Assert.True(TokenizerVocabulary.SameFiles(a, Folder("same", ("tokenizer.json", json), ("tokenizer_config.json", "{}"))));
        Assert.True(TokenizerVocabulary.SameFiles(Folder("none1"), Folder("none2")));
        // Same length, one byte different (token ids swapped).
        Assert.False(TokenizerVocabulary.SameFiles(a, Folder("swapped", ("tokenizer.json", json.Replace("\"a\":0,\"b\":1", "\"a\":1,\"b\":0")), ("tokenizer_config.json", "{}"))));
        Assert.False(TokenizerVocabulary.SameFiles(a, Folder("no-config", ("tokenizer.json", json))));
        Assert.False(TokenizerVocabulary.SameFiles(a, Folder("added", ("tokenizer.json", json), ("tokenizer_config.json", "{}"), ("added_tokens.json", "{\"c\":2}"))));
        var directoryInstead = Folder("directory", ("tokenizer_config.json", "{}"));
        Directory.CreateDirectory(Path.Combine(directoryInstead, "tokenizer.json"));
        Assert.False(TokenizerVocabulary.SameFiles(a, directoryInstead));
    }

    [Fact]
    public void Files_longer_than_a_piece_are_compared_to_their_last_byte_and_a_file_reached_twice_is_the_same()
    {
        // 3 pieces of 64 KB and 5 bytes: differences in the first byte, at the second piece's start and in the last byte.
        var text = new string('x', 3 * 65536 + 5);
        var a = Folder("long", ("tokenizer.json", text));
        Assert.True(TokenizerVocabulary.SameFiles(a, Folder("long-same", ("tokenizer.json", text))));
        foreach (var at in new[] { 0, 65536, text.Length - 1 })
        {
            var changed = text[..at] + "y" + text[(at + 1)..];
            Assert.False(TokenizerVocabulary.SameFiles(a, Folder($"long-{at}", ("tokenizer.json", changed))));
        }
        var linked = Folder("linked");
        File.CreateSymbolicLink(Path.Combine(linked, "tokenizer.json"), Path.Combine(a, "tokenizer.json"));
        Assert.True(TokenizerVocabulary.SameFiles(a, linked));
        Assert.True(TokenizerVocabulary.SameFiles(a, a));
    }

    private Checkpoint Model(string name, float[] embedding, string tokenizerJson)
    {
        var model = _models.Write(name, new[] { TestTensor.F32("model.embed_tokens.weight", embedding, 4, 2), TestTensor.F32("model.norm.weight", new[] { 1f, 2f }, 2) });
        File.WriteAllText(Path.Combine(model.Directory, "tokenizer.json"), tokenizerJson);
        return Checkpoint.Open(model.Directory);
    }

    [Fact]
    public void Identical_tokenizer_files_merge_row_for_row_without_being_parsed()
    {
        // Not JSON at all: parsing it would fail with TokenizerInvalid, so a merge that succeeds did not parse it.
        const string unreadable = "{ not a tokenizer";
        var baseValues = new[] { 0f, 1, 2, 3, 4, 5, 6, 7 };
        var tunedValues = new[] { 0.5f, 1, 2, 3.25f, 4, 5, 6, 8 };
        var @base = Model("base", baseValues, unreadable);
        var tuned = Model("tuned", tunedValues, unreadable);

        var merged = _models.Export(TaskVector.FromModels(@base, tuned), "merged");

        Assert.Equal(tunedValues, TestModels.ReadFloats(merged, "model.embed_tokens.weight"));
        Assert.Equal(new[] { 1f, 2f }, TestModels.ReadFloats(merged, "model.norm.weight"));
    }

    [Fact]
    public void A_tokenizer_that_differs_is_parsed_and_aligned_by_token()
    {
        // Four tokens; the fine-tune stores them in another order (same row count, same file length).
        var @base = Model("base", new[] { 0f, 0, 1, 1, 2, 2, 3, 3 }, "{\"model\":{\"vocab\":{\"w\":0,\"x\":1,\"y\":2,\"z\":3}}}");
        var tuned = Model("tuned", new[] { 13f, 13, 12, 12, 11, 11, 10, 10 }, "{\"model\":{\"vocab\":{\"z\":0,\"y\":1,\"x\":2,\"w\":3}}}");

        var merged = _models.Export(TaskVector.FromModels(@base, tuned), "merged");

        // Base row r holds token r of the base's order; the fine-tune's row for that token is 3 − r.
        Assert.Equal(new[] { 10f, 10, 11, 11, 12, 12, 13, 13 }, TestModels.ReadFloats(merged, "model.embed_tokens.weight"));

        var broken = Model("broken", new[] { 0f, 0, 1, 1, 2, 2, 3, 3 }, "{ not a tokenizer");
        var error = Assert.Throws<DareException>(() => TaskVector.FromModels(@base, broken));
        Assert.Equal(DareErrorId.TokenizerInvalid, error.ErrorId);
    }
}
