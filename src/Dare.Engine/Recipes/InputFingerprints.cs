using System.Security.Cryptography;
using Dare.Engine.Merge;
using YamlDotNet.Serialization;

namespace Dare.Engine.Recipes;

/// <summary>One safetensors file of an input as dare_recipe.yml records it: its name in the model's folder, size and header hash.</summary>
public sealed record InputFileFingerprint(string File, long Bytes, string HeaderSha256);

/// <summary>An input model (or adapter) and its recorded files, as read back from a recipe's dare_inputs section.</summary>
public sealed record RecordedInput(string Model, IReadOnlyList<InputFileFingerprint> Files, RecipeLocation Location);

/// <summary>
/// dare_recipe.yml's <c>dare_inputs:</c> section: each input's safetensors files with their sizes and the SHA-256 of
/// their headers (the 8-byte length and the JSON, which name every tensor's dtype, shape and offsets). Hashing the
/// headers, not the data, keeps the check to milliseconds on models of any size; a re-uploaded, re-sharded,
/// converted or truncated model differs there. A replay checks them before any work (<see cref="Differences"/>).
/// </summary>
public static class InputFingerprints
{
    public const string Key = "dare_inputs";

    // Readers refuse headers beyond 100 MB; a file claiming more is hashed up to that (it differs either way).
    private const long MaxHeaderBytes = 100_000_000;

    /// <summary>The section to append to a recipe: base, models, slice sources and adapters with their files.</summary>
    public static string Section(TaskVector vector)
    {
        var inputs = InputsOf(vector).Select(input => (object)new Dictionary<string, object?>
        {
            ["model"] = input.Path,
            ["files"] = input.Files.Select(file => FingerprintOf(input.Folder, file)).Select(f => (object)new Dictionary<string, object?>
            {
                ["file"] = f.File,
                ["bytes"] = f.Bytes,
                ["header_sha256"] = f.HeaderSha256,
            }).ToList(),
        }).ToList();
        return "# The inputs this recipe was run on: a replay stops if any differs (Invoke-DareMerge -AllowChangedInputs replays anyway).\n"
            + new SerializerBuilder().Build().Serialize(new Dictionary<string, object?> { [Key] = inputs });
    }

    /// <summary>
    /// What differs between the recorded inputs and the files on disk now, one line per file (empty when nothing does).
    /// Paths resolve against <paramref name="baseDirectory"/> as the recipe's model paths do.
    /// </summary>
    public static IReadOnlyList<(RecordedInput Input, string Difference)> Differences(IEnumerable<RecordedInput> recorded, string baseDirectory)
    {
        var differences = new List<(RecordedInput, string)>();
        foreach (var input in recorded)
        {
            var full = Path.GetFullPath(Path.Combine(baseDirectory, input.Model));
            var folder = Directory.Exists(full) ? full : Path.GetDirectoryName(full) ?? full;
            foreach (var file in input.Files)
            {
                var path = Path.Combine(folder, file.File);
                if (!File.Exists(path))
                {
                    differences.Add((input, $"'{path}' is missing"));
                    continue;
                }
                var now = FingerprintOf(folder, path);
                if (now.Bytes != file.Bytes) differences.Add((input, $"'{path}' is {now.Bytes} bytes, recorded {file.Bytes}"));
                else if (!string.Equals(now.HeaderSha256, file.HeaderSha256, StringComparison.OrdinalIgnoreCase))
                {
                    differences.Add((input, $"the header of '{path}' differs (SHA-256 {Short(now.HeaderSha256)}…, recorded {Short(file.HeaderSha256)}…)"));
                }
            }
        }
        return differences;
    }

    /// <summary>A file's size and the SHA-256 of its header (length prefix and JSON), named relative to its model's folder.</summary>
    public static InputFileFingerprint FingerprintOf(string folder, string file)
    {
        using var stream = new FileStream(file, FileMode.Open, FileAccess.Read, FileShare.Read);
        var prefix = new byte[Math.Min(8, stream.Length)];
        stream.ReadExactly(prefix);
        var claimed = prefix.Length == 8 ? BitConverter.ToInt64(prefix) : 0;
        var header = new byte[Math.Clamp(claimed, 0, Math.Min(MaxHeaderBytes, stream.Length - prefix.Length))];
        stream.ReadExactly(header);
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        hash.AppendData(prefix);
        hash.AppendData(header);
        var name = Path.GetRelativePath(folder, file).Replace('\\', '/');
        return new InputFileFingerprint(name, stream.Length, Convert.ToHexString(hash.GetHashAndReset()).ToLowerInvariant());
    }

    /// <summary>Every checkpoint and adapter the vector reads: path as the recipe writes it, its folder, its files.</summary>
    private static IEnumerable<(string Path, string Folder, IReadOnlyList<string> Files)> InputsOf(TaskVector vector)
    {
        var seen = new HashSet<string>(StringComparer.Ordinal);
        // A stack of slices (Checkpoint.Stack) reads its sources' files; its own Path only describes it.
        foreach (var checkpoint in vector.Sources.Prepend(vector.Base).SelectMany(c => c.Slices is { } slices ? slices.Select(s => s.Model) : new[] { c }))
        {
            if (seen.Add(checkpoint.Path)) yield return (checkpoint.Path, checkpoint.Directory, checkpoint.Files);
        }
        foreach (var adapter in vector.LoraAdapters)
        {
            if (seen.Add(adapter.Path)) yield return (adapter.Path, adapter.Path, new[] { adapter.WeightsFile });
        }
    }

    private static string Short(string hash) => hash.Length > 12 ? hash[..12] : hash;
}
