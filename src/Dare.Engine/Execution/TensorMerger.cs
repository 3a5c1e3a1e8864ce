using Dare.Engine.Safetensors;

namespace Dare.Engine.Merge;

/// <summary>What DARE dropped: per tensor, or summed over a run.</summary>
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

/// <summary>
/// Merges one tensor of a plan and hands the merged δ to a sink chunk by chunk, in element order: it opens each
/// input's part with its transform (<see cref="InputChain"/>), lets the method run the passes it needs, then combines
/// every chunk. A tensor that fits in one chunk is read once and kept for all passes. Chunks live in the workspace's
/// reused buffers (base in slot 0, in float32 or still in bfloat16; input i's δ in slot i + 1): a sink must not keep
/// them past its call. When the method offers a single-pass bfloat16 route and every input can take it, that runs instead.
/// </summary>
internal sealed class TensorMerger(ChunkReader chunks, long chunkElements, bool singlePassRoutes, CancellationToken cancellation)
{
    private ChunkReader Chunks => chunks;
    private CancellationToken Cancellation => cancellation;

    // What ReadsOnce prepared for a tensor ahead of its merge, taken by Merge instead of preparing it again (a TIES
    // merge may have counted its inputs' DARE masks to choose its route).
    // It also decided, before anything of the tensor was read, whether it is kept as stored.
    // It also decided whether the counted route takes it (its inputs were in the page cache then).
    private readonly Dictionary<TensorInfo, (InputChain[] Inputs, TensorMergeSetup Setup, ITensorMerge Merge, bool KeepsStored, bool Counted)> _prepared = new();

    /// <summary>The tensor backend an export runs on, or null for the SIMD kernels (the default).</summary>
    public DeviceTensorMerger? Device { get; init; }

    /// <summary>See <see cref="TiesTensorMerge.DefaultSurvivorSigmas"/>.</summary>
    public double SurvivorSigmas { get; init; } = TiesTensorMerge.DefaultSurvivorSigmas;

    /// <summary>See <see cref="TensorMergeSetup.FusedOnAnyProcessor"/>.</summary>
    public bool FusedOnAnyProcessor { get; init; }

    /// <summary>Tensors merged by a counted route (<see cref="IBFloat16CountedPass"/>).</summary>
    public int TensorsCounted { get; private set; }

    /// <summary>Tensors whose TIES presample was read from their files (<see cref="FilePresample"/>).</summary>
    public int TensorsPresampledFromFiles => _filePresample?.Tensors ?? 0;

    // The presample's runs, read from the files: one reader for every tensor, so that its buffers are reused.
    private FilePresample? _filePresample;
    private FilePresample FilePresample => _filePresample ??= new FilePresample(chunks.Reader);

