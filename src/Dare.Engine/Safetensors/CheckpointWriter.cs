using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace Dare.Engine.Safetensors;

/// <summary>A tensor the writer will receive: its header entry is known before its data.</summary>
public sealed record PlannedTensor(string Name, SafetensorsDType DType, long[] Shape)
{
    public long ByteLength => Shape.Aggregate(1L, (a, b) => checked(a * b)) * DType.ElementSize();
}

public sealed class CheckpointWriteOptions
{
    public const long DefaultMaxShardSize = 5_000_000_000;

    /// <summary>Tensor bytes per shard; one model.safetensors when the total fits.</summary>
    public long MaxShardSize { get; init; } = DefaultMaxShardSize;

    /// <summary>The file name of a single-shard output (an adapter is adapter_model.safetensors).</summary>
    public string SingleFileName { get; init; } = Checkpoint.SingleFileName;

    /// <summary>Entries for __metadata__ (format: pt is always added).</summary>
    public IReadOnlyDictionary<string, string>? Metadata { get; init; }

    /// <summary>Replace an existing non-empty destination that holds only a model export (only after the new output is complete).</summary>
    public bool Force { get; init; }

    /// <summary>The input models: folders the destination must not be, hold or lie inside, and single-file models it must not hold.</summary>
    public IReadOnlyList<string> ProtectedPaths { get; init; } = Array.Empty<string>();

    /// <summary>The caller's current location, which is never replaced.</summary>
    public string? CurrentLocation { get; init; }

    /// <summary>Folder to copy config.json, generation_config.json and tokenizer files from.</summary>
    public string? CopySideFilesFrom { get; init; }

    /// <summary>Folder to copy the tokenizer files (<see cref="TokenizerFiles"/>) from instead of <see cref="CopySideFilesFrom"/> (a model's vocabulary).</summary>
    public string? TokenizerFilesFrom { get; init; }

    /// <summary>When set, config.json's torch_dtype is rewritten to this type.</summary>
    public SafetensorsDType? ConfigDType { get; init; }

    /// <summary>config.json keys written with these values instead of the copied file's (a stack's num_hidden_layers).</summary>
    public IReadOnlyDictionary<string, JsonNode?>? ConfigChanges { get; init; }

    /// <summary>Extra text files to place in the output (e.g. dare_recipe.yml).</summary>
    public IReadOnlyDictionary<string, string>? ExtraFiles { get; init; }

    /// <summary>Integer fields of config.json to set in the copy (vocab_size of a merged vocabulary).</summary>
    public IReadOnlyDictionary<string, long>? ConfigUpdates { get; init; }

    /// <summary>
    /// Write shards around the page cache (O_DIRECT) where the platform and file system allow it; buffered otherwise.
    /// On by default unless the environment variable DARE_DIRECT_WRITES is 0.
    /// </summary>
    public bool DirectWrites { get; init; } = OutputFile.DirectWritesByDefault;

    /// <summary>When set, every float chunk appended is scanned for NaN/Inf and reported there (per tensor).</summary>
    public NonFiniteGuard? NonFinite { get; init; }

    /// <summary>
    /// Receives warnings (a side file skipped, leftover temporary folders reclaimed, an old model that could not be
    /// removed); called on the thread that calls <see cref="CheckpointWriter.Create"/> or <see cref="CheckpointWriter.Commit"/>.
    /// </summary>
    public Action<string>? Warning { get; init; }
}

/// <summary>What a completed write produced.</summary>
public sealed record CheckpointWriteResult(string Path, IReadOnlyList<string> Files, int TensorCount, long TensorBytes);

