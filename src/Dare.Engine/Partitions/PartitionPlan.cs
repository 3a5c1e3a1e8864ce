using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;
using Dare.Engine.Safetensors;

namespace Dare.Engine.Partitions;

/// <summary>
/// What every partition of one export must agree on, and what the completion needs to publish it without the input
/// models: the tensors (names, dtypes, shapes) in order, the shard limit and the shard plan it gives, the shards'
/// header metadata (which holds the recipe), the extra files (recipe, model card, mergekit_config.yml, a merged vocabulary's tokenizer files), where the side files come from and the
/// config dtype, changes and updates (a stack's layer count, an output vocabulary's size). Its <see cref="Fingerprint"/> is the SHA-256 of its canonical JSON; the staging folder keeps it in
/// plan.json beside the partition count.
/// </summary>
public sealed class PartitionPlan
{
    public const string FormatName = "dare-partitions/1";

    private IReadOnlyList<PlannedShard>? _shards;
    private string? _fingerprint;

    public required string DestinationName { get; init; }
    public required IReadOnlyList<PlannedTensor> Tensors { get; init; }
    public required long MaxShardSize { get; init; }
    public IReadOnlyDictionary<string, string> Metadata { get; init; } = new Dictionary<string, string>();
    public IReadOnlyDictionary<string, string> ExtraFiles { get; init; } = new Dictionary<string, string>();
    public string? SideFilesFrom { get; init; }
    public string? TokenizerFilesFrom { get; init; }
    public SafetensorsDType? ConfigDType { get; init; }

    /// <summary>config.json keys the output gets instead of the base's (a stack's num_hidden_layers); values as JSON text, null for JSON null.</summary>
    public IReadOnlyDictionary<string, string?> ConfigChanges { get; init; } = new Dictionary<string, string?>();

    /// <summary>Integer config.json fields set after the changes (an output vocabulary's vocab_size).</summary>
    public IReadOnlyDictionary<string, long> ConfigUpdates { get; init; } = new Dictionary<string, long>();

    /// <summary>What the output must not replace (the input models); kept beside the plan for the completion, not part of the fingerprint.</summary>
    public IReadOnlyList<string> ProtectedPaths { get; init; } = Array.Empty<string>();

    /// <summary>The shard plan a single-process export of these tensors makes.</summary>
    public IReadOnlyList<PlannedShard> Shards => _shards ??= ShardPlan.Of(Tensors, MaxShardSize);

    /// <summary>SHA-256 (hex) of the canonical JSON of the plan.</summary>
    public string Fingerprint => _fingerprint ??= Convert.ToHexString(SHA256.HashData(CanonicalJson())).ToLowerInvariant();

    /// <summary>The plan of an export to <paramref name="destination"/> written with <paramref name="options"/>.</summary>
    public static PartitionPlan For(string destination, IReadOnlyList<PlannedTensor> tensors, CheckpointWriteOptions options) => new()
    {
        DestinationName = Path.GetFileName(Path.TrimEndingDirectorySeparator(destination)),
        Tensors = tensors,
        MaxShardSize = options.MaxShardSize,
        Metadata = options.Metadata ?? new Dictionary<string, string>(),
        ExtraFiles = options.ExtraFiles ?? new Dictionary<string, string>(),
        SideFilesFrom = options.CopySideFilesFrom,
        TokenizerFilesFrom = options.TokenizerFilesFrom,
        ConfigDType = options.ConfigDType,
        ConfigChanges = (options.ConfigChanges ?? new Dictionary<string, JsonNode?>()).ToDictionary(c => c.Key, c => c.Value?.ToJsonString()),
        ConfigUpdates = options.ConfigUpdates ?? new Dictionary<string, long>(),
        ProtectedPaths = options.ProtectedPaths,
    };

    /// <summary>The write options that reproduce the single-process export's files (shards are written with these too).</summary>
    public CheckpointWriteOptions WriteOptions(CheckpointWriteOptions caller) => new()
    {
        MaxShardSize = MaxShardSize,
        Metadata = Metadata,
        Force = caller.Force,
        ProtectedPaths = ProtectedPaths,
        CurrentLocation = caller.CurrentLocation,
        CopySideFilesFrom = SideFilesFrom,
        TokenizerFilesFrom = TokenizerFilesFrom,
        ConfigDType = ConfigDType,
        ConfigChanges = ConfigChanges.Count == 0 ? null : ConfigChanges.ToDictionary(c => c.Key, c => c.Value is null ? null : JsonNode.Parse(c.Value)),
        ConfigUpdates = ConfigUpdates.Count == 0 ? null : ConfigUpdates,
        ExtraFiles = ExtraFiles,
        DirectWrites = caller.DirectWrites,
        NonFinite = caller.NonFinite,
        Warning = caller.Warning,
    };

