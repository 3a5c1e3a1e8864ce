using System.Diagnostics;
using Dare.Engine.Partitions;
using Dare.Engine.Safetensors;
using TorchSharp;
using static TorchSharp.torch;

namespace Dare.Engine.Merge;

public sealed class ExportOptions
{
    public required string Destination { get; init; }

    /// <summary>Output dtype for float tensors; null keeps each base tensor's dtype. Integer and bool tensors are never converted.</summary>
    public SafetensorsDType? OutputDType { get; init; }

    public long MaxShardSize { get; init; } = CheckpointWriteOptions.DefaultMaxShardSize;

    /// <summary>Write λ·merged δ only, instead of base + λ·merged δ.</summary>
    public bool DeltaOnly { get; init; }

    public bool Force { get; init; }

    /// <summary>Input models (folders or single files) the output must not replace, besides the vector's own (e.g. a recipe batch's inputs).</summary>
    public IReadOnlyList<string> ProtectedPaths { get; init; } = Array.Empty<string>();

    /// <summary>The caller's current location, which is never replaced.</summary>
    public string? CurrentLocation { get; init; }

    /// <summary>Write NaN/Inf (in the inputs, or produced by the merge or the output dtype) with a warning per tensor instead of failing.</summary>
    public bool AllowNonFinite { get; init; }

    /// <summary>The recipe that reproduces this output; stored as dare_recipe.yml, and in __metadata__ with model paths replaced by names.</summary>
    public string? RecipeYaml { get; init; }

    /// <summary>Model references as the user wrote them, by full path (for mergekit_config.yml and the model card); else paths and names.</summary>
    public IReadOnlyDictionary<string, string>? ModelReferences { get; init; }

    /// <summary>Write only this partition's shards into the staging folder beside the destination (publishing when it is the last); null: the whole export.</summary>
    public ExportPartition? Partition { get; init; }

    /// <summary>Where the merge math runs: null or cpu for the SIMD kernels, else the TorchSharp backend on that device (see <see cref="ComputeDevice"/>).</summary>
    public ComputeDevice? Device { get; init; }
}

/// <summary>
/// Runs task-vector plans tensor by tensor: the mechanics only (the one tensor loop, reading and read-ahead,
/// sinks, cancellation, progress, profile). Each tensor is merged by <see cref="TensorMerger"/> (inputs, transforms,
/// the method's passes and combine) in chunks of at most <see cref="ChunkElements"/> elements, and handed on before
/// the next tensor is touched, so memory is bounded by a few chunks whatever the model size. Chunks live in a
/// <see cref="ChunkWorkspace"/> of native buffers, so a merge on the CPU kernels never loads libtorch; what computes
/// with torch (the tensor backend, LoRA inputs) scopes its own tensors.
/// </summary>
public sealed class MergeExecutor
{
    public const long DefaultChunkElements = 16L << 20;

    /// <summary>
    /// How many tensors ahead the reads are started: with one, a cold run waited for the disk whenever a tensor was
    /// computed faster than the next one's first chunk arrived; two keep the disk busy at ~2 chunks per input in flight.
    /// </summary>
    private const int TensorsAhead = 2;
    public const string RecipeFileName = "dare_recipe.yml";

    /// <summary>Longest recipe stored whole in the safetensors __metadata__; longer ones are stored as a note with their SHA-256.</summary>
    public const int MaxRecipeInHeader = 64 * 1024;

    private readonly IMergeObserver? _observer;
    private readonly CancellationToken _cancellation;
    private readonly PhaseProfile? _profile = PhaseProfile.FromEnvironment();

    public MergeExecutor(IMergeObserver? observer = null, CancellationToken cancellation = default, long chunkElements = DefaultChunkElements)
    {
        if (chunkElements < 1) throw new ArgumentOutOfRangeException(nameof(chunkElements));
        _observer = observer;
        _cancellation = cancellation;
        ChunkElements = chunkElements;
    }

    public long ChunkElements { get; }

    /// <summary>Whether a method's single-pass bfloat16 route is taken where offered (off only to compare the routes in tests).</summary>
    internal bool SinglePassLinear { get; init; } = true;

    /// <summary>See <see cref="TiesTensorMerge.DefaultSurvivorSigmas"/> (changed only in tests).</summary>
    internal double SurvivorSigmas { get; init; } = TiesTensorMerge.DefaultSurvivorSigmas;

