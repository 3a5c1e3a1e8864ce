using System.Text.Json;
using System.Text.Json.Nodes;
using Dare.Engine.Merge;

namespace Dare.Engine.Safetensors;

/// <summary>How a checkpoint's tensors are laid out on disk.</summary>
public enum CheckpointLayout
{
    /// <summary>A single .safetensors file given directly.</summary>
    File,
    /// <summary>A model folder with one model.safetensors (or one other .safetensors file).</summary>
    Folder,
    /// <summary>A model folder with model-0000i-of-0000N.safetensors shards and model.safetensors.index.json.</summary>
    Sharded,
}

/// <summary>
/// A model checkpoint opened lazily: every header is parsed and validated, no tensor data is read.
/// Either one .safetensors file or a Hugging Face model folder (single file or index + shards).
/// </summary>
public sealed partial class Checkpoint
{
    public const string IndexFileName = "model.safetensors.index.json";
    public const string SingleFileName = "model.safetensors";

    private readonly Dictionary<string, TensorInfo> _byName;

    private Checkpoint(string path, CheckpointLayout layout, IReadOnlyList<string> files, List<TensorInfo> tensors,
        IReadOnlyDictionary<string, string> metadata, JsonObject? config)
    {
        Path = path;
        Layout = layout;
        Files = SummarisedList.Joined(files);
        Tensors = SummarisedList.Counted(tensors, "tensor");
        Metadata = new SummarisedDictionary<string>(metadata.ToDictionary(e => e.Key, e => e.Value, StringComparer.Ordinal));
        _config = config;
        Config = config is null ? null : new SummarisedDictionary<object?>((Dictionary<string, object?>)ToPlain(config)!);
        _byName = tensors.ToDictionary(t => t.Name, StringComparer.Ordinal);
    }

    /// <summary>The file or folder the checkpoint was opened from (full path).</summary>
    public string Path { get; }

    /// <summary>A short name: the folder name, or the file name without extension.</summary>
    public string Name => Slices is { } slices ? string.Join("+", slices.Select(s => s.ToString()))
        : Layout == CheckpointLayout.File ? System.IO.Path.GetFileNameWithoutExtension(Path) : System.IO.Path.GetFileName(Path.TrimEnd('/', '\\'));

    /// <summary>The folder holding config.json and tokenizer files (the file's folder for a bare file).</summary>
    public string Directory => StackDirectory ?? (Layout == CheckpointLayout.File ? System.IO.Path.GetDirectoryName(Path)! : Path);

    public CheckpointLayout Layout { get; }
    public IReadOnlyList<string> Files { get; }

    /// <summary>All tensors, in file order (shards in index order).</summary>
    public IReadOnlyList<TensorInfo> Tensors { get; }

    /// <summary>__metadata__ of the first file (shards normally carry the same metadata).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>Parsed config.json when present.</summary>
    /// <remarks>Plain dictionaries, lists and scalars, so PowerShell reads it naturally: <c>$model.Config.hidden_size</c>.</remarks>
    public IReadOnlyDictionary<string, object?>? Config { get; }

    private readonly JsonObject? _config;

    public int TensorCount => Tensors.Count;
    public long ParameterCount => Tensors.Sum(t => t.ElementCount);
    public long SizeBytes => Tensors.Sum(t => t.ByteLength);

    /// <summary>e.g. "BF16 (291), F32 (2)".</summary>
    public string DTypeSummary => string.Join(", ", Tensors.GroupBy(t => t.DType).OrderByDescending(g => g.Count()).Select(g => $"{g.Key} ({g.Count()})"));

    /// <summary>Tokenizer files and config.json changes for an output whose vocabulary is not the base folder's (null: the base's).</summary>
    public VocabularyOutput? Vocabulary { get; private init; }