    /// <summary>The plan's JSON in one fixed form: what the fingerprint hashes.</summary>
    public byte[] CanonicalJson()
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer))
        {
            WriteBody(json);
        }
        return buffer.ToArray();
    }

    private void WriteBody(Utf8JsonWriter json)
    {
        json.WriteStartObject();
        json.WriteString("format", FormatName);
        json.WriteString("destination", DestinationName);
        json.WriteNumber("max_shard_size", MaxShardSize);
        json.WriteStartArray("tensors");
        foreach (var tensor in Tensors)
        {
            json.WriteStartArray();
            json.WriteStringValue(tensor.Name);
            json.WriteStringValue(tensor.DType.ToString());
            json.WriteStartArray();
            foreach (var dimension in tensor.Shape) json.WriteNumberValue(dimension);
            json.WriteEndArray();
            json.WriteEndArray();
        }
        json.WriteEndArray();
        json.WriteStartArray("shards");
        foreach (var shard in Shards)
        {
            json.WriteStartArray();
            json.WriteStringValue(shard.FileName);
            json.WriteNumberValue(shard.Tensors.Count);
            json.WriteNumberValue(shard.FileBytes(Metadata));
            json.WriteEndArray();
        }
        json.WriteEndArray();
        WriteMap(json, "metadata", Metadata);
        WriteMap(json, "extra_files", ExtraFiles);
        json.WriteString("side_files_from", SideFilesFrom);
        json.WriteString("tokenizer_files_from", TokenizerFilesFrom);
        json.WriteString("config_dtype", ConfigDType?.ToString());
        json.WriteStartArray("config_changes");
        foreach (var (key, value) in ConfigChanges)
        {
            json.WriteStartArray();
            json.WriteStringValue(key);
            json.WriteStringValue(value);
            json.WriteEndArray();
        }
        json.WriteEndArray();
        json.WriteStartArray("config_updates");
        foreach (var (key, value) in ConfigUpdates)
        {
            json.WriteStartArray();
            json.WriteStringValue(key);
            json.WriteNumberValue(value);
            json.WriteEndArray();
        }
        json.WriteEndArray();
        json.WriteEndObject();
    }

    private static void WriteMap(Utf8JsonWriter json, string name, IReadOnlyDictionary<string, string> map)
    {
        json.WriteStartArray(name);
        foreach (var (key, value) in map)
        {
            json.WriteStartArray();
            json.WriteStringValue(key);
            json.WriteStringValue(value);
            json.WriteEndArray();
        }
        json.WriteEndArray();
    }

    /// <summary>plan.json: the fingerprint, the partition count and the plan.</summary>
    public byte[] StagingRecord(int partitionCount)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true }))
        {
            json.WriteStartObject();
            json.WriteString("fingerprint", Fingerprint);
            json.WriteNumber("partitions", partitionCount);
            json.WriteStartArray("protected_paths");
            foreach (var path in ProtectedPaths) json.WriteStringValue(path);
            json.WriteEndArray();
            json.WritePropertyName("plan");
            WriteBody(json);
            json.WriteEndObject();
        }
        return buffer.ToArray();
    }

    /// <summary>Reads plan.json; the plan is rebuilt from its fields, so a record edited by hand no longer matches its fingerprint.</summary>
    public static (PartitionPlan Plan, int Count, string Fingerprint) ReadStagingRecord(string path)
    {
        try
        {
            using var document = JsonDocument.Parse(File.ReadAllBytes(path));
            var root = document.RootElement;
            var body = root.GetProperty("plan");
            if (body.GetProperty("format").GetString() != FormatName) throw new FormatException($"not {FormatName}");
            var tensors = body.GetProperty("tensors").EnumerateArray().Select(t =>
            {
                var items = t.EnumerateArray().ToList();
                if (!SafetensorsDTypes.TryParse(items[1].GetString()!, out var dtype)) throw new FormatException($"dtype '{items[1]}'");
                return new PlannedTensor(items[0].GetString()!, dtype, items[2].EnumerateArray().Select(d => d.GetInt64()).ToArray());
            }).ToList();
            SafetensorsDType? configDType = null;
            if (body.GetProperty("config_dtype").GetString() is { } configName)
            {
                if (!SafetensorsDTypes.TryParse(configName, out var parsed)) throw new FormatException($"config dtype '{configName}'");
                configDType = parsed;
            }
            var plan = new PartitionPlan
            {
                DestinationName = body.GetProperty("destination").GetString()!,
                Tensors = tensors,
                MaxShardSize = body.GetProperty("max_shard_size").GetInt64(),
                Metadata = ReadMap(body.GetProperty("metadata")),
                ExtraFiles = ReadMap(body.GetProperty("extra_files")),
                SideFilesFrom = body.GetProperty("side_files_from").GetString(),
                TokenizerFilesFrom = body.GetProperty("tokenizer_files_from").GetString(),
                ConfigDType = configDType,
                ConfigChanges = body.GetProperty("config_changes").EnumerateArray().Select(c => c.EnumerateArray().ToList())
                    .ToDictionary(c => c[0].GetString()!, c => c[1].GetString()),
                ConfigUpdates = body.GetProperty("config_updates").EnumerateArray().Select(c => c.EnumerateArray().ToList())
                    .ToDictionary(c => c[0].GetString()!, c => c[1].GetInt64()),
                ProtectedPaths = root.GetProperty("protected_paths").EnumerateArray().Select(p => p.GetString()!).ToList(),
            };
            return (plan, root.GetProperty("partitions").GetInt32(), root.GetProperty("fingerprint").GetString()!);
        }
        catch (Exception ex) when (ex is JsonException or FormatException or KeyNotFoundException or InvalidOperationException or ArgumentOutOfRangeException)
        {
            throw new DareException(DareErrorId.PartitionCorrupt, DareErrorKind.InvalidData,
                $"The partition plan '{path}' cannot be read ({ex.Message}). Delete its staging folder '{Path.GetDirectoryName(path)}' and run every partition again.", ex) { FilePath = path };
        }
    }

    private static Dictionary<string, string> ReadMap(JsonElement array)
    {
        var map = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var pair in array.EnumerateArray())
        {
            var items = pair.EnumerateArray().ToList();
            map.Add(items[0].GetString()!, items[1].GetString()!);
        }
        return map;
    }
}
