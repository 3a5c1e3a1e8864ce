using System.Text.Json;
using System.Text.Json.Nodes;

namespace Dare.Engine.Safetensors;

/// <summary>The files beside the shards: the index, and side files copied from the base folder (config.json with its changes).</summary>
public sealed partial class CheckpointWriter
{
    private void WriteIndex()
    {
        var weightMap = new JsonObject();
        foreach (var shard in _shards)
        {
            foreach (var tensor in shard.Tensors) weightMap[tensor.Name] = shard.FileName;
        }
        var index = new JsonObject
        {
            ["metadata"] = new JsonObject { ["total_size"] = _shards.Sum(s => s.Tensors.Sum(t => t.ByteLength)) },
            ["weight_map"] = weightMap,
        };
        File.WriteAllText(Path.Combine(_temporary, Checkpoint.IndexFileName), index.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }

    private void CopySideFiles()
    {
        if (_options.CopySideFilesFrom is not { } source) return;
        foreach (var name in SideFiles)
        {
            var folder = _options.TokenizerFilesFrom is { } tokenizer && TokenizerFiles.Contains(name) ? tokenizer : source;
            var from = Path.Combine(folder, name);
            if (!SideFileIsCopyable(folder, from)) continue;
            var to = Path.Combine(_temporary, name);
            if (name == "config.json" && (_options.ConfigDType is not null || _options.ConfigChanges is { Count: > 0 } || _options.ConfigUpdates is { Count: > 0 }) && JsonNode.Parse(File.ReadAllText(from)) is JsonObject config)
            {
                var changed = false;
                if (_options.ConfigDType is { } dtype)
                {
                    var wanted = dtype.TorchDTypeName();
                    if (!(config["torch_dtype"] is JsonValue current && current.TryGetValue<string>(out var currentName) && currentName == wanted))
                    {
                        config["torch_dtype"] = wanted;
                        changed = true;
                    }
                }
                foreach (var (key, value) in _options.ConfigChanges ?? new Dictionary<string, JsonNode?>())
                {
                    config[key] = value?.DeepClone();
                    changed = true;
                }
                // After a stack's changes: the output vocabulary's size (tokenizer_source) is the last word.
                foreach (var (key, value) in _options.ConfigUpdates ?? new Dictionary<string, long>())
                {
                    if (config[key] is JsonValue existing && existing.TryGetValue<long>(out var old) && old == value) continue;
                    config[key] = value;
                    changed = true;
                }
                if (changed)
                {
                    File.WriteAllText(to, config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
                    continue;
                }
            }
            File.Copy(from, to);
        }
    }

    /// <summary>
    /// Only regular files that resolve (through any symlinks) inside the model folder are copied: a FIFO would block
    /// the copy, and a tokenizer.json linking to some other file must not carry that file into the output.
    /// </summary>
    private bool SideFileIsCopyable(string folder, string path)
    {
        var kind = FileIdentity.Stat(path).Kind;
        if (kind == FileKind.Missing) return false;
        if (kind != FileKind.Regular)
        {
            _options.Warning?.Invoke($"Skipped the side file '{path}': it is a {RegularFile.Describe(kind)}, not a regular file.");
            return false;
        }
        var target = RegularFile.RealPath(path);
        var root = RegularFile.RealPath(folder).TrimEnd(Path.DirectorySeparatorChar) + Path.DirectorySeparatorChar;
        if (!target.StartsWith(root, OperatingSystem.IsWindows() ? StringComparison.OrdinalIgnoreCase : StringComparison.Ordinal))
        {
            _options.Warning?.Invoke($"Skipped the side file '{path}': it links to '{target}', outside the model folder '{folder}'.");
            return false;
        }
        return true;
    }
}