/// <summary>
/// Streams tensors into a Hugging Face model folder. Headers are written first (shapes are known up front), then
/// tensor data in plan order as it is produced; nothing is buffered beyond the current write and one staging buffer
/// (see <see cref="OutputFile"/>: on Linux the shards bypass the page cache). Output goes to a
/// temporary folder <c>.dare-XXXXXXXX</c> beside the destination (with an owner record, see <see cref="TempFolderOwner"/>)
/// and is moved into place only by <see cref="Commit"/> (see <see cref="OutputFolder"/>); disposing an uncommitted
/// writer (failure, cancellation) deletes the temporary folder and leaves the destination untouched.
/// </summary>
public sealed partial class CheckpointWriter : IDisposable
{
    /// <summary>Side files copied from the source model folder.</summary>
    public static readonly string[] SideFiles =
    {
        "config.json", "generation_config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
        "special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json", "chat_template.json", "chat_template.jinja",
        "LICENSE", "LICENSE.txt", "LICENSE.md", "USE_POLICY.md",
    };

    /// <summary>The side files that make up a tokenizer: taken together from one folder.</summary>
    public static readonly string[] TokenizerFiles =
        { "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json" };

    private readonly string _destination;
    private readonly string _target;
    private readonly bool _fillInPlace;
    private readonly string _temporary;
    private readonly CheckpointWriteOptions _options;
    private readonly IReadOnlyList<PlannedShard> _shards;
    private int _shardIndex = -1;
    private int _tensorIndex = -1;
    private long _tensorBytesLeft;
    private long _nonFiniteInTensor;
    private OutputFile? _file;
    private bool _committed;
    // The shard files were written by partitions (see Partitions/) and are moved into the temporary folder before Commit.
    private bool _shardsStaged;

    private CheckpointWriter(string destination, (string Target, string TempParent, bool FillInPlace) location, string temporary, IReadOnlyList<PlannedShard> shards, CheckpointWriteOptions options)
    {
        _destination = destination;
        _target = location.Target;
        _fillInPlace = location.FillInPlace;
        _temporary = temporary;
        _shards = shards;
        _options = options;
    }

    public IReadOnlyList<string> ShardFileNames => _shards.Select(s => s.FileName).ToList();

    /// <summary>Whether the shard being written (or the last one) bypasses the page cache.</summary>
    internal bool WritesDirect { get; private set; }