    /// <summary>
    /// Take the fused TIES routes (the single pass, the counted route) even where the processor lacks AVX-512 and
    /// their scalar bodies run instead (tests only: so that the routes are tested on every machine; the same bytes).
    /// </summary>
    internal bool FusedOnAnyProcessor { get; init; }

    /// <summary>Writes base + λ·δ (or δ alone) as a Hugging Face model folder, atomically.</summary>
    public ExportResult Export(TaskVector vector, ExportOptions options)
    {
        var clock = Stopwatch.StartNew();
        // A device TorchSharp cannot use is refused before anything is read or written.
        options.Device?.EnsureAvailable();
        WarnAboutMissingTensors(vector);
        var tensors = options.DeltaOnly ? vector.Base.Tensors.Where(t => t.DType.IsMergeable()).ToList() : vector.Base.Tensors.ToList();
        var plan = tensors.Select(t => new PlannedTensor(t.Name, OutputDTypeOf(t, options), t.Shape)).ToList();
        var metadata = new Dictionary<string, string>
        {
            ["dare_version"] = typeof(MergeExecutor).Assembly.GetName().Version?.ToString(3) ?? "0",
            ["dare_content"] = options.DeltaOnly ? "delta" : "model",
        };
        // The header must stay far below readers' limits (ours is 100 MB); a large recipe lives in dare_recipe.yml only.
        // No absolute local paths in the header: models by name, with sizes and header hashes that identify them.
        if (options.RecipeYaml is not null) metadata["dare_inputs"] = InputFingerprints(vector);
        if (options.RecipeYaml is { } givenRecipe && WithoutPaths(givenRecipe, vector) is var recipe) metadata["dare_recipe"] = recipe.Length <= MaxRecipeInHeader ? recipe
            : $"# {recipe.Length} characters, too long for the header: see {RecipeFileName} (SHA-256 {Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(recipe))).ToLowerInvariant()})";
        var nonFinite = new NonFiniteGuard(options.AllowNonFinite, _observer is null ? null : _observer.Warning);
        var writeOptions = new CheckpointWriteOptions
        {
            MaxShardSize = options.MaxShardSize,
            Metadata = metadata,
            Force = options.Force,
            ProtectedPaths = options.ProtectedPaths.Concat(OutputFolder.InputPathsOf(vector)).ToList(),
            CurrentLocation = options.CurrentLocation,
            CopySideFilesFrom = vector.Base.Directory,
            TokenizerFilesFrom = vector.Base.Vocabulary?.TokenizerFilesFrom,
            ConfigChanges = vector.Base.ConfigChanges,
            ConfigDType = options.OutputDType,
            ConfigUpdates = vector.Base.Vocabulary is { } vocabulary ? new Dictionary<string, long> { ["vocab_size"] = vocabulary.VocabSize } : null,
            ExtraFiles = ExtraFiles(vector, options),
            NonFinite = nonFinite,
            Warning = _observer is null ? null : _observer.Warning,
        };

        if (options.Partition is { } partition) return ExportOnePartition(vector, tensors, plan, writeOptions, options, partition, nonFinite, clock);
        using var writer = CheckpointWriter.Create(options.Destination, plan, writeOptions);
        var drops = new DropCounts();
        var (bytesRead, background) = WriteTensors(vector, tensors, writer, plan, options, nonFinite, "Merging", drops);
        CheckpointWriteResult written;
        using (PhaseProfile.Time(_profile, Phase.Commit)) written = writer.Commit();
        BytesWrittenInPlace += writer.BytesWrittenInPlace;
        ReportProfile(clock, background);
        return new ExportResult(written.Path, written.Files, written.TensorCount, written.TensorBytes, bytesRead, clock.Elapsed)
        {
            RealisedDropRate = drops.Elements > 0 ? (double)drops.Dropped / drops.Elements : null,
        };
    }