    public DropCounts Merge(TaskVector vector, TensorInfo baseInfo, ModelLayout layout, IChunkSink sink)
    {
        var leaves = vector.Leaves;
        var n = baseInfo.ElementCount;
        _prepared.Remove(baseInfo, out var prepared);
        var (inputs, setup) = prepared.Inputs is null ? Prepare(vector, baseInfo, layout) : (prepared.Inputs, prepared.Setup);
        var chunk = setup.ChunkElements;
        var chunkCount = n == 0 ? 0 : (int)((n + chunk - 1) / chunk);
        var method = vector.Merge?.Method ?? MergeMethod.Linear;
        if (Device is { } device && sink is ExportSink deviceSink)
        {
            device.Merge(vector, baseInfo, inputs, method.CreateDeviceMerge(vector.Merge, setup), deviceSink, chunk, chunkCount);
            return Counts(inputs, leaves, n);
        }
        var merge = prepared.Merge ?? method.CreateTensorMerge(vector.Merge, setup);

        if (sink is ExportSink { WritesDirectly: true } export && TakesSinglePass(baseInfo, inputs))
        {
            if (merge.SinglePass is { } singlePass && StreamBFloat16(vector, baseInfo, inputs, singlePass, export, chunk, chunkCount)) return Counts(inputs, leaves, n);
            if (merge.CountedPass is { } counted && (prepared.Merge is not null ? prepared.Counted : StoredPasses.Takes(chunks.Reader, baseInfo, inputs)))
            {
                var storedPasses = new StoredPasses(chunks, baseInfo, inputs, chunk, FilePresample, cancellation);
                if (counted.RunPasses(storedPasses) is { } fused && StreamBFloat16(vector, baseInfo, inputs, fused, export, chunk, chunkCount))
                {
                    TensorsCounted++;
                    return Counts(inputs, leaves, n);
                }
                // The passes left their counts in this merge: the general route starts from a new one.
                merge = method.CreateTensorMerge(vector.Merge, setup);
            }
        }

        // A tensor kept as stored for all its passes (see KeepsStored) is merged in smaller chunks: their float32 δ
        // then takes a quarter of the memory (the result does not depend on the chunking).
        var keepsStored = prepared.Merge is not null ? prepared.KeepsStored : KeepsStored(baseInfo, inputs, merge);
        if (keepsStored)
        {
            setup = setup with { ChunkElements = Math.Max(Math.Min(chunkElements, 1 << 16), chunkElements / 4) };
            merge = method.CreateTensorMerge(vector.Merge, setup);
            chunk = setup.ChunkElements;
            chunkCount = (int)((n + chunk - 1) / chunk);
        }

        // A bfloat16 base that only the fused kernels read stays as stored (they widen it as they go).
        var baseStaysBFloat16 = baseInfo.DType == SafetensorsDType.BF16 && inputs.All(c => !c.NeedsFloat32Base) && !merge.NeedsBaseValues;
        var passes = new ChunkPasses(this, vector, baseInfo, inputs, merge, baseStaysBFloat16, chunk, chunkCount) { KeepsStored = keepsStored };
        CountTransformThresholds(inputs, passes);
        merge.RunPasses(passes);
        // An L1 rescale needs the whole tensor's norms before the combine; if the method took no pass, one is taken here.
        if (passes.Count == 0 && inputs.Any(c => c.NeedsWholeTensorFirst)) passes.ForEachChunk((_, _) => { });

        passes.ForEachChunk((first, baseChunk, deltas) =>
        {
            merge.PrepareChunk(first, deltas);
            for (var i = 0; i < inputs.Length; i++)
            {
                var rescale = inputs[i].Rescale;
                if (rescale != 1.0) { using (PhaseProfile.Time(chunks.Profile, Phase.Mask)) deltas[i].Scale(rescale); }
            }
            var target = sink.TargetFor(baseChunk, deltas[0]);
            using (PhaseProfile.Time(chunks.Profile, Phase.Combine)) merge.Combine(first, baseChunk, deltas, target);
            sink.Accept(first, baseChunk, deltas[0]);
        });
        return Counts(inputs, leaves, n);
    }

    /// <summary>Each input's chain for this tensor, and the chunking: whole rows for DELLA (it ranks within rows; a row longer than a chunk is one chunk).</summary>
    private (InputChain[] Inputs, TensorMergeSetup Setup) Prepare(TaskVector vector, TensorInfo baseInfo, ModelLayout layout)
    {
        var position = layout.Position(baseInfo.Name);
        var n = baseInfo.ElementCount;
        var chunk = Math.Max(1, Math.Min(n, chunkElements));
        var rowLength = baseInfo.Shape.Length == 0 ? 1 : Math.Max(1, baseInfo.Shape[^1]);
        if (vector.Leaves.Any(l => l.Della is not null)) chunk = Math.Max(1, chunk / rowLength) * rowLength;
        var inputs = vector.Leaves.Select(l => new InputChain(l.Input.Open(baseInfo), DareDrop.For(l.Dare, position, n), DellaDrop.For(l.Della, position, n, rowLength),
            BreadcrumbsPrune.For(l.Breadcrumbs, position, n))).ToArray();
        return (inputs, new TensorMergeSetup(position, n, chunk, inputs, chunks.Profile) { RowLength = rowLength, Shape = baseInfo.Shape, SurvivorSigmas = SurvivorSigmas, FusedOnAnyProcessor = FusedOnAnyProcessor });
    }