    /// <summary>Checks the destination, plans shards, and creates the temporary folder. Nothing is written at the destination.</summary>
    public static CheckpointWriter Create(string destination, IReadOnlyList<PlannedTensor> tensors, CheckpointWriteOptions options)
    {
        destination = Path.TrimEndingDirectorySeparator(Path.GetFullPath(destination));
        OutputFolder.Check(destination, options.Force, options.ProtectedPaths, options.CurrentLocation);
        if (options.MaxShardSize < 1)
        {
            throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument, $"The shard size must be positive, not {options.MaxShardSize}.");
        }
        var duplicate = tensors.GroupBy(t => t.Name).FirstOrDefault(g => g.Count() > 1);
        if (duplicate is not null)
        {
            throw new DareException(DareErrorId.SafetensorsDuplicateTensor, DareErrorKind.InvalidArgument, $"Tensor '{duplicate.Key}' is planned twice for '{destination}'.");
        }
        var shards = ShardPlan.Of(tensors, options.MaxShardSize, options.SingleFileName);
        var location = OutputFolder.Locate(destination);
        var temporary = "";
        OutputFolder.Io(DareErrorId.OutputWriteFailed, "create a temporary folder in", location.TempParent, () =>
        {
            Directory.CreateDirectory(location.TempParent);
            OutputFolder.ReclaimOrphans(location.TempParent, options.Warning);
            var owner = TempFolderOwner.ForThisProcess(Path.GetFileName(location.Target), TempFolderRole.Temporary);
            temporary = owner.CreateFolderIn(location.TempParent);
        });
        return new CheckpointWriter(destination, location, temporary, shards, options);
    }

    /// <summary>
    /// Throws OutputExists if the destination is a file, or a non-empty folder and <paramref name="force"/> is not set;
    /// OutputNotReplaceable if it may not be replaced at all (see <see cref="OutputFolder.Check"/>).
    /// </summary>
    public static void CheckDestination(string destination, bool force) => OutputFolder.Check(destination, force);

    /// <summary>Declares that the next bytes belong to <paramref name="name"/>, which must be the next planned tensor.</summary>
    public void BeginTensor(string name)
    {
        if (_tensorBytesLeft != 0)
        {
            throw new InvalidOperationException($"Tensor '{CurrentTensor.Name}' is incomplete: {_tensorBytesLeft} bytes missing.");
        }
        AdvanceToNextTensor();
        if (CurrentTensor.Name != name)
        {
            throw new InvalidOperationException($"Expected tensor '{CurrentTensor.Name}' next, got '{name}'.");
        }
    }

    private PlannedTensor CurrentTensor => _shards[_shardIndex].Tensors[_tensorIndex];

    /// <summary>
    /// Where tensor <paramref name="name"/>'s first byte lies past a <see cref="DataAlignment"/> boundary of its file.
    /// Output in memory that far past a block boundary is in phase with the file, and an unbuffered file writes it
    /// from where it is (see <see cref="DirectOutputFile"/>); a tensor after one whose size is not a whole number of
    /// blocks (a norm of 1,536 bfloat16 values) would otherwise be copied through the file's staging buffer.
    /// </summary>
    internal int BlockPhase(string name)
    {
        if (_blockPhases is null)
        {
            // The data block starts on a boundary (BuildHeader pads the header), and the tensors follow in plan order.
            _blockPhases = new Dictionary<string, int>(StringComparer.Ordinal);
            foreach (var shard in _shards)
            {
                long offset = 0;
                foreach (var tensor in shard.Tensors)
                {
                    _blockPhases[tensor.Name] = (int)(offset % DataAlignment);
                    offset += tensor.ByteLength;
                }
            }
        }
        return _blockPhases[name];
    }

    private Dictionary<string, int>? _blockPhases;

    /// <summary>Bytes the shards written so far took from the caller's memory rather than through their staging buffers.</summary>
    internal long BytesWrittenInPlace => _writtenInPlaceBefore + (_file?.BytesWrittenInPlace ?? 0);

    private long _writtenInPlaceBefore;

    private void AdvanceToNextTensor()
    {
        if (_shardIndex < 0 || _tensorIndex + 1 >= _shards[_shardIndex].Tensors.Count)
        {
            FinishShard();
            _shardIndex++;
            _tensorIndex = -1;
            if (_shardIndex >= _shards.Count) throw new InvalidOperationException("More tensors were written than planned.");
            StartShard(_shards[_shardIndex]);
        }
        _tensorIndex++;
        _tensorBytesLeft = CurrentTensor.ByteLength;
    }

    /// <summary>The non-finite policy of this output (null: not checked).</summary>
    internal NonFiniteGuard? NonFinite => _options.NonFinite;

    /// <summary>
    /// Appends bytes of the current tensor, checked for NaN/Inf unless <paramref name="knownFinite"/> (their producer
    /// scanned them as it wrote them, while they were in its core's cache).
    /// </summary>
    public unsafe void Append(byte* data, long length, bool knownFinite = false)
    {
        if (length > _tensorBytesLeft)
        {
            throw new InvalidOperationException($"Tensor '{CurrentTensor.Name}' received {length} bytes with only {_tensorBytesLeft} left.");
        }
        if (_options.NonFinite is { } guard) CheckFinite(guard, data, length, knownFinite);
        while (length > 0)
        {
            var size = (int)Math.Min(length, 1 << 30);
            try
            {
                _file!.Write(new ReadOnlySpan<byte>(data, size));
            }
            catch (IOException ex)
            {
                throw OutputFolder.Failure(DareErrorId.OutputWriteFailed, $"write tensor '{CurrentTensor.Name}' to", _file!.Path, ex.Message, ex);
            }
            data += size;
            length -= size;
            _tensorBytesLeft -= size;
        }
    }

    /// <summary>Counts NaN/Inf in the bytes about to be written (none when <paramref name="knownFinite"/>); reports the tensor's total with its last bytes.</summary>
    private unsafe void CheckFinite(NonFiniteGuard guard, byte* data, long length, bool knownFinite)
    {
        var tensor = CurrentTensor;
        if (!FiniteCheck.Applies(tensor.DType)) return;
        if (!knownFinite && FiniteCheck.AnyNonFinite(data, length, tensor.DType)) _nonFiniteInTensor += FiniteCheck.CountNonFinite(data, length, tensor.DType);
        if (length == _tensorBytesLeft && _nonFiniteInTensor > 0)
        {
            var count = _nonFiniteInTensor;
            _nonFiniteInTensor = 0;
            guard.ReportOutput(tensor.Name, tensor.DType, count, tensor.ByteLength / tensor.DType.ElementSize(), _destination);
        }
    }

    /// <summary>Appends a contiguous CPU tensor's bytes to the current tensor.</summary>
    public unsafe void Append(Tensor tensor)
    {
        if (!tensor.is_contiguous()) throw new ArgumentException("The tensor must be contiguous.", nameof(tensor));
        if (tensor.dtype != CurrentTensor.DType.ToScalarType())
        {
            throw new ArgumentException($"Tensor '{CurrentTensor.Name}' is planned as {CurrentTensor.DType}, got {tensor.dtype}.", nameof(tensor));
        }
        Append(TensorMemory.Pointer(tensor), tensor.NumberOfElements * tensor.ElementSize);
    }

    /// <summary>Writes a whole tensor: <see cref="BeginTensor"/> then <see cref="Append(Tensor)"/>.</summary>
    public void WriteTensor(string name, Tensor tensor)
    {
        BeginTensor(name);
        Append(tensor);
    }

    private void StartShard(PlannedShard shard)
    {
        var path = Path.Combine(_temporary, shard.FileName);
        OutputFolder.Io(DareErrorId.OutputWriteFailed, "create", path, () => _file = OutputFile.Create(path, _options.DirectWrites));
        WritesDirect = _file!.IsDirect;
        var header = BuildHeader(shard.Tensors, _options.Metadata);
        Span<byte> length = stackalloc byte[8];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)header.Length);
        _file.Write(length);
        _file.Write(header);
    }

    private void FinishShard()
    {
        if (_file is null) return;
        OutputFolder.Io(DareErrorId.OutputWriteFailed, "complete", _file.Path, _file.Complete);
        _writtenInPlaceBefore += _file.BytesWrittenInPlace;
        _file.Dispose();
        _file = null;
    }

    /// <summary>
    /// Where each shard's data block starts: at a multiple of this many bytes, the header padded with spaces (which the
    /// format allows). Output chunks in block-aligned buffers are then in phase with the file wherever the tensors before
    /// them fill whole blocks (as a transformer's bfloat16 matrices do), and are written from where they are (see
    /// <see cref="DirectOutputFile"/>). A multiple of 8, the alignment readers expect.
    /// </summary>
    public const int DataAlignment = 4096;

    /// <summary>The JSON header, padded with spaces so the data block starts at a multiple of <see cref="DataAlignment"/> bytes.</summary>
    internal static byte[] BuildHeader(IEnumerable<PlannedTensor> tensors, IReadOnlyDictionary<string, string>? metadata)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            json.WriteStartObject("__metadata__");
            json.WriteString("format", "pt");
            foreach (var (key, value) in metadata ?? new Dictionary<string, string>())
            {
                if (key != "format") json.WriteString(key, value);
            }
            json.WriteEndObject();
            long offset = 0;
            foreach (var tensor in tensors)
            {
                json.WriteStartObject(tensor.Name);
                json.WriteString("dtype", tensor.DType.ToString());
                json.WriteStartArray("shape");
                foreach (var dimension in tensor.Shape) json.WriteNumberValue(dimension);
                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(offset);
                json.WriteNumberValue(offset + tensor.ByteLength);
                json.WriteEndArray();
                json.WriteEndObject();
                offset += tensor.ByteLength;
            }
            json.WriteEndObject();
        }
        // The data block starts after the 8-byte length and the header.
        var padded = (8 + buffer.Length + DataAlignment - 1) / DataAlignment * DataAlignment - 8;
        while (buffer.Length < padded) buffer.WriteByte((byte)' ');
        return buffer.ToArray();
    }

    /// <summary>Completes the output: flushes, writes the index and side files, then moves the folder into place.</summary>
    public CheckpointWriteResult Commit()
    {
        if (!_shardsStaged) FinishWriting();
        if (_shards.Count > 1) OutputFolder.Io(DareErrorId.OutputWriteFailed, "write the index in", _temporary, WriteIndex);
        OutputFolder.Io(DareErrorId.OutputWriteFailed, "copy side files into", _temporary, CopySideFiles);
        foreach (var (name, content) in _options.ExtraFiles ?? new Dictionary<string, string>())
        {
            var path = Path.Combine(_temporary, name);
            OutputFolder.Io(DareErrorId.OutputWriteFailed, "write", path, () => File.WriteAllText(path, content, new UTF8Encoding(false)));
        }
        // Every file and the folder reach the device before the rename makes them the destination.
        OutputFolder.Io(DareErrorId.OutputWriteFailed, "flush", _temporary, () => OutputFolder.FsyncTree(_temporary));
        CheckStillReplaceable();
        OutputFolder.Place(_temporary, _target, _fillInPlace, _options.Warning);
        _committed = true;
        var files = Directory.GetFiles(_destination).OrderBy(f => f, StringComparer.Ordinal).ToList();
        return new CheckpointWriteResult(_destination, files, _shards.Sum(s => s.Tensors.Count), _shards.Sum(s => s.Tensors.Sum(t => t.ByteLength)));
    }

    private void FinishWriting()
    {
        if (_tensorBytesLeft != 0 || _shardIndex != _shards.Count - 1 || (_shards.Count > 0 && _tensorIndex != _shards[^1].Tensors.Count - 1))
        {
            var planned = _shards.Sum(s => s.Tensors.Count);
            throw new InvalidOperationException($"Cannot commit '{_destination}': not every planned tensor ({planned}) was written.");
        }
        FinishShard();
    }

    /// <summary>
    /// A writer of some shards only (one partition's), into the existing folder <paramref name="folder"/>: no index, side
    /// files or move; <see cref="FinishShards"/> ends it. Disposing it unfinished deletes the folder.
    /// </summary>
    internal static CheckpointWriter ForShards(string folder, IReadOnlyList<PlannedShard> shards, CheckpointWriteOptions options) =>
        new(folder, (folder, Path.GetDirectoryName(folder)!, false), folder, shards, options);

    /// <summary>Flushes and closes the last shard of a <see cref="ForShards"/> writer once every tensor is written; the folder stays.</summary>
    internal void FinishShards()
    {
        FinishWriting();
        _committed = true;
    }

    /// <summary>
    /// A writer whose shard files already exist (written by partitions): the caller moves them into
    /// <see cref="TemporaryFolder"/>, then <see cref="Commit"/> writes the index and side files and publishes as usual.
    /// </summary>
    internal static CheckpointWriter ForStagedShards(string destination, IReadOnlyList<PlannedTensor> tensors, CheckpointWriteOptions options)
    {
        var writer = Create(destination, tensors, options);
        writer._shardsStaged = true;
        return writer;
    }

    /// <summary>The folder the output is assembled in before it is moved into place.</summary>
    internal string TemporaryFolder => _temporary;

    /// <summary>The destination may have changed while the model was written (another export, a user's file).</summary>
    private void CheckStillReplaceable()
    {
        try
        {
            OutputFolder.Check(_destination, _options.Force, _options.ProtectedPaths, _options.CurrentLocation);
        }
        catch (DareException ex) when (ex.ErrorId == DareErrorId.OutputExists && Directory.Exists(_destination))
        {
            throw OutputFolder.Failure(DareErrorId.OutputInUse, "move the new model into", _destination,
                "another process wrote there while this export ran (two exports to one folder?)", ex);
        }
    }

    public void Dispose()
    {
        _file?.Dispose();
        _file = null;
        if (_committed || _temporary.Length == 0) return;
        try
        {
            if (Directory.Exists(_temporary)) Directory.Delete(_temporary, recursive: true);
            TempFolderOwner.RemoveFor(_temporary);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            // The owner record stays with what is left, so the next export into this folder reclaims it.
        }
    }
}