    /// <summary>
    /// One partition of the export: the same plan, shard plan and bytes as <see cref="Export"/>, but only this partition's
    /// shards are computed, written to its staging folder and sealed; the last partition to seal publishes the whole.
    /// </summary>
    private ExportResult ExportOnePartition(TaskVector vector, IReadOnlyList<TensorInfo> tensors, IReadOnlyList<PlannedTensor> plan,
        CheckpointWriteOptions writeOptions, ExportOptions options, ExportPartition partition, NonFiniteGuard nonFinite, Stopwatch clock)
    {
        OutputFolder.Check(options.Destination, options.Force, writeOptions.ProtectedPaths, writeOptions.CurrentLocation);
        var partitionPlan = PartitionPlan.For(options.Destination, plan, writeOptions);
        var staging = PartitionStaging.Join(options.Destination, partitionPlan, partition);
        var shards = staging.ShardsOf(partition.Index);
        var mine = shards.SelectMany(s => s.Tensors).Select(t => t.Name).ToHashSet(StringComparer.Ordinal);
        var folder = staging.BeginPartition(partition);
        long bytesRead;
        TimeSpan background;
        using (var writer = CheckpointWriter.ForShards(folder, shards, partitionPlan.WriteOptions(writeOptions)))
        {
            (bytesRead, background) = WriteTensors(vector, tensors.Where(t => mine.Contains(t.Name)).ToList(), writer, plan, options, nonFinite, $"Merging partition {partition}", new DropCounts());
            using (PhaseProfile.Time(_profile, Phase.Commit)) writer.FinishShards();
            BytesWrittenInPlace += writer.BytesWrittenInPlace;
        }
        staging.Seal(partition, folder);
        var bytes = shards.Sum(s => s.TensorBytes);
        _observer?.Verbose($"Partition {partition} of '{options.Destination}': {shards.Count} of {partitionPlan.Shards.Count} shard(s), {ByteSize.Format(bytes)}, sealed in '{staging.PartFolder(partition.Index)}'.");
        CheckpointWriteResult? published;
        using (PhaseProfile.Time(_profile, Phase.Commit)) published = staging.TryComplete(writeOptions);
        ReportProfile(clock, background);
        if (published is not null)
        {
            _observer?.Verbose($"Partition {partition} was the last to finish: verified all {partition.Count} partitions and published '{published.Path}'.");
            return new ExportResult(published.Path, published.Files, published.TensorCount, published.TensorBytes, bytesRead, clock.Elapsed) { Partition = partition.ToString(), Published = true };
        }
        var files = shards.Select(s => Path.Combine(staging.PartFolder(partition.Index), s.FileName)).ToList();
        return new ExportResult(staging.PartFolder(partition.Index), files, mine.Count, bytes, bytesRead, clock.Elapsed) { Partition = partition.ToString(), Published = false };
    }

    /// <summary>Input bytes this executor's exports read ahead into buffers of their own (see <see cref="BufferedReadAhead"/>).</summary>
    internal long BytesReadAhead { get; private set; }

    /// <summary>Output bytes this executor's exports wrote from their output buffers rather than copying them through the files' staging buffers (see <see cref="CheckpointWriter.BlockPhase"/>).</summary>
    internal long BytesWrittenInPlace { get; private set; }

    /// <summary>Tensors whose TIES presample was read from the input files rather than computed in a pass (see TensorMerger); in the profile.</summary>
    internal int TensorsPresampledFromFiles { get; private set; }

    /// <summary>Tensors merged by counting passes over their stored bytes and one fused pass (see <see cref="IBFloat16CountedPass"/>); in the profile.</summary>
    internal int TensorsCounted { get; private set; }

    private void ReportProfile(Stopwatch clock, TimeSpan background)
    {
        if (_profile is null) return;
        foreach (var line in _profile.Report(clock.Elapsed)) _observer?.Verbose(line);
        _observer?.Verbose(string.Format(System.Globalization.CultureInfo.InvariantCulture,
            "profile: {0,-10} {1,8:0.000} GB     (inputs read ahead into buffers of their own)", "(Read ahead)", BytesReadAhead / 1e9));
        _observer?.Verbose(string.Format(System.Globalization.CultureInfo.InvariantCulture,
            "profile: {0,-10} {1,8:0.000} GB     (output written from where it was computed, not copied through a staging buffer)", "(In place)", BytesWrittenInPlace / 1e9));
        _observer?.Verbose(string.Format(System.Globalization.CultureInfo.InvariantCulture,
            "profile: {0,-10} {1,8:0.000} s        (background writes, overlapped with the phases above; Write is the wait for them)", "(Writer)", background.TotalSeconds));
        _observer?.Verbose(string.Format(System.Globalization.CultureInfo.InvariantCulture,
            "profile: {0,-10} {1,8} tensors  counted over their stored bytes, then one fused pass; {2} presampled from the input files", "(TIES)", TensorsCounted, TensorsPresampledFromFiles));
    }