    /// <summary>
    /// Whether a tensor of several chunks is read once, as stored, and kept for all the passes of its merge: bfloat16
    /// inputs whose δ the fused kernel computes from the stored bytes, up to <see cref="MaxKeptStoredBytes"/>, and not
    /// in the page cache already. It is then read ahead once into a buffer (its pages dropped behind), instead of
    /// through the page cache in every pass (~20 s of system CPU in a cold TIES merge here). A cached tensor is read from the cache in each pass as before: copying it
    /// into memory the process has not touched yet cost more (a warm medium TIES export took 6.6 s instead of 5.0 s).
    /// Decided in <see cref="ReadsOnce"/> when the executor reads ahead, before the merges in between have read
    /// anything near the tensor (the OS's own read-ahead could otherwise have cached part of it by the time it is merged).
    /// </summary>
    private bool KeepsStored(TensorInfo baseInfo, InputChain[] inputs, ITensorMerge merge) =>
        baseInfo.ElementCount > chunkElements && baseInfo.DType == SafetensorsDType.BF16 && inputs.All(c => c.IsFused) && !merge.NeedsBaseValues &&
        (inputs.Length + 1) * baseInfo.ByteLength <= MaxKeptStoredBytes &&
        !inputs.Select(c => c.Tensor!.StoredBFloat16!).Prepend(baseInfo).All(chunks.Reader.IsCached);

    /// <summary>
    /// The most stored bytes (base and inputs) kept for a tensor's passes: a 7B model's MLP tensor (45M elements, 90 MB
    /// per model) with three fine-tunes. An embedding matrix (250 MB per model) goes through the page cache as before.
    /// </summary>
    internal const long MaxKeptStoredBytes = 384L << 20;

    /// <summary>Whether the single-pass bfloat16 route can take this tensor, given a method that offers it and a sink that writes directly.</summary>
    private bool TakesSinglePass(TensorInfo baseInfo, InputChain[] inputs) =>
        singlePassRoutes && baseInfo.DType == SafetensorsDType.BF16 && inputs.All(c => c.IsFused);

    /// <summary>
    /// Whether exporting this tensor reads each of its chunks once: it fits in one chunk (kept for every pass), it
    /// takes the single-pass route, or it is kept as stored for all its passes (<see cref="KeepsStored"/>, decided
    /// here whichever routes are on). The executor reads such tensors ahead into buffers of their own (<see cref="TensorReader.Prefetch"/>).
    /// Not a tensor the counted route will take (decided here too, while its inputs are in the page cache): it reads
    /// the page cache in every pass, and a range read ahead into a buffer would serve only the first.
    /// </summary>
    public bool ReadsOnce(TaskVector vector, TensorInfo baseInfo, ModelLayout layout, bool writesDirectly)
    {
        var oneChunk = baseInfo.ElementCount <= chunkElements;
        if (Device is not null || baseInfo.DType != SafetensorsDType.BF16) return oneChunk;
        var (inputs, setup) = Prepare(vector, baseInfo, layout);
        if (!inputs.All(c => c.IsFused)) return oneChunk;
        var merge = (vector.Merge?.Method ?? MergeMethod.Linear).CreateTensorMerge(vector.Merge, setup);
        var singlePass = writesDirectly && TakesSinglePass(baseInfo, inputs) && merge.SinglePass is not null;
        var counted = writesDirectly && TakesSinglePass(baseInfo, inputs) && !singlePass && merge.CountedPass is not null &&
            StoredPasses.Takes(chunks.Reader, baseInfo, inputs);
        var keepsStored = !counted && KeepsStored(baseInfo, inputs, merge);
        _prepared[baseInfo] = (inputs, setup, merge, keepsStored, counted);
        return !counted && (oneChunk || singlePass || keepsStored);
    }

