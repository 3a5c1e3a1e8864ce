using YamlDotNet.RepresentationModel;

namespace Dare.Engine.Recipes;

public static partial class RecipeParser
{
    private static readonly string[] RecordedInputKeys = { "model", "files" };
    private static readonly string[] RecordedFileKeys = { "file", "bytes", "header_sha256" };

    /// <summary>dare_inputs: a list of { model, files: [{ file, bytes, header_sha256 }] }, as <see cref="InputFingerprints.Section"/> writes it.</summary>
    private static IReadOnlyList<RecordedInput> ParseRecordedInputs(YamlNode node, string path, Context context)
    {
        if (node is not YamlSequenceNode list) throw Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, context.At(node, path), "must be a list of '- model: <path>' entries with their files.");
        var inputs = new List<RecordedInput>();
        for (var i = 0; i < list.Children.Count; i++)
        {
            var entryPath = $"{path}[{i}]";
            var keys = ReadKeys(RequireMapping(list.Children[i], entryPath, context, "an input"), entryPath, context, RecordedInputKeys, new Dictionary<string, string>());
            var location = context.At(list.Children[i], entryPath);
            if (!keys.TryGetValue("model", out var model) || !keys.TryGetValue("files", out var files) || files.Value is not YamlSequenceNode fileList)
            {
                throw Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, location, "needs 'model:' and a 'files:' list.");
            }
            var recorded = fileList.Children.Select((fileNode, f) =>
            {
                var filePath = $"{entryPath}.files[{f}]";
                var fileKeys = ReadKeys(RequireMapping(fileNode, filePath, context, "a file"), filePath, context, RecordedFileKeys, new Dictionary<string, string>());
                YamlNode Field(string key) => fileKeys.TryGetValue(key, out var value) ? value.Value
                    : throw Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, context.At(fileNode, filePath), $"needs '{key}:'.");
                string Text(string key) => RequireString(Field(key), context.At(Field(key), Join(filePath, key)), context);
                return new InputFileFingerprint(Text("file"), RequireInteger(Field("bytes"), context.At(Field("bytes"), Join(filePath, "bytes")), context), Text("header_sha256"));
            }).ToList();
            inputs.Add(new RecordedInput(RequireString(model.Value, context.At(model.Value, Join(entryPath, "model")), context), recorded, location));
        }
        return inputs;
    }
}