    /// <summary>Computes <paramref name="tensors"/> in order and writes them through <paramref name="writer"/>, adding DARE's drop counts to <paramref name="drops"/>; returns the bytes read and the background write time.</summary>
    private (long BytesRead, TimeSpan Background) WriteTensors(TaskVector vector, IReadOnlyList<TensorInfo> tensors, CheckpointWriter writer, IReadOnlyList<PlannedTensor> plan, ExportOptions options,
        NonFiniteGuard nonFinite, string activity, DropCounts drops)
    {
        var backend = options.Device is { UsesTorchBackend: true } torchBackend ? torchBackend : null;
        using var reader = new TensorReader(nonFinite);
        // The tensor backend copies its results into the output buffers as tensors.
        using var workspace = new ChunkWorkspace { TorchBuffers = backend is not null };
        // Disposed first: waits for the writes still queued before the buffers and the writer go.
        using var appender = new BackgroundAppender(writer);
        using var device = backend is null ? null : new DeviceTensorMerger(backend, reader, _profile, _cancellation);
        var merger = new TensorMerger(new ChunkReader(reader, workspace, _profile), ChunkElements, SinglePassLinear, _cancellation) { Device = device, SurvivorSigmas = SurvivorSigmas, FusedOnAnyProcessor = FusedOnAnyProcessor };
        var outputTypes = plan.ToDictionary(p => p.Name, p => p.DType, StringComparer.Ordinal);
        var bytesRead = ForEachTensor(vector, tensors, reader, activity, (info, layout) =>
        {
            appender.BeginTensor(info.Name);
            if (!info.DType.IsMergeable()) CopyAsStored(reader, workspace, appender, info);
            else drops.Add(merger.Merge(vector, info, layout, new ExportSink(appender, workspace, outputTypes[info.Name], options.DeltaOnly, _profile)));
            _observer?.Verbose($"{info.Name} {info.ShapeText} {info.DType} -> {outputTypes[info.Name]}");
        }, readsOnce: (info, layout) => merger.ReadsOnce(vector, info, layout, ExportSink.WritesDirectlyAs(outputTypes[info.Name])));
        using (PhaseProfile.Time(_profile, Phase.Write)) appender.Finish();
        BytesReadAhead += reader.BufferedBytesServed;
        TensorsPresampledFromFiles += merger.TensorsPresampledFromFiles;
        TensorsCounted += merger.TensorsCounted;
        _cancellation.ThrowIfCancellationRequested();
        return (bytesRead, appender.BackgroundTime);
    }

    /// <summary>A tensor the merge does not change (integers, FP8), copied as stored a chunk at a time through the output buffers.</summary>
    private unsafe void CopyAsStored(TensorReader reader, ChunkWorkspace workspace, BackgroundAppender appender, TensorInfo info)
    {
        for (long first = 0; first < info.ElementCount; first += ChunkElements)
        {
            var count = Math.Min(ChunkElements, info.ElementCount - first);
            var bytes = workspace.NextOutput(SafetensorsDType.U8, count * info.DType.ElementSize(), appender.NextBlockPhase);
            using (PhaseProfile.Time(_profile, Phase.Read)) reader.ReadElements(info, first, count, bytes.Data);
            using (PhaseProfile.Time(_profile, Phase.Write)) appender.AppendAsync((IntPtr)bytes.Data, bytes.ByteLength);
        }
    }