    /// <summary>
    /// Transforms whose thresholds depend on the whole tensor (breadcrumbs) count them in two passes over raw δ (the
    /// exact coarse and fine histograms) before the method's passes; from then on every pass sees δ pruned.
    /// </summary>
    private unsafe void CountTransformThresholds(InputChain[] inputs, ChunkPasses passes)
    {
        foreach (var input in inputs)
        {
            if (input.Breadcrumbs is { NeedsPasses: false, Ready: false } ready) ready.SkipPasses();
        }
        var counting = Enumerable.Range(0, inputs.Length).Where(i => inputs[i].Breadcrumbs is { NeedsPasses: true }).ToArray();
        if (counting.Length == 0) return;
        using (PhaseProfile.Time(chunks.Profile, Phase.Select))
        {
            passes.ForEachChunk((_, deltas) => { foreach (var i in counting) inputs[i].Breadcrumbs!.AddCoarse(deltas[i].Floats, deltas[i].Count); });
            foreach (var i in counting) inputs[i].Breadcrumbs!.FinishCoarse();
            passes.ForEachChunk((_, deltas) => { foreach (var i in counting) inputs[i].Breadcrumbs!.AddFine(deltas[i].Floats, deltas[i].Count); });
            foreach (var i in counting) inputs[i].Breadcrumbs!.FinishFine();
        }
        // A single chunk is kept from the first pass, raw: prune it now, once.
        passes.PruneCached(counting);
    }

    private static DropCounts Counts(InputChain[] inputs, IReadOnlyList<TaskVector> leaves, long n)
    {
        var counts = new DropCounts();
        foreach (var input in inputs)
        {
            counts.Dropped += input.Dropped;
            if (input.HasDropStep)
            {
                counts.Elements += n;
                counts.TargetDropped += input.TargetDropped;
            }
        }
        return counts;
    }

    /// <summary>
    /// The single-pass route: base and inputs read as stored bfloat16, and the method's fused kernel takes them to output
    /// bytes block by block, so no float32 chunk is ever written to memory. False, with nothing written or counted,
    /// when the method withdraws the route after the first chunk (<see cref="IBFloat16SinglePass.Confirm"/>).
    /// </summary>
    private unsafe bool StreamBFloat16(TaskVector vector, TensorInfo baseInfo, InputChain[] inputs, IBFloat16SinglePass singlePass, ExportSink export, long chunk, int chunkCount)
    {
        PrefetchReadOnce(chunks.Reader, vector, baseInfo, chunk, from: chunk);
        var ranges = new List<StoredRange>(inputs.Length + 1);
        for (var c = 0; c < chunkCount; c++)
        {
            cancellation.ThrowIfCancellationRequested();
            var first = c * chunk;
            var count = Math.Min(chunk, baseInfo.ElementCount - first);
            bool outputFinite;
            try
            {
                var sources = OpenChunk(chunks, baseInfo, inputs, first, count, ranges);
                // The kernel reads the base piece by piece, as it reads the inputs.
                var target = export.TargetOverBFloat16Base(null, count);
                ChunkKernels.MergedChunk merged;
                using (PhaseProfile.Time(chunks.Profile, Phase.DeltaFused)) merged = singlePass.MergeChunk(ranges[0], sources, target, first, count);
                if (c == 0 && !singlePass.Confirm(count, merged.Dropped))
                {
                    export.Discard();
                    return false;
                }
                // NaN/Inf in an input fails (or warns) before its chunk is written.
                foreach (var range in ranges) chunks.Reader.Complete(range);
                for (var i = 0; i < inputs.Length; i++) inputs[i].CountFused(merged.Dropped[i]);
                outputFinite = merged.OutputFinite;
            }
            finally
            {
                foreach (var range in ranges) range.Dispose();
                ranges.Clear();
            }
            // The kernel scanned its output for NaN/Inf as it wrote it: the writer need not scan it again.
            export.Emit(knownFinite: outputFinite);
        }
        return true;
    }

    /// <summary>
    /// Opens chunk [first, first + count) of the base and of every input as stored, adding the ranges to
    /// <paramref name="ranges"/> (the base's first, to be completed and disposed by the caller); returns each input's source.
    /// </summary>
    internal static DeltaSource[] OpenChunk(ChunkReader chunks, TensorInfo baseInfo, InputChain[] inputs, long first, long count, List<StoredRange> ranges)
    {
        ranges.Add(chunks.OpenRange(baseInfo, first, count));
        var sources = new DeltaSource[inputs.Length];
        for (var i = 0; i < inputs.Length; i++)
        {
            var stored = chunks.OpenRange(inputs[i].Tensor!.StoredBFloat16!, first, count);
            ranges.Add(stored);
            sources[i] = inputs[i].FusedSource(stored);
        }
        return sources;
    }