    /// <summary>
    /// This checkpoint with some tensors replaced by re-rowed ones (the base extended to a merged vocabulary); path,
    /// folder, metadata and config stay the same, so its side files are still copied from the base folder; a stack
    /// stays a stack (its slices, sources and config changes).
    /// </summary>
    internal Checkpoint WithReplacedTensors(IReadOnlyDictionary<string, TensorInfo> replaced, VocabularyOutput? vocabulary) =>
        new(Path, Layout, Files, Tensors.Select(t => replaced.GetValueOrDefault(t.Name) ?? t).ToList(), Metadata, _config)
        {
            Vocabulary = vocabulary,
            Slices = Slices,
            ConfigChanges = ConfigChanges,
            TensorSources = TensorSources,
            StackDirectory = StackDirectory,
        };

    public TensorInfo? Find(string name) => _byName.GetValueOrDefault(name);
    public bool Contains(string name) => _byName.ContainsKey(name);

    /// <summary>An integer field of config.json, if present (e.g. hidden_size, num_hidden_layers, vocab_size).</summary>
    public long? ConfigInt(string key) =>
        _config is not null && _config.TryGetPropertyValue(key, out var node) && node is JsonValue value && value.TryGetValue<long>(out var result) ? result : null;

    public override string ToString() => Path;

    /// <summary>
    /// Whether this checkpoint's tensors come from exactly the files <paramref name="other"/>'s come from: the same
    /// files (device and inode, so through a symlink or another path too), or, where the OS gives no inodes, the same
    /// full paths. A copy of a model is another model here, whatever its bytes.
    /// </summary>
    public bool HasSameFilesAs(Checkpoint other) => FilesKey == other.FilesKey;

    /// <summary>The files the tensors come from, as one string: their sorted device:inode pairs, or their sorted paths.</summary>
    private string FilesKey => _filesKey ??= ComputeFilesKey();
    private string? _filesKey;

    private string ComputeFilesKey()
    {
        var inodes = new SortedSet<string>(StringComparer.Ordinal);
        foreach (var tensor in Tensors)
        {
            if (tensor.FileIdentity is not { Inode: not 0 } id) return "paths\n" + string.Join("\n", Files.Order(StringComparer.Ordinal));
            inodes.Add($"{id.Device}:{id.Inode}");
        }
        return string.Join("\n", inodes);
    }

    /// <summary>Opens a .safetensors file or a model folder, reading and validating headers only.</summary>
    public static Checkpoint Open(string path)
    {
        var full = System.IO.Path.GetFullPath(path);
        if (File.Exists(full))
        {
            var file = SafetensorsFile.Open(full);
            return new Checkpoint(full, CheckpointLayout.File, new[] { full }, file.Tensors.ToList(), file.Metadata, ReadConfig(System.IO.Path.GetDirectoryName(full)!));
        }
        if (!System.IO.Directory.Exists(full))
        {
            throw new DareException(DareErrorId.PathNotFound, DareErrorKind.ObjectNotFound, $"Cannot find the checkpoint '{full}': no such file or folder.") { FilePath = full };
        }
        var config = ReadConfig(full);
        var index = System.IO.Path.Combine(full, IndexFileName);
        if (RegularFile.Check(index, "shard index").Kind == FileKind.Regular)
        {
            return OpenSharded(full, index, config);
        }
        var single = System.IO.Path.Combine(full, SingleFileName);
        var candidates = File.Exists(single)
            ? new[] { single }
            : System.IO.Directory.GetFiles(full, "*.safetensors").OrderBy(f => f, StringComparer.Ordinal).ToArray();
        if (candidates.Length == 0 && PickleFiles(full) is { Length: > 0 } pickles)
        {
            throw new DareException(DareErrorId.NoSafetensorsFound, DareErrorKind.ObjectNotFound,
                $"The folder '{full}' holds only pickle weights ({string.Join(", ", pickles.Take(3))}); Dare never unpickles (loading a pickle can run arbitrary code). Convert the model to safetensors first, for example with transformers: AutoModel.from_pretrained(...).save_pretrained(folder, safe_serialization=True).") { FilePath = full };
        }
        if (candidates.Length == 0)
        {
            throw new DareException(DareErrorId.NoSafetensorsFound, DareErrorKind.ObjectNotFound,
                $"The folder '{full}' holds no model.safetensors, no {IndexFileName} and no other .safetensors file.") { FilePath = full };
        }
        if (candidates.Length > 1)
        {
            throw new DareException(DareErrorId.SafetensorsIndexInvalid, DareErrorKind.InvalidData,
                $"The folder '{full}' holds {candidates.Length} .safetensors files but no {IndexFileName} saying which tensor is where.") { FilePath = full };
        }
        var only = SafetensorsFile.Open(candidates[0]);
        return new Checkpoint(full, CheckpointLayout.Folder, candidates, only.Tensors.ToList(), only.Metadata, config);
    }