    /// <summary>The task vector's float32 δ for one tensor, in the tensor's shape. The caller owns (disposes) it.</summary>
    public unsafe Tensor ComputeDelta(TaskVector vector, string tensorName)
    {
        var info = vector.Base.Find(tensorName) ?? throw new DareException(DareErrorId.TensorNotFound, DareErrorKind.ObjectNotFound,
            $"The base model '{vector.Base.Path}' has no tensor '{tensorName}'.") { TensorName = tensorName };
        if (!info.DType.IsMergeable())
        {
            throw new DareException(DareErrorId.TensorDTypeMismatch, DareErrorKind.InvalidArgument,
                $"Tensor '{tensorName}' is {info.DType}; only floating-point tensors have a task vector (others are copied from the base).") { TensorName = tensorName };
        }
        TorchRuntime.EnsureInitialized();
        // The flat tensor is released on return (also on failure); the returned view keeps the storage alive.
        using var result = zeros(new[] { info.ElementCount }, ScalarType.Float32);
        var resultData = (float*)TensorMemory.Pointer(result);
        using var reader = new TensorReader();
        using var workspace = new ChunkWorkspace();
        new TensorMerger(new ChunkReader(reader, workspace, _profile), ChunkElements, SinglePassLinear, _cancellation)
            .Merge(vector, info, ModelLayout.Of(vector.Base), new DeltaSink((first, delta) => Buffer.MemoryCopy(delta.Data, resultData + first, delta.ByteLength, delta.ByteLength)));
        return result.view(info.Shape);
    }

    /// <summary>
    /// Streams every float tensor of the vector through <paramref name="consume"/> (tensor, chunk start, δ chunk) and
    /// returns the DARE drop counts; <paramref name="tensorDone"/>, when given, receives each tensor's own counts.
    /// </summary>
    internal DropCounts StreamDeltas(TaskVector vector, Action<TensorInfo, long, ChunkView> consume, string activity, Func<TensorInfo, bool>? include = null,
        Action<TensorInfo, DropCounts>? tensorDone = null)
    {
        var tensors = vector.Base.Tensors.Where(t => t.DType.IsMergeable() && (include?.Invoke(t) ?? true)).ToList();
        var counts = new DropCounts();
        using var reader = new TensorReader();
        using var workspace = new ChunkWorkspace();
        var merger = new TensorMerger(new ChunkReader(reader, workspace, _profile), ChunkElements, SinglePassLinear, _cancellation);
        ForEachTensor(vector, tensors, reader, activity, (info, layout) =>
        {
            var drops = merger.Merge(vector, info, layout, new DeltaSink((first, delta) => consume(info, first, delta)));
            counts.Add(drops);
            tensorDone?.Invoke(info, drops);
        }, countInputs: false);
        return counts;
    }

    /// <summary>
    /// The one tensor loop: progress, cancellation, read-ahead of the next tensors' first chunks, and
    /// <paramref name="process"/>(tensor, layer count) per tensor. Returns the bytes read (base and inputs, or
    /// the base's alone when <paramref name="countInputs"/> is false, as progress counts them).
    /// </summary>
    private long ForEachTensor(TaskVector vector, IReadOnlyList<TensorInfo> tensors, TensorReader reader, string activity, Action<TensorInfo, ModelLayout> process, bool countInputs = true,
        Func<TensorInfo, ModelLayout, bool>? readsOnce = null)
    {
        var clock = Stopwatch.StartNew();
        var layout = ModelLayout.Of(vector.Base);
        var perByte = countInputs ? 1 + vector.Leaves.Count : 1;
        var totalBytes = tensors.Sum(t => t.ByteLength) * perByte;
        long bytesDone = 0;
        for (var i = 0; i < tensors.Count; i++)
        {
            _cancellation.ThrowIfCancellationRequested();
            var info = tensors[i];
            _observer?.Progress(new MergeProgress(activity, i, tensors.Count, bytesDone, totalBytes, clock.Elapsed, info.Name));
            // The tensor TensorsAhead ahead (at the start, every one up to there): past the page cache, every chunk of it
            // in order, when the tensor is read once (by default: when it fits in one chunk, which is kept for every
            // pass); else its first chunk. In order, a file is read as it lies: asked for at the tensor's start, a
            // tensor's later chunks came after the next tensors' first ones, and the kernel's read-ahead past its last
            // chunk read their first megabytes again, already merged, to stay in the page cache (a cold 31 GB
            // DARE-linear read 34.2 GB from the disk and left 3 GB cached).
            for (var next = i == 0 ? 0 : i + TensorsAhead; next <= i + TensorsAhead && next < tensors.Count; next++)
            {
                var tensor = tensors[next];
                if (readsOnce?.Invoke(tensor, layout) ?? tensor.ElementCount <= ChunkElements) TensorMerger.PrefetchReadOnce(reader, vector, tensor, ChunkElements);
                else TensorMerger.Prefetch(reader, vector, tensor, 0, Math.Min(tensor.ElementCount, ChunkElements));
            }
            process(info, layout);
            reader.Release(info.Name);
            bytesDone += info.ByteLength * perByte;
        }
        if (countInputs) _observer?.Progress(new MergeProgress(activity, tensors.Count, tensors.Count, bytesDone, totalBytes, clock.Elapsed, null));
        return bytesDone;
    }