    /// <summary>
    /// Starts the OS reading elements [first, first + count) of a tensor of the base and of every input, so that disk
    /// reads of the next chunk overlap the computation of this one (see <see cref="TensorReader.Prefetch"/>, which
    /// reads a range ahead into a buffer of its own when <paramref name="readOnce"/>: no later pass reads it again).
    /// </summary>
    public static void Prefetch(TensorReader reader, TaskVector vector, TensorInfo baseInfo, long first, long count, bool readOnce = false)
    {
        reader.Prefetch(baseInfo, first, count, readOnce);
        if (!baseInfo.DType.IsMergeable()) return;
        foreach (var leaf in vector.Leaves) leaf.Input.Open(baseInfo)?.Prefetch(reader, first, count, readOnce);
    }

    /// <summary>
    /// Asks for a tensor's chunks of <paramref name="chunk"/> elements from element <paramref name="from"/> on, to be
    /// read once: all of them now, in order, so that the read-ahead (bounded by its buffer budget) keeps the disk busy
    /// through the whole tensor and reads each file as it lies. The executor asks for every chunk two tensors ahead
    /// where it knows the tensor is read once; the merge asks for the later ones again at the tensor's start, and a
    /// range asked for twice is read once.
    /// </summary>
    public static void PrefetchReadOnce(TensorReader reader, TaskVector vector, TensorInfo baseInfo, long chunk, long from = 0)
    {
        for (var first = from; first < baseInfo.ElementCount; first += chunk)
        {
            Prefetch(reader, vector, baseInfo, first, Math.Min(chunk, baseInfo.ElementCount - first), readOnce: true);
        }
    }