    /// <summary>PyTorch pickle weight files in a folder (pytorch_model*.bin, *.pt, *.pth, *.ckpt).</summary>
    private static string[] PickleFiles(string folder) =>
        new[] { "*.bin", "*.pt", "*.pth", "*.ckpt" }.SelectMany(p => System.IO.Directory.GetFiles(folder, p)).Select(System.IO.Path.GetFileName).OfType<string>()
            .Where(f => !f.Equals("training_args.bin", StringComparison.Ordinal)).Order(StringComparer.Ordinal).ToArray();

    private static Checkpoint OpenSharded(string folder, string indexPath, JsonObject? config)
    {
        var weightMap = ReadWeightMap(indexPath);
        var shardNames = weightMap.Values.Distinct(StringComparer.Ordinal).OrderBy(s => s, StringComparer.Ordinal).ToList();
        var tensors = new List<TensorInfo>();
        var files = new List<string>();
        IReadOnlyDictionary<string, string>? metadata = null;
        var owner = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var shardName in shardNames)
        {
            var shardPath = System.IO.Path.GetFullPath(System.IO.Path.Combine(folder, shardName));
            if (!File.Exists(shardPath))
            {
                throw new DareException(DareErrorId.SafetensorsShardMissing, DareErrorKind.ObjectNotFound,
                    $"'{indexPath}' maps tensors to '{shardName}', which does not exist in '{folder}'.") { FilePath = shardPath };
            }
            var shard = SafetensorsFile.Open(shardPath);
            metadata ??= shard.Metadata;
            files.Add(shardPath);
            foreach (var tensor in shard.Tensors)
            {
                if (owner.TryGetValue(tensor.Name, out var other))
                {
                    throw new DareException(DareErrorId.SafetensorsDuplicateTensor, DareErrorKind.InvalidData,
                        $"Tensor '{tensor.Name}' is stored in both '{other}' and '{shardName}' in '{folder}'.") { FilePath = shardPath, TensorName = tensor.Name };
                }
                owner[tensor.Name] = shardName;
                if (!weightMap.TryGetValue(tensor.Name, out var mapped) || mapped != shardName)
                {
                    throw new DareException(DareErrorId.SafetensorsIndexInvalid, DareErrorKind.InvalidData,
                        $"Shard '{shardPath}' holds tensor '{tensor.Name}', which '{indexPath}' " +
                        (mapped is null ? "does not list." : $"maps to '{mapped}'.")) { FilePath = shardPath, TensorName = tensor.Name };
                }
                tensors.Add(tensor);
            }
        }
        foreach (var (name, shardName) in weightMap)
        {
            if (!owner.ContainsKey(name))
            {
                var shardPath = System.IO.Path.Combine(folder, shardName);
                throw new DareException(DareErrorId.SafetensorsTensorMissingFromShard, DareErrorKind.InvalidData,
                    $"'{indexPath}' maps tensor '{name}' to '{shardName}', but that shard does not contain it.") { FilePath = shardPath, TensorName = name };
            }
        }
        return new Checkpoint(folder, CheckpointLayout.Sharded, files, tensors, metadata ?? new Dictionary<string, string>(), config);
    }

    private static Dictionary<string, string> ReadWeightMap(string indexPath)
    {
        DareException Bad(string reason, Exception? inner = null) =>
            new(DareErrorId.SafetensorsIndexInvalid, DareErrorKind.InvalidData, $"'{indexPath}' is not a valid shard index: {reason}.", inner) { FilePath = indexPath };
        JsonNode? root;
        RegularFile.Check(indexPath, "shard index");
        try
        {
            root = ParseStrict(File.ReadAllBytes(indexPath), maxDepth: 16);
        }
        catch (Exception ex) when (IsJsonFailure(ex))
        {
            throw Bad($"not valid JSON ({ex.Message})", ex);
        }
        if (root is not JsonObject rootObject || rootObject["weight_map"] is not JsonObject weightMap)
        {
            throw Bad("it has no 'weight_map' object");
        }
        var result = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (name, value) in weightMap)
        {
            if (value is not JsonValue fileValue || !fileValue.TryGetValue<string>(out var file) || string.IsNullOrEmpty(file))
            {
                throw Bad($"the weight_map entry for '{name}' is not a file name");
            }
            if (file.Contains('/') || file.Contains('\\') || file.Contains(".."))
            {
                throw Bad($"the weight_map entry for '{name}' ('{file}') points outside the model folder");
            }
            result[name] = file;
        }
        if (result.Count == 0) throw Bad("its weight_map is empty");
        return result;
    }

    /// <summary>
    /// Parses JSON and fails now rather than later: JsonNode builds objects lazily, so a duplicated key
    /// (ArgumentException) or invalid UTF-8 inside a string (InvalidOperationException) would otherwise surface only
    /// when a caller first touches that part of the tree. Strict UTF-8 first, then one full walk.
    /// </summary>
    private static JsonNode? ParseStrict(byte[] json, int maxDepth)
    {
        _ = new System.Text.UTF8Encoding(false, throwOnInvalidBytes: true).GetCharCount(json);
        var root = JsonNode.Parse(json, documentOptions: new JsonDocumentOptions { MaxDepth = maxDepth });
        Materialise(root);
        return root;
    }

    private static void Materialise(JsonNode? node)
    {
        switch (node)
        {
            case JsonObject o:
                foreach (var (_, child) in o) Materialise(child);
                break;
            case JsonArray a:
                foreach (var child in a) Materialise(child);
                break;
        }
    }

    private static bool IsJsonFailure(Exception ex) =>
        ex is JsonException or System.Text.DecoderFallbackException or ArgumentException or InvalidOperationException;

    private static object? ToPlain(JsonNode? node) => node switch
    {
        null => null,
        JsonObject o => o.ToDictionary(p => p.Key, p => ToPlain(p.Value)),
        JsonArray a => a.Select(ToPlain).ToArray(),
        JsonValue v when v.TryGetValue<long>(out var integer) => integer,
        JsonValue v when v.TryGetValue<double>(out var number) => number,
        JsonValue v when v.TryGetValue<bool>(out var flag) => flag,
        JsonValue v when v.TryGetValue<string>(out var text) => text,
        _ => node.ToJsonString(),
    };

    private static JsonObject? ReadConfig(string folder)
    {
        var path = System.IO.Path.Combine(folder, "config.json");
        // Stat first: File.Exists is true for a FIFO, and reading one blocks until a writer comes (maybe never).
        if (RegularFile.Check(path, "model config").Kind == FileKind.Missing) return null;
        try
        {
            return ParseStrict(File.ReadAllBytes(path), maxDepth: 64) as JsonObject;
        }
        catch (Exception ex) when (IsJsonFailure(ex))
        {
            throw new DareException(DareErrorId.ConfigInvalid, DareErrorKind.InvalidData, $"'{path}' is not valid JSON: {ex.Message}", ex) { FilePath = path };
        }
    }
}
