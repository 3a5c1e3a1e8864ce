using System.Diagnostics;
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

    /// <summary>The recipe that reproduces this output; stored in __metadata__ and as dare_recipe.yml.</summary>
    public string? RecipeYaml { get; init; }
}

/// <summary>
/// Runs task-vector plans tensor by tensor. For each tensor name it reads the base and fine-tuned data (in chunks
/// of at most <see cref="ChunkElements"/> elements for very large tensors), computes in float32, and hands the
/// result on before touching the next tensor, so memory is bounded by a few chunks whatever the model size.
/// Every tensor is computed inside its own dispose scope: nothing native outlives the tensor.
/// </summary>
public sealed class MergeExecutor
{
    public const long DefaultChunkElements = 16L << 20;
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
        TorchRuntime.EnsureInitialized();
    }

    public long ChunkElements { get; }

    /// <summary>Whether linear merges of bfloat16 models take the single-pass route (off only to compare the two routes in tests).</summary>
    internal bool SinglePassLinear { get; init; } = true;

    /// <summary>Writes base + λ·δ (or δ alone) as a Hugging Face model folder, atomically.</summary>
    public ExportResult Export(TaskVector vector, ExportOptions options)
    {
        var clock = Stopwatch.StartNew();
        WarnAboutMissingTensors(vector);
        var tensors = options.DeltaOnly ? vector.Base.Tensors.Where(t => t.DType.IsMergeable()).ToList() : vector.Base.Tensors.ToList();
        var plan = tensors.Select(t => new PlannedTensor(t.Name, OutputDTypeOf(t, options), t.Shape)).ToList();
        var metadata = new Dictionary<string, string>
        {
            ["dare_version"] = typeof(MergeExecutor).Assembly.GetName().Version?.ToString(3) ?? "0",
            ["dare_content"] = options.DeltaOnly ? "delta" : "model",
        };
        // The header must stay far below readers' limits (ours is 100 MB); a large recipe lives in dare_recipe.yml only.
        if (options.RecipeYaml is { } recipe) metadata["dare_recipe"] = recipe.Length <= MaxRecipeInHeader ? recipe
            : $"# {recipe.Length} characters, too long for the header: see {RecipeFileName} (SHA-256 {Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(recipe))).ToLowerInvariant()})";
        var nonFinite = new NonFiniteGuard(options.AllowNonFinite, _observer is null ? null : _observer.Warning);
        var writeOptions = new CheckpointWriteOptions
        {
            MaxShardSize = options.MaxShardSize,
            Metadata = metadata,
            Force = options.Force,
            ProtectedPaths = options.ProtectedPaths.Concat(OutputFolder.InputPathsOf(vector.Sources.Prepend(vector.Base))).ToList(),
            CurrentLocation = options.CurrentLocation,
            CopySideFilesFrom = vector.Base.Directory,
            ConfigDType = options.OutputDType,
            ExtraFiles = options.RecipeYaml is null ? null : new Dictionary<string, string> { [RecipeFileName] = options.RecipeYaml },
            NonFinite = nonFinite,
            Warning = _observer is null ? null : _observer.Warning,
        };
        var layerCount = LayerCount(vector.Base);
        var totalBytes = tensors.Sum(t => t.ByteLength) * (1 + vector.Sources.Count);
        long bytesRead = 0;

        using var writer = CheckpointWriter.Create(options.Destination, plan, writeOptions);
        using var reader = new TensorReader(nonFinite);
        using var workspace = new ChunkWorkspace();
        // Disposed first: waits for a write still in flight before the buffers and the writer go.
        using var appender = new BackgroundAppender(writer);
        for (var i = 0; i < tensors.Count; i++)
        {
            _cancellation.ThrowIfCancellationRequested();
            var info = tensors[i];
            var outputDType = plan[i].DType.ToScalarType();
            _observer?.Progress(new MergeProgress("Merging", i, tensors.Count, bytesRead, totalBytes, clock.Elapsed, info.Name));
            if (i + 1 < tensors.Count) Prefetch(reader, vector, tensors[i + 1], 0, Math.Min(tensors[i + 1].ElementCount, ChunkElements));
            appender.BeginTensor(info.Name);
            using (NewDisposeScope())
            {
                if (!info.DType.IsMergeable())
                {
                    Tensor stored;
                    using (PhaseProfile.Time(_profile, Phase.Read)) stored = reader.Read(info).contiguous();
                    using (PhaseProfile.Time(_profile, Phase.Write)) appender.Append(stored);
                }
                else
                {
                    ProcessTensor(vector, info, reader, workspace, layerCount, new ExportSink(appender, workspace, outputDType, options.DeltaOnly, _profile));
                }
            }
            bytesRead += info.ByteLength * (1 + vector.Sources.Count);
            _observer?.Verbose($"{info.Name} {info.ShapeText} {info.DType} -> {plan[i].DType}");
        }
        using (PhaseProfile.Time(_profile, Phase.Write)) appender.Finish();
        _observer?.Progress(new MergeProgress("Merging", tensors.Count, tensors.Count, bytesRead, totalBytes, clock.Elapsed, null));
        _cancellation.ThrowIfCancellationRequested();
        CheckpointWriteResult written;
        using (PhaseProfile.Time(_profile, Phase.Commit)) written = writer.Commit();
        if (_profile is not null)
        {
            foreach (var line in _profile.Report(clock.Elapsed)) _observer?.Verbose(line);
            _observer?.Verbose(string.Format(System.Globalization.CultureInfo.InvariantCulture,
                "profile: {0,-10} {1,8:0.000} s        (background writes, overlapped with the phases above; Write is the wait for them)", "(Writer)", appender.BackgroundTime.TotalSeconds));
        }
        return new ExportResult(written.Path, written.Files, written.TensorCount, written.TensorBytes, bytesRead, clock.Elapsed);
    }

    /// <summary>The task vector's float32 δ for one tensor, in the tensor's shape. The caller owns (disposes) it.</summary>
    public Tensor ComputeDelta(TaskVector vector, string tensorName)
    {
        var info = vector.Base.Find(tensorName) ?? throw new DareException(DareErrorId.TensorNotFound, DareErrorKind.ObjectNotFound,
            $"The base model '{vector.Base.Path}' has no tensor '{tensorName}'.") { TensorName = tensorName };
        if (!info.DType.IsMergeable())
        {
            throw new DareException(DareErrorId.TensorDTypeMismatch, DareErrorKind.InvalidArgument,
                $"Tensor '{tensorName}' is {info.DType}; only floating-point tensors have a task vector (others are copied from the base).") { TensorName = tensorName };
        }
        // The flat tensor is released on return (also on failure); the returned view keeps the storage alive.
        using var result = zeros(new[] { info.ElementCount }, ScalarType.Float32);
        using var reader = new TensorReader();
        using var workspace = new ChunkWorkspace();
        using (NewDisposeScope())
        {
            ProcessTensor(vector, info, reader, workspace, LayerCount(vector.Base), new DeltaSink((first, _, delta) =>
                result.narrow(0, first, delta.shape[0]).copy_(delta)));
        }
        return result.view(info.Shape);
    }

    /// <summary>
    /// Streams every float tensor of the vector through <paramref name="visit"/> (name, info, chunk start, δ chunk) and returns the DARE drop counts;
    /// <paramref name="tensorDone"/>, when given, receives each tensor's own counts.
    /// </summary>
    internal DropCounts Visit(TaskVector vector, Action<TensorInfo, long, Tensor> visit, string activity, Func<TensorInfo, bool>? include = null,
        Action<TensorInfo, DropCounts>? tensorDone = null)
    {
        var clock = Stopwatch.StartNew();
        var tensors = vector.Base.Tensors.Where(t => t.DType.IsMergeable() && (include?.Invoke(t) ?? true)).ToList();
        var totalBytes = tensors.Sum(t => t.ByteLength);
        long bytesDone = 0;
        var layerCount = LayerCount(vector.Base);
        var counts = new DropCounts();
        using var reader = new TensorReader();
        using var workspace = new ChunkWorkspace();
        for (var i = 0; i < tensors.Count; i++)
        {
            _cancellation.ThrowIfCancellationRequested();
            _observer?.Progress(new MergeProgress(activity, i, tensors.Count, bytesDone, totalBytes, clock.Elapsed, tensors[i].Name));
            if (i + 1 < tensors.Count) Prefetch(reader, vector, tensors[i + 1], 0, Math.Min(tensors[i + 1].ElementCount, ChunkElements));
            using (NewDisposeScope())
            {
                var info = tensors[i];
                var drops = ProcessTensor(vector, info, reader, workspace, layerCount, new DeltaSink((first, _, delta) => visit(info, first, delta)));
                counts.Add(drops);
                tensorDone?.Invoke(info, drops);
            }
            bytesDone += tensors[i].ByteLength;
        }
        return counts;
    }

    internal sealed class DropCounts
    {
        public long Dropped;
        public long Elements;
        public double TargetDropped;
        public void Add(DropCounts other)
        {
            Dropped += other.Dropped;
            Elements += other.Elements;
            TargetDropped += other.TargetDropped;
        }
    }

    private void WarnAboutMissingTensors(TaskVector vector)
    {
        foreach (var input in vector.IsMerged ? vector.Inputs : new[] { vector })
        {
            if (input.MissingTensors.Count == 0) continue;
            var names = string.Join(", ", input.MissingTensors.Take(10)) + (input.MissingTensors.Count > 10 ? $", ... ({input.MissingTensors.Count} in all)" : "");
            _observer?.Warning($"'{input.FineTuned!.Path}' lacks {input.MissingTensors.Count} tensor(s) of the base; they contribute a zero delta: {names}");
        }
    }

    private static SafetensorsDType OutputDTypeOf(TensorInfo info, ExportOptions options) =>
        info.DType.IsMergeable() && options.OutputDType is { } wanted ? wanted : info.DType;

    /// <summary>Layers in the model: config.json's num_hidden_layers, else the highest layer index in the tensor names + 1.</summary>
    internal static int LayerCount(Checkpoint model)
    {
        if (model.ConfigInt("num_hidden_layers") is { } configured and > 0) return (int)configured;
        var highest = model.Tensors.Select(t => TensorPosition.Of(t.Name, 0).LayerIndex ?? -1).DefaultIfEmpty(-1).Max();
        return highest + 1;
    }

    /// <summary>One fine-tuned model's part in computing a tensor.</summary>
    private sealed class Leaf
    {
        public required TensorInfo? Tuned;
        public required float Weight;
        public ulong Key;
        public uint DropThreshold;
        public float DropScale = 1f;
        public bool UsesDare;
        public bool L1;
        public L1Accumulator? L1Before, L1After;
        public long Dropped;
        public MagnitudeSelection? Selection;
        /// <summary>The selection's sample is taken by the fused δ kernel in the first pass.</summary>
        public bool SampleInDeltaPass;
        public long TiesLeft;

        /// <summary>Whether δ comes from <see cref="ChunkKernels.WidenSubtractMask"/> (one fused pass) rather than torch ops.</summary>
        public bool UsesFusedKernel => Tuned is { DType: SafetensorsDType.BF16 } && !L1;
    }

    private delegate void ChunkConsumer(long first, Tensor baseChunk, Tensor delta);

    /// <summary>
    /// Receives a tensor's merged δ chunk by chunk: first says where the combine writes it, then takes the result. The
    /// base chunk is float32, or bfloat16 as stored when only the fused kernels needed it.
    /// </summary>
    private interface IChunkSink
    {
        /// <summary>Where the combine of this chunk writes (<paramref name="firstDelta"/> is the first input's δ, overwritable).</summary>
        CombineTarget Target(Tensor baseChunk, Tensor firstDelta);

        /// <summary>The chunk of elements [first, first + count) is combined into the target.</summary>
        void Take(long first, Tensor baseChunk, Tensor firstDelta);
    }

    /// <summary>Hands each merged δ chunk (float32, combined in place over the first input's δ) to a callback.</summary>
    private sealed class DeltaSink(ChunkConsumer consume) : IChunkSink
    {
        public unsafe CombineTarget Target(Tensor baseChunk, Tensor firstDelta) => CombineTarget.InPlace(TensorMemory.Floats(firstDelta));

        public void Take(long first, Tensor baseChunk, Tensor firstDelta) => consume(first, baseChunk, firstDelta);
    }

    /// <summary>
    /// Writes base + merged δ (or δ alone) in the output dtype. For bfloat16 and float32 the combine writes the output
    /// bytes itself, straight into the reused output buffer; other types are added and converted by torch. Each chunk's
    /// write overlaps the computation of the next, so the buffer is refilled only once the previous write is done.
    /// </summary>
    private sealed class ExportSink(BackgroundAppender appender, ChunkWorkspace workspace, ScalarType outputDType, bool deltaOnly, PhaseProfile? profile) : IChunkSink
    {
        private Tensor? _output;

        /// <summary>Whether the combine writes the output bytes itself (bfloat16 and float32 output).</summary>
        public bool WritesDirectly => outputDType is ScalarType.BFloat16 or ScalarType.Float32;

        public unsafe CombineTarget Target(Tensor baseChunk, Tensor firstDelta)
        {
            if (!WritesDirectly)
            {
                _output = null;
                return CombineTarget.InPlace(TensorMemory.Floats(firstDelta));
            }
            if (baseChunk.dtype == ScalarType.BFloat16) return TargetOverBFloat16Base((ushort*)TensorMemory.Pointer(baseChunk), firstDelta.shape[0]);
            return new CombineTarget(deltaOnly ? null : TensorMemory.Floats(baseChunk), NextOutput(firstDelta.shape[0]), outputDType == ScalarType.BFloat16);
        }

        /// <summary>The target for a chunk whose base is still in bfloat16 (only when <see cref="WritesDirectly"/>).</summary>
        public unsafe CombineTarget TargetOverBFloat16Base(ushort* baseBits, long count) =>
            deltaOnly
                ? new CombineTarget(null, NextOutput(count), outputDType == ScalarType.BFloat16)
                : CombineTarget.OverBFloat16Base(baseBits, NextOutput(count), outputDType == ScalarType.BFloat16);

        // The output buffer is reused: it is handed out only once the previous chunk's write is done.
        private unsafe void* NextOutput(long count)
        {
            using (PhaseProfile.Time(profile, Phase.Write)) appender.Wait();
            _output = workspace.Output(outputDType, count);
            return TensorMemory.Pointer(_output);
        }

        public void Take(long first, Tensor baseChunk, Tensor firstDelta)
        {
            if (_output is null)
            {
                using (PhaseProfile.Time(profile, Phase.Write)) appender.Wait();
                using (PhaseProfile.Time(profile, Phase.ToOutput))
                {
                    var result = deltaOnly ? firstDelta : baseChunk.dtype == ScalarType.Float32 ? baseChunk.add_(firstDelta) : baseChunk.to_type(ScalarType.Float32).add_(firstDelta);
                    _output = workspace.Output(outputDType, firstDelta.shape[0]).copy_(result);
                }
            }
            Emit();
        }

        /// <summary>Starts the background write of the chunk now in the output buffer.</summary>
        public unsafe void Emit()
        {
            appender.AppendAsync((IntPtr)TensorMemory.Pointer(_output!), _output!.NumberOfElements * _output.ElementSize);
            _output = null;
        }
    }

    /// <summary>
    /// Computes the vector's δ for one tensor and hands it to <paramref name="sink"/> chunk by chunk, in element
    /// order. Steps that need the whole tensor first (L1 rescale, TIES magnitude threshold) take extra passes; a
    /// tensor that fits in one chunk is read once and kept for all passes. Chunks live in <paramref name="workspace"/>'s
    /// reused buffers (base in slot 0, in float32 or still in bfloat16; input i's δ in slot i + 1): a sink must not keep them past its call.
    /// </summary>
    private DropCounts ProcessTensor(TaskVector vector, TensorInfo baseInfo, TensorReader reader, ChunkWorkspace workspace, int layerCount, IChunkSink sink)
    {
        var position = TensorPosition.Of(baseInfo.Name, layerCount);
        var inputs = vector.IsMerged ? vector.Inputs : new[] { vector };
        var merge = vector.Merge;
        var n = baseInfo.ElementCount;
        var leaves = new Leaf[inputs.Count];
        var counts = new DropCounts();
        for (var i = 0; i < inputs.Count; i++)
        {
            var input = inputs[i];
            var leaf = new Leaf
            {
                Tuned = input.FineTuned!.Find(baseInfo.Name),
                Weight = merge is null ? 1f : (float)merge.Weights[i].Resolve(position),
            };
            if (input.Dare is { } dare)
            {
                var rate = dare.DropRate.Resolve(position);
                leaf.UsesDare = true;
                leaf.Key = DareMask.Key(dare.Seed, dare.Stream, baseInfo.Name);
                leaf.DropThreshold = DareMask.Threshold(rate);
                leaf.DropScale = dare.Rescale == DareRescale.InverseKeep ? (float)(1.0 / (1.0 - rate)) : 1f;
                leaf.L1 = dare.Rescale == DareRescale.L1;
                if (leaf.L1)
                {
                    leaf.L1Before = new L1Accumulator();
                    leaf.L1After = new L1Accumulator();
                }
                counts.TargetDropped += rate * n;
            }
            if (merge is { Method: MergeMethod.Ties, KeepRatios: { } keep })
            {
                var ratio = keep[i].Resolve(position);
                leaf.Selection = new MagnitudeSelection((long)Math.Ceiling(ratio * n - 1e-9), n);
            }
            leaves[i] = leaf;
        }

        var chunk = Math.Max(1, Math.Min(n, ChunkElements));
        var chunkCount = n == 0 ? 0 : (int)((n + chunk - 1) / chunk);
        if (SinglePassLinear && sink is ExportSink { WritesDirectly: true } export && merge?.Method != MergeMethod.Ties
            && baseInfo.DType == SafetensorsDType.BF16 && leaves.All(l => l.UsesFusedKernel))
        {
            StreamLinear(vector, baseInfo, leaves, merge, reader, workspace, export, chunk, chunkCount);
            return Counts();
        }
        foreach (var leaf in leaves)
        {
            leaf.SampleInDeltaPass = leaf.Selection is { NeedsPasses: true } && leaf.UsesFusedKernel && chunk <= MagnitudeSelection.MaxSpan;
        }
        // A bfloat16 base that only the fused kernels read stays as stored (they widen it as they go); torch's δ for
        // other inputs needs it in float32.
        var baseStaysBFloat16 = baseInfo.DType == SafetensorsDType.BF16 && leaves.All(l => l.UsesFusedKernel || l.Tuned is null);
        var cachedBase = (Tensor?)null;
        var cachedDeltas = (Tensor[]?)null;
        var pass = 0;

        // Runs one pass over all chunks; a single-chunk tensor is computed once and reused by later passes.
        void ForEachChunk(Action<long, Tensor, Tensor[]> body)
        {
            for (var c = 0; c < chunkCount; c++)
            {
                _cancellation.ThrowIfCancellationRequested();
                var first = c * chunk;
                var count = Math.Min(chunk, n - first);
                if (c + 1 < chunkCount) Prefetch(reader, vector, baseInfo, first + chunk, Math.Min(chunk, n - first - chunk));
                using var scope = chunkCount > 1 ? NewDisposeScope() : null;
                Tensor baseChunk;
                Tensor[] deltas;
                if (cachedDeltas is not null)
                {
                    baseChunk = cachedBase!;
                    deltas = cachedDeltas;
                }
                else
                {
                    baseChunk = baseStaysBFloat16
                        ? ReadBFloat16(reader, workspace, 0, baseInfo, first, count)
                        : ReadFloat32(reader, workspace, 0, baseInfo, first, count);
                    deltas = leaves.Select((l, i) => LeafDelta(l, i + 1, reader, workspace, baseChunk, first, count, firstPass: pass == 0)).ToArray();
                    if (chunkCount == 1)
                    {
                        cachedBase = baseChunk;
                        cachedDeltas = deltas;
                    }
                }
                body(first, baseChunk, deltas);
            }
            pass++;
        }

        // TIES thresholds (see MagnitudeSelection): the first pass samples δ, which usually settles the threshold or
        // brackets it for one more pass; the exact coarse and fine passes run only when the sample misled.
        var steps = new SelectionStep[leaves.Length];
        if (leaves.Any(l => l.Selection is { NeedsPasses: true } || l.L1))
        {
            ForEachChunk((first, _, deltas) =>
            {
                for (var i = 0; i < leaves.Length; i++)
                {
                    if (leaves[i].Selection is { NeedsPasses: true } s && !leaves[i].SampleInDeltaPass) { using (PhaseProfile.Time(_profile, Phase.Select)) AddSample(s, deltas[i], first); }
                }
            });
            for (var i = 0; i < leaves.Length; i++)
            {
                if (leaves[i].Selection is not { NeedsPasses: true } s) continue;
                steps[i] = s.FinishSample();
                if (steps[i] == SelectionStep.Done) PhaseProfile.CountSelection(_profile, "sample");
            }
        }
        SelectionPass(SelectionStep.Bracket, AddBracket, s =>
        {
            var next = s.FinishBracket();
            PhaseProfile.CountSelection(_profile, next == SelectionStep.Done ? "bracket" : "bracket missed");
            return next;
        });
        SelectionPass(SelectionStep.CoarseAndFine, AddCoarse, s =>
        {
            s.FinishCoarse();
            return SelectionStep.CoarseAndFine;
        });
        SelectionPass(SelectionStep.CoarseAndFine, AddFine, s =>
        {
            s.FinishFine();
            PhaseProfile.CountSelection(_profile, "exact passes");
            return SelectionStep.Done;
        });

        // One pass over every chunk for the leaves at <paramref name="step"/>, then <paramref name="finish"/> gives each its next step.
        void SelectionPass(SelectionStep step, Action<MagnitudeSelection, Tensor> add, Func<MagnitudeSelection, SelectionStep> finish)
        {
            if (!steps.Contains(step)) return;
            ForEachChunk((_, _, deltas) =>
            {
                for (var i = 0; i < leaves.Length; i++)
                {
                    if (steps[i] == step) { using (PhaseProfile.Time(_profile, Phase.Select)) add(leaves[i].Selection!, deltas[i]); }
                }
            });
            using (PhaseProfile.Time(_profile, Phase.Select))
            {
                for (var i = 0; i < leaves.Length; i++)
                {
                    if (steps[i] == step) steps[i] = finish(leaves[i].Selection!);
                }
            }
        }

        foreach (var leaf in leaves) leaf.TiesLeft = leaf.Selection?.TiesToKeep ?? 0;
        var l1Scales = leaves.Select(l => l.L1 && l.L1After!.Total > 0 ? l.L1Before!.Total / l.L1After.Total : 1.0).ToArray();
        var keepBits = leaves.Select((l, i) => l.Selection is { } s && l1Scales[i] == 1.0 ? s.KeepBits : 0u).ToArray();

        ForEachChunk((first, baseChunk, deltas) =>
        {
            var tieBudgets = new long[]?[leaves.Length];
            for (var i = 0; i < leaves.Length; i++)
            {
                var leaf = leaves[i];
                // The combine trims as it reads: it drops |x| below each input's threshold and keeps each parallel
                // range's share of the ties, known from the bracket pass. Without those shares the excess ties are
                // dropped here first. An L1 rescale would change the magnitudes, so such an input is trimmed in full
                // first. TIES ignores zeros, so a trim that could only change the sign of a zero is skipped.
                if (leaf.Selection is { TrimKeepsEveryNonZero: false } selection)
                {
                    if (l1Scales[i] == 1.0 && selection.TieBudgets((int)(first / chunk)) is { } budgets)
                    {
                        tieBudgets[i] = budgets;
                        continue;
                    }
                    using (PhaseProfile.Time(_profile, Phase.Trim))
                    {
                        if (l1Scales[i] != 1.0) Trim(selection, deltas[i], ref leaf.TiesLeft);
                        else DropExcessTies(selection, deltas[i], ref leaf.TiesLeft);
                    }
                }
                if (l1Scales[i] != 1.0)
                {
                    using (PhaseProfile.Time(_profile, Phase.Mask)) deltas[i].mul_(l1Scales[i]);
                }
            }
            var target = sink.Target(baseChunk, deltas[0]);
            using (PhaseProfile.Time(_profile, Phase.Combine)) Combine(merge, leaves, deltas, keepBits, tieBudgets, target);
            sink.Take(first, baseChunk, deltas[0]);
        });

        return Counts();

        DropCounts Counts()
        {
            foreach (var leaf in leaves)
            {
                counts.Dropped += leaf.Dropped;
                if (leaf.UsesDare) counts.Elements += n;
            }
            return counts;
        }
    }

    /// <summary>
    /// A linear merge (or a single task vector) of bfloat16 tensors in one pass per chunk: the chunks are read as
    /// stored and <see cref="ChunkKernels.LinearFromBFloat16"/> takes them to output bytes block by block, so no
    /// float32 chunk is ever written to memory.
    /// </summary>
    private unsafe void StreamLinear(TaskVector vector, TensorInfo baseInfo, Leaf[] leaves, MergeOptions? merge, TensorReader reader, ChunkWorkspace workspace, ExportSink export, long chunk, int chunkCount)
    {
        var weights = leaves.Select(l => l.Weight).ToArray();
        var scale = LinearScale(merge, leaves);
        for (var c = 0; c < chunkCount; c++)
        {
            _cancellation.ThrowIfCancellationRequested();
            var first = c * chunk;
            var count = Math.Min(chunk, baseInfo.ElementCount - first);
            if (c + 1 < chunkCount) Prefetch(reader, vector, baseInfo, first + chunk, Math.Min(chunk, baseInfo.ElementCount - first - chunk));
            using var scope = NewDisposeScope();
            var baseBits = (ushort*)TensorMemory.Pointer(ReadBFloat16(reader, workspace, 0, baseInfo, first, count));
            var sources = leaves.Select((l, i) => new DeltaSource((ushort*)TensorMemory.Pointer(ReadBFloat16(reader, workspace, i + 1, l.Tuned!, first, count)),
                l.UsesDare, l.Key, l.DropThreshold, l.DropScale)).ToArray();
            var target = export.TargetOverBFloat16Base(baseBits, count);
            long[] dropped;
            using (PhaseProfile.Time(_profile, Phase.DeltaFused)) dropped = ChunkKernels.LinearFromBFloat16(baseBits, sources, weights, scale, target, first, count);
            for (var i = 0; i < leaves.Length; i++) leaves[i].Dropped += dropped[i];
            export.Emit();
        }
    }

    /// <summary>
    /// Starts the OS reading elements [first, first + count) of a tensor of the base and of every fine-tune, so that
    /// disk reads of the next chunk overlap the computation of this one (see <see cref="TensorReader.Prefetch"/>).
    /// </summary>
    private static void Prefetch(TensorReader reader, TaskVector vector, TensorInfo baseInfo, long first, long count)
    {
        reader.Prefetch(baseInfo, first, count);
        if (!baseInfo.DType.IsMergeable()) return;
        foreach (var source in vector.Sources)
        {
            if (source.Find(baseInfo.Name) is { } tuned) reader.Prefetch(tuned, first, count);
        }
    }

    /// <summary>Elements [first, first + count) of a bfloat16 tensor, as stored, in raw slot <paramref name="slot"/>.</summary>
    private unsafe Tensor ReadBFloat16(TensorReader reader, ChunkWorkspace workspace, int slot, TensorInfo info, long first, long count)
    {
        var raw = workspace.Raw(slot, count);
        using (PhaseProfile.Time(_profile, Phase.Read)) reader.ReadElements(info, first, count, TensorMemory.Pointer(raw));
        return raw;
    }

    /// <summary>
    /// Elements [first, first + count) of a stored tensor as float32: bfloat16 and float32 into workspace slot
    /// <paramref name="slot"/> (bfloat16 widened by <see cref="ChunkKernels"/>), other types through torch.
    /// </summary>
    private unsafe Tensor ReadFloat32(TensorReader reader, ChunkWorkspace workspace, int slot, TensorInfo info, long first, long count)
    {
        switch (info.DType)
        {
            case SafetensorsDType.F32:
            {
                var values = workspace.Floats(slot, count);
                using (PhaseProfile.Time(_profile, Phase.Read)) reader.ReadElements(info, first, count, TensorMemory.Pointer(values));
                return values;
            }
            case SafetensorsDType.BF16:
            {
                var raw = workspace.Staging(count * sizeof(ushort));
                using (PhaseProfile.Time(_profile, Phase.Read)) reader.ReadElements(info, first, count, TensorMemory.Pointer(raw));
                var values = workspace.Floats(slot, count);
                using (PhaseProfile.Time(_profile, Phase.ToFloat32)) ChunkKernels.WidenBFloat16((ushort*)TensorMemory.Pointer(raw), TensorMemory.Floats(values), count);
                return values;
            }
            default:
            {
                Tensor stored;
                using (PhaseProfile.Time(_profile, Phase.Read)) stored = reader.ReadRange(info, first, count);
                using (PhaseProfile.Time(_profile, Phase.ToFloat32)) return stored.to_type(ScalarType.Float32);
            }
        }
    }

    /// <summary>δ = fine-tuned − base for one chunk, with the DARE mask applied (the L1 rescale comes after trimming).</summary>
    private unsafe Tensor LeafDelta(Leaf leaf, int slot, TensorReader reader, ChunkWorkspace workspace, Tensor baseChunk, long first, long count, bool firstPass)
    {
        if (leaf.Tuned is null) return zeros(new[] { count }, ScalarType.Float32);
        Tensor delta;
        if (leaf.UsesFusedKernel)
        {
            // One pass over the chunk: widen, subtract the base, apply the DARE mask (and sample for a TIES threshold) block by block.
            var raw = workspace.Staging(count * sizeof(ushort));
            using (PhaseProfile.Time(_profile, Phase.Read)) reader.ReadElements(leaf.Tuned, first, count, TensorMemory.Pointer(raw));
            delta = workspace.Floats(slot, count);
            long chunkDropped;
            using (PhaseProfile.Time(_profile, Phase.DeltaFused))
            {
                var tunedBits = (ushort*)TensorMemory.Pointer(raw);
                var sample = firstPass && leaf.SampleInDeltaPass ? leaf.Selection : null;
                chunkDropped = baseChunk.dtype == ScalarType.BFloat16
                    ? ChunkKernels.WidenSubtractMask(tunedBits, (ushort*)TensorMemory.Pointer(baseChunk), TensorMemory.Floats(delta), first, count,
                        leaf.UsesDare, leaf.Key, leaf.DropThreshold, leaf.DropScale, sample)
                    : ChunkKernels.WidenSubtractMask(tunedBits, TensorMemory.Floats(baseChunk), TensorMemory.Floats(delta), first, count,
                        leaf.UsesDare, leaf.Key, leaf.DropThreshold, leaf.DropScale, sample);
            }
            if (firstPass) leaf.Dropped += chunkDropped;
            return delta;
        }
        var tuned = ReadFloat32(reader, workspace, slot, leaf.Tuned, first, count);
        using (PhaseProfile.Time(_profile, Phase.Delta)) delta = tuned.sub_(baseChunk);
        if (!leaf.UsesDare) return delta;
        using var timing = PhaseProfile.Time(_profile, Phase.Mask);
        var data = TensorMemory.Floats(delta);
        if (leaf.L1 && firstPass) leaf.L1Before!.Add(data, count);
        var ranges = MagnitudeSelection.Ranges(count);
        var dropped = new long[ranges.Length];
        Parallel.For(0, ranges.Length, r =>
        {
            var (start, end) = ranges[r];
            dropped[r] = DareMask.Apply(data + start, first + start, end - start, leaf.Key, leaf.DropThreshold, leaf.DropScale);
        });
        if (firstPass)
        {
            leaf.Dropped += dropped.Sum();
            if (leaf.L1) leaf.L1After!.Add(data, count);
        }
        return delta;
    }

    private static unsafe void AddSample(MagnitudeSelection selection, Tensor delta, long first) => selection.AddSample(TensorMemory.Floats(delta), first, delta.shape[0]);
    private static unsafe void AddBracket(MagnitudeSelection selection, Tensor delta) => selection.AddBracket(TensorMemory.Floats(delta), delta.shape[0]);
    private static unsafe void AddCoarse(MagnitudeSelection selection, Tensor delta) => selection.AddCoarse(TensorMemory.Floats(delta), delta.shape[0]);
    private static unsafe void AddFine(MagnitudeSelection selection, Tensor delta) => selection.AddFine(TensorMemory.Floats(delta), delta.shape[0]);
    private static unsafe void Trim(MagnitudeSelection selection, Tensor delta, ref long tiesLeft) => selection.Trim(TensorMemory.Floats(delta), delta.shape[0], ref tiesLeft);
    private static unsafe void DropExcessTies(MagnitudeSelection selection, Tensor delta, ref long tiesLeft) => selection.DropExcessTies(TensorMemory.Floats(delta), delta.shape[0], ref tiesLeft);

    /// <summary>What a linear merge's weighted sum is multiplied by: λ, divided by the total weight when normalizing; null for 1 (and for a single vector).</summary>
    private static float? LinearScale(MergeOptions? merge, Leaf[] leaves)
    {
        if (merge is null) return null;
        var totalWeight = leaves.Sum(l => (double)l.Weight);
        var scale = merge.Normalize && totalWeight != 0 ? merge.Lambda / totalWeight : merge.Lambda;
        return scale == 1.0 ? null : (float)scale;
    }

    /// <summary>Combines the inputs' chunks into the merged δ (λ applied) at <paramref name="target"/>; TIES trims by <paramref name="keepBits"/> and <paramref name="tieBudgets"/> (see <see cref="CombineKernels.Ties"/>).</summary>
    private static unsafe void Combine(MergeOptions? merge, Leaf[] leaves, Tensor[] deltas, uint[] keepBits, long[]?[] tieBudgets, CombineTarget target)
    {
        var count = deltas[0].shape[0];
        var inputs = deltas.Select(d => (IntPtr)TensorMemory.Floats(d)).ToArray();
        if (merge is not { Method: MergeMethod.Ties })
        {
            CombineKernels.Linear(inputs, leaves.Select(l => l.Weight).ToArray(), LinearScale(merge, leaves), target, count);
            return;
        }
        CombineKernels.Ties(inputs, leaves.Select(l => (double)l.Weight).ToArray(), keepBits, tieBudgets, merge.SignMethod == SignMethod.Count, merge.Normalize, merge.Lambda, target, count);
    }
}