    /// <summary>The passes over one tensor's chunks: each reads (or, for a single chunk, reuses) the base and every input's δ.</summary>
    private sealed class ChunkPasses(TensorMerger merger, TaskVector vector, TensorInfo baseInfo, InputChain[] inputs, ITensorMerge merge,
        bool baseStaysBFloat16, long chunk, int chunkCount) : IChunkPasses
    {
        private ChunkView? _cachedBase;
        private ChunkView[]? _cachedDeltas;
        private ChunkView[]? _stored;

        /// <summary>
        /// Whether the stored bytes of the whole tensor are read in the first pass and kept (the base in raw slot 0,
        /// input i in float slot i + 1, whose float32 chunks other tensors use), each pass computing δ from them into
        /// float slot n + 1 + i (n inputs).
        /// </summary>
        public bool KeepsStored { get; init; }

        /// <summary>Applies the now-known breadcrumbs pruning of inputs <paramref name="indexes"/> to the cached single chunk, if any.</summary>
        public unsafe void PruneCached(int[] indexes)
        {
            if (_cachedDeltas is null) return;
            foreach (var i in indexes) inputs[i].Breadcrumbs!.Apply(_cachedDeltas[i].Floats, 0, _cachedDeltas[i].Count);
        }

        /// <summary>Passes run so far (the first computes what the transforms count: drops, L1 norms).</summary>
        public int Count { get; private set; }

        public void ForEachChunk(Action<long, ChunkView[]> body) => ForEachChunk((first, _, deltas) => body(first, deltas));

        public void ForEachChunk(Action<long, ChunkView, ChunkView[]> body)
        {
            var chunks = merger.Chunks;
            var n = baseInfo.ElementCount;
            for (var c = 0; c < chunkCount; c++)
            {
                merger.Cancellation.ThrowIfCancellationRequested();
                var first = c * chunk;
                var count = Math.Min(chunk, n - first);
                if (KeepsStored) _stored ??= ReadStored();
                else if (c + 1 < chunkCount) Prefetch(chunks.Reader, vector, baseInfo, first + chunk, Math.Min(chunk, n - first - chunk));
                ChunkView baseChunk;
                ChunkView[] deltas;
                if (_cachedDeltas is not null)
                {
                    baseChunk = _cachedBase!;
                    deltas = _cachedDeltas;
                }
                else
                {
                    var stored = _stored;
                    baseChunk = stored is not null ? stored[0].Slice(first, count)
                        : baseStaysBFloat16 ? chunks.ReadBFloat16(0, baseInfo, first, count) : chunks.ReadFloat32(0, baseInfo, first, count);
                    var firstPass = Count == 0;
                    // δ of a kept tensor goes to slots after the ones holding its stored inputs.
                    deltas = inputs.Select((input, i) => input.Delta(chunks, stored is null ? i + 1 : inputs.Length + 1 + i, baseChunk, first, count, firstPass,
                        firstPass ? merge.SampleWhileReading(i) : null, stored is null ? null : InMemory(input.Tensor!.StoredBFloat16!, stored[i + 1], first, count))).ToArray();
                    if (chunkCount == 1)
                    {
                        _cachedBase = baseChunk;
                        _cachedDeltas = deltas;
                    }
                }
                body(first, baseChunk, deltas);
            }
            Count++;
        }

        /// <summary>
        /// From the stored bytes of a tensor kept as stored; otherwise from the files of a tensor in the page cache
        /// (<see cref="FilePresample"/>), which spares the bracket pass its read of every δ, also for a tensor of one
        /// chunk (whose δ stays in memory between passes: reading the runs still costs less than that pass).
        /// </summary>
        public unsafe bool[] Presample(MagnitudeSelection?[] selections)
        {
            if (!KeepsStored)
            {
                using (PhaseProfile.Time(merger.Chunks.Profile, Phase.Select)) return merger.FilePresample.Add(baseInfo, inputs, selections);
            }
            var added = selections.Select((s, i) => s is not null && inputs[i].IsFused).ToArray();
            if (!added.Contains(true)) return added;
            _stored ??= ReadStored();
            var n = baseInfo.ElementCount;
            using (PhaseProfile.Time(merger.Chunks.Profile, Phase.Select))
            {
                ChunkKernels.ForPresampleParts(n, (first, runs) =>
                {
                    var at = first * ChunkKernels.PresampleSpacing;
                    for (var i = 0; i < inputs.Length; i++)
                    {
                        if (!added[i]) continue;
                        var (dare, key, threshold, scale) = inputs[i].FusedDrop;
                        selections[i]!.AddPresample(ChunkKernels.PresampleTable((ushort*)_stored[0].Data + at, (ushort*)_stored[i + 1].Data + at, n,
                            ChunkKernels.PresampleSpacing, first, runs, dare, key, threshold, scale));
                    }
                });
            }
            return added;
        }

        /// <summary>
        /// Reads the whole tensor of the base and of each input as stored (NaN/Inf reported as it lands), in the
        /// executor's chunks, which it reads ahead into buffers of their own when they are not cached: the executor asked
        /// for them two tensors ahead, and the later ones are asked for again now (for a caller that did not).
        /// </summary>
        private unsafe ChunkView[] ReadStored()
        {
            var chunks = merger.Chunks;
            var n = baseInfo.ElementCount;
            var readChunk = merger.ReadChunkElements;
            var readChunks = (n + readChunk - 1) / readChunk;
            PrefetchReadOnce(chunks.Reader, vector, baseInfo, readChunk, from: readChunk);
            var stored = inputs.Select((_, i) => new ChunkView(chunks.Workspace.Floats(i + 1, (n + 1) / 2).Data, n, SafetensorsDType.BF16))
                .Prepend(chunks.Workspace.Raw(0, n)).ToArray();
            var infos = inputs.Select(input => input.Tensor!.StoredBFloat16!).Prepend(baseInfo).ToArray();
            for (var c = 0; c < readChunks; c++)
            {
                var first = c * readChunk;
                var count = Math.Min(readChunk, n - first);
                for (var i = 0; i < infos.Length; i++)
                {
                    using (PhaseProfile.Time(chunks.Profile, Phase.Read)) chunks.Reader.ReadElements(infos[i], first, count, stored[i].Slice(first, count).Data);
                }
            }
            return stored;
        }

        /// <summary>Elements [first, first + count) of a kept tensor as an in-memory range (scanned when it was read).</summary>
        private static unsafe StoredRange InMemory(TensorInfo info, ChunkView kept, long first, long count) =>
            new(info, first, count, kept.Slice(first, count).Data, owned: false);
    }

    /// <summary>Elements per chunk as the executor reads ahead (a kept tensor's passes take smaller ones).</summary>
    private long ReadChunkElements => chunkElements;
}