    /// <summary>The recipe with mergekit_config.yml and the model card beside it, and an output vocabulary's tokenizer files.</summary>
    private static Dictionary<string, string>? ExtraFiles(TaskVector vector, ExportOptions options)
    {
        var files = new Dictionary<string, string>(vector.Base.Vocabulary?.Files ?? new Dictionary<string, string>(), StringComparer.Ordinal);
        if (options.RecipeYaml is { } recipe)
        {
            // The recipe file also records the inputs' files, which a replay checks first (the header keeps no paths).
            files[RecipeFileName] = recipe + Recipes.InputFingerprints.Section(vector);
            if (!options.DeltaOnly)
            {
                var config = Recipes.ModelCardWriter.MergekitConfig(vector, options.ModelReferences, options.OutputDType);
                files[Recipes.ModelCardWriter.MergekitConfigFileName] = config;
                files[Recipes.ModelCardWriter.ModelCardFileName] = Recipes.ModelCardWriter.ModelCard(vector, config, options.ModelReferences);
            }
        }
        return files.Count == 0 ? null : files;
    }

    /// <summary>The recipe with each model's absolute path replaced by its folder name.</summary>
    private static string WithoutPaths(string recipe, TaskVector vector)
    {
        foreach (var model in vector.Sources.Prepend(vector.Base).OrderByDescending(m => m.Path.Length)) recipe = recipe.Replace(model.Path, model.Name, StringComparison.Ordinal);
        return recipe;
    }

    /// <summary>JSON list of the inputs: role, name, total bytes and the SHA-256 of their safetensors headers, so a replay can tell the same inputs.</summary>
    private static string InputFingerprints(TaskVector vector)
    {
        var list = new System.Text.Json.Nodes.JsonArray();
        foreach (var (role, model) in vector.Sources.Select(s => ("model", s)).Prepend(("base", vector.Base)))
        {
            using var hash = System.Security.Cryptography.IncrementalHash.CreateHash(System.Security.Cryptography.HashAlgorithmName.SHA256);
            long bytes = 0;
            foreach (var file in model.Files)
            {
                using var stream = new FileStream(file, FileMode.Open, FileAccess.Read, FileShare.Read);
                bytes += stream.Length;
                var prefix = new byte[8];
                stream.ReadExactly(prefix);
                var header = new byte[(int)Math.Min(BitConverter.ToInt64(prefix), stream.Length - 8)];
                stream.ReadExactly(header);
                hash.AppendData(prefix);
                hash.AppendData(header);
            }
            list.Add(new System.Text.Json.Nodes.JsonObject { ["role"] = role, ["name"] = model.Name, ["bytes"] = bytes, ["header_sha256"] = Convert.ToHexString(hash.GetHashAndReset()).ToLowerInvariant() });
        }
        return list.ToJsonString();
    }

    private void WarnAboutMissingTensors(TaskVector vector)
    {
        foreach (var input in vector.Leaves)
        {
            foreach (var note in input.Input.Notes) _observer?.Warning(note);
            if (input.MissingTensors.Count == 0) continue;
            var names = string.Join(", ", input.MissingTensors.Take(10)) + (input.MissingTensors.Count > 10 ? $", ... ({input.MissingTensors.Count} in all)" : "");
            _observer?.Warning($"'{input.Input.Model?.Path ?? input.Input.Name}' lacks {input.MissingTensors.Count} tensor(s) of the base; they contribute a zero delta: {names}");
        }
    }

    private static SafetensorsDType OutputDTypeOf(TensorInfo info, ExportOptions options) =>
        info.DType.IsMergeable() && options.OutputDType is { } wanted ? wanted : info.DType;
}
