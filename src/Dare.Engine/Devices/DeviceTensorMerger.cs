using Dare.Engine.Safetensors;
using TorchSharp;
using static TorchSharp.torch;

namespace Dare.Engine.Merge;

/// <summary>A method's merge of one tensor on the tensor backend: passes over device chunks, then per chunk the merged δ (λ applied) on the device.</summary>
internal interface IDeviceMerge
{
    /// <summary>The passes the method needs before the combine (TIES's selection histograms; none for linear).</summary>
    void RunPasses(IDeviceChunkPasses passes);

    /// <summary>What the method does to each input's δ before the L1 rescale (TIES's trim, whose thresholds are the unscaled magnitudes'); none by default.</summary>
    Tensor[] PrepareChunk(long first, Tensor[] deltas) => deltas;

    /// <summary>The merged δ of the chunk at element <paramref name="first"/>, float32 on the device.</summary>
    Tensor Combine(long first, Tensor[] deltas);

    /// <summary>The combine with the base chunk (float32 on the device), for methods that read the base's values; by default <see cref="Combine(long, Tensor[])"/>.</summary>
    Tensor Combine(long first, Tensor baseChunk, Tensor[] deltas) => Combine(first, deltas);
}

/// <summary>Passes over a tensor's chunks on the device: each call sees every chunk's δs (one per input, transform applied) in element order.</summary>
internal interface IDeviceChunkPasses
{
    void ForEachChunk(Action<long, Tensor[]> body);

    /// <summary>One pass that also sees the base chunk, float32 on the device.</summary>
    void ForEachChunk(Action<long, Tensor, Tensor[]> body);
}

/// <summary>
/// The TorchSharp tensor backend of an export (<see cref="ComputeDevice.UsesTorchBackend"/>): for each chunk the host
/// reads the stored base and inputs (bfloat16 kept as stored) into one of two buffer sets, alternately, uploads them,
/// and the device computes δ = tuned − base, the DARE mask, the method's passes and combine, base + δ and the output
/// conversion; only output bytes come back. The host reads chunk i + 1 while the device works on chunk i (device work is
/// queued asynchronously on CUDA; on the CPU device it is plain sequential), and with CUDA the buffers are pinned, for
/// fast copies that the host waits for (see ChunkPasses.Upload). Every method merges here through its <see cref="MergeMethod.CreateDeviceMerge"/>.
/// </summary>
internal sealed class DeviceTensorMerger : IDisposable
{
    private readonly ComputeDevice _device;
    private readonly ChunkReader[] _buffers;
    private readonly CancellationToken _cancellation;

    public DeviceTensorMerger(ComputeDevice device, TensorReader reader, PhaseProfile? profile, CancellationToken cancellation)
    {
        _device = device;
        _cancellation = cancellation;
        _buffers = new[] { 0, 1 }.Select(_ => new ChunkReader(reader, new ChunkWorkspace { TorchBuffers = true, Pinned = device.IsCuda }, profile)).ToArray();
    }

    public ComputeDevice Device => _device;

    /// <summary>Merges one tensor on the device into <paramref name="sink"/>; drop counts go to the inputs' transforms.</summary>
    public void Merge(TaskVector vector, TensorInfo baseInfo, InputChain[] inputs, IDeviceMerge merge, ExportSink sink, long chunk, int chunkCount)
    {
        // Everything the tensor's merge leaves (a single chunk's cached tensors among them) is freed with it.
        using var scope = NewDisposeScope();
        var passes = new ChunkPasses(this, vector, baseInfo, inputs, chunk, chunkCount);
        try
        {
            passes.CountBreadcrumbs();
            merge.RunPasses(passes);
            // An L1 rescale needs the whole tensor's norms (taken in the first pass) before the combine.
            if (passes.Count == 0 && inputs.Any(c => c.NeedsWholeTensorFirst)) passes.ForEachChunk((_, _) => { });
            var rescales = inputs.Select(c => (float)c.Rescale).ToArray();
            Tensor? result = null;
            passes.Run((first, baseChunk, deltas) =>
            {
                // As the CPU kernels do it: the method's preparation (a trim), each input's L1 rescale, the combine.
                var prepared = merge.PrepareChunk(first, deltas).Select((delta, i) => rescales[i] == 1f ? delta : delta.mul(rescales[i])).ToArray();
                result = sink.OnDevice(merge.Combine(first, baseChunk, prepared), baseChunk);
            }, _ => sink.EmitFromDevice(result!));
            passes.RecordDrops();
        }
        finally
        {
            // Totals kept across chunks (outside the scopes) that a failure or cancellation left.
            passes.FreeTotals();
        }
    }

    public void Dispose()
    {
        foreach (var buffer in _buffers) buffer.Workspace.Dispose();
    }

    /// <summary>One chunk as read on the host: the base (bfloat16 as stored, or float32) and per input its stored bfloat16 or its float32 δ.</summary>
    private sealed class HostChunk(Tensor baseChunk, Tensor?[] inputs) : IDisposable
    {
        public Tensor Base { get; } = baseChunk;
        public Tensor?[] Inputs { get; } = inputs;

        public void Dispose()
        {
            Base.Dispose();
            foreach (var input in Inputs) input?.Dispose();
        }
    }

    private sealed class ChunkPasses(DeviceTensorMerger owner, TaskVector vector, TensorInfo baseInfo, InputChain[] inputs, long chunk, int chunkCount) : IDeviceChunkPasses
    {
        private readonly Tensor?[] _dropped = new Tensor?[inputs.Length];

        /// <summary>Per input, the L1 sums before and after its drop (<see cref="DeviceKernels.L1Sums"/>), summed over the first pass on the device.</summary>
        private readonly (Tensor Sums, Tensor NonFinite)?[,] _l1 = new (Tensor, Tensor)?[inputs.Length, 2];

        /// <summary>Breadcrumbs' pruning per input (null without it, or when it keeps everything); it prunes once its thresholds are known.</summary>
        private readonly DeviceBreadcrumbs?[] _crumbs = inputs.Select(i => i.Breadcrumbs is { KeepsAll: false } b ? new DeviceBreadcrumbs(b) : null).ToArray();
        private bool _crumbsReady;

        private Tensor? _cachedBase;
        private Tensor[]? _cachedDeltas;
        private int _count;

        // The base is uploaded as stored when every input's δ is computed on the device from a stored bfloat16 tensor.
        private readonly bool _baseAsStored = baseInfo.DType == SafetensorsDType.BF16 && inputs.All(i => i.Tensor is null || i.Tensor.StoredBFloat16 is not null);

        /// <summary>The passes run so far.</summary>
        public int Count => _count;

        /// <summary>Breadcrumbs' thresholds from two counting passes over raw δ, before the method's passes; then a cached single chunk is pruned once.</summary>
        public void CountBreadcrumbs()
        {
            // A pass cut short leaves its histograms to FreeTotals.
            var counting = _crumbs.Where(c => c is { NeedsPasses: true }).Select(c => c!).ToArray();
            for (var pass = 0; pass < 2 && counting.Length > 0; pass++)
            {
                var inputPass = pass;
                ForEachChunk((_, deltas) =>
                {
                    for (var i = 0; i < deltas.Length; i++) if (_crumbs[i] is { NeedsPasses: true } c) c.Count(deltas[i], inputPass);
                });
                foreach (var c in counting) c.FinishPass(pass);
            }
            _crumbsReady = true;
            if (_cachedDeltas is null) return;
            for (var i = 0; i < _crumbs.Length; i++)
            {
                if (_crumbs[i] is not { } crumbs) continue;
                _cachedDeltas[i] = crumbs.Apply(_cachedDeltas[i], 0);
                crumbs.EndPass();
            }
        }

        public void ForEachChunk(Action<long, Tensor[]> body) => Run((first, _, deltas) => body(first, deltas), null);

        public void ForEachChunk(Action<long, Tensor, Tensor[]> body) => Run(body, null);

        /// <summary>One pass: <paramref name="compute"/> queues the device work of a chunk, the next chunk is read, then <paramref name="complete"/> waits for its result.</summary>
        public void Run(Action<long, Tensor, Tensor[]> compute, Action<long>? complete)
        {
            if (_cachedDeltas is not null)
            {
                compute(0, _cachedBase!, _cachedDeltas);
                complete?.Invoke(0);
                _count++;
                return;
            }
            var n = baseInfo.ElementCount;
            var next = chunkCount > 0 ? Read(0, Math.Min(chunk, n)) : null;
            try
            {
                for (var c = 0; c < chunkCount; c++)
                {
                    owner._cancellation.ThrowIfCancellationRequested();
                    var first = c * chunk;
                    var count = Math.Min(chunk, n - first);
                    using var host = next!;
                    next = null;
                    using var scope = chunkCount > 1 ? NewDisposeScope() : null;
                    var (baseChunk, deltas) = Upload(host, first, count, firstPass: _count == 0);
                    compute(first, baseChunk, deltas);
                    // Read the next chunk into the other buffer set while the device works on this one.
                    next = c + 1 < chunkCount ? Read(first + chunk, Math.Min(chunk, n - first - chunk)) : null;
                    complete?.Invoke(first);
                    if (chunkCount == 1)
                    {
                        _cachedBase = baseChunk;
                        _cachedDeltas = deltas;
                    }
                }
            }
            finally
            {
                // A chunk read ahead of a pass that failed (or was cancelled) is freed with it.
                next?.Dispose();
            }
            if (_count == 0) RecordL1Norms();
            if (_crumbsReady) foreach (var crumbs in _crumbs) crumbs?.EndPass();
            _count++;
        }

        /// <summary>The host side of elements [first, first + count), in buffer set (chunk index mod 2); detached from scopes, disposed by the loop.</summary>
        private HostChunk Read(long first, long count)
        {
            var chunks = owner._buffers[(int)(first / chunk % 2)];
            if (first + chunk < baseInfo.ElementCount) TensorMerger.Prefetch(chunks.Reader, vector, baseInfo, first + chunk, Math.Min(chunk, baseInfo.ElementCount - first - chunk));
            var baseChunk = _baseAsStored ? chunks.ReadBFloat16(0, baseInfo, first, count) : chunks.ReadFloat32(0, baseInfo, first, count);
            var values = inputs.Select((input, i) => input.Tensor switch
            {
                null => null,
                { StoredBFloat16: { } stored } => chunks.ReadBFloat16(i + 1, stored, first, count),
                var tensor => tensor.ReadDelta(chunks, i + 1, baseChunk, first, count),
            }).ToArray();
            return new HostChunk(baseChunk.AsTensor().DetachFromDisposeScope(), values.Select(v => v?.AsTensor().DetachFromDisposeScope()).ToArray());
        }

        /// <summary>
        /// The base chunk (float32) and every input's δ with its DARE drop applied, on the device. Each copy returns once
        /// it is done (after the device work queued before it): the host rewrites this buffer set two chunks later, and
        /// a pass that reads nothing back (the Gram sums, Arcee Fusion's rows) would otherwise let it overwrite bytes a
        /// queued copy has yet to take; TorchSharp 0.107 has no event to wait for one copy alone. The host still reads
        /// the next chunk while the device computes this one.
        /// </summary>
        private (Tensor Base, Tensor[] Deltas) Upload(HostChunk host, long first, long count, bool firstPass)
        {
            var device = owner._device.TorchDevice;
            var baseChunk = host.Base.to(device).to_type(ScalarType.Float32);
            var deltas = new Tensor[inputs.Length];
            for (var i = 0; i < inputs.Length; i++)
            {
                var input = inputs[i];
                // Intermediates (widened input, unmasked δ, the mask) are freed per input, not at the end of the chunk.
                using var inputScope = NewDisposeScope();
                var delta = host.Inputs[i] switch
                {
                    null => zeros(new[] { count }, ScalarType.Float32, device),
                    { dtype: ScalarType.BFloat16 } stored => stored.to(device).to_type(ScalarType.Float32).sub(baseChunk),
                    var values => values.to(device),
                };
                var l1 = firstPass && input.L1Norms is not null;
                if (l1) AddL1(i, 0, delta);
                Tensor? mask = null;
                if (input.Drop is { } drop)
                {
                    mask = DeviceKernels.DropMask(drop.Key, drop.Threshold, first, count, device);
                    delta = DeviceKernels.ApplyDrop(delta, mask, drop.Scale);
                }
                else if (input.Della is { Prunes: true } della)
                {
                    var (thresholds, scales) = della.ByRankTables;
                    (delta, mask) = DeviceKernels.DellaPrune(delta, first, della.Key, della.RowLength, thresholds, scales);
                }
                else if (_crumbsReady && _crumbs[i] is { } crumbs) delta = crumbs.Apply(delta, first);
                if (l1) AddL1(i, 1, delta);
                if (mask is not null && firstPass)
                {
                    // Counted on the device and read once per tensor, so no chunk waits for it.
                    var sum = mask.sum(ScalarType.Int64);
                    var total = _dropped[i] is { } before ? before.add(sum) : sum;
                    _dropped[i]?.Dispose();
                    _dropped[i] = total.DetachFromDisposeScope();
                }
                deltas[i] = delta.MoveToOuterDisposeScope();
            }
            return (baseChunk, deltas);
        }

        /// <summary>Adds δ's L1 sums to input <paramref name="i"/>'s totals before (<paramref name="after"/> 0) or after (1) its drop.</summary>
        private void AddL1(int i, int after, Tensor delta)
        {
            var (sums, nonFinite) = DeviceKernels.L1Sums(delta);
            if (_l1[i, after] is { } total)
            {
                total.Sums.add_(sums);
                total.NonFinite.add_(nonFinite);
                sums.Dispose();
                nonFinite.Dispose();
            }
            else _l1[i, after] = (sums.DetachFromDisposeScope(), nonFinite.DetachFromDisposeScope());
        }

        /// <summary>Hands the first pass's L1 sums to the inputs' accumulators (one read from the device per tensor), so their rescale is known.</summary>
        private void RecordL1Norms()
        {
            for (var i = 0; i < inputs.Length; i++)
            {
                if (inputs[i].L1Norms is not { } norms) continue;
                foreach (var (accumulator, index) in new[] { (norms.Before, 0), (norms.After, 1) })
                {
                    if (_l1[i, index] is not { } total) continue;
                    accumulator.AddExact(total.Sums.cpu().data<long>().ToArray(), total.NonFinite.item<double>());
                    total.Sums.Dispose();
                    total.NonFinite.Dispose();
                    _l1[i, index] = null;
                }
            }
        }

        /// <summary>Hands the drop counts of the first pass to the inputs' transforms.</summary>
        public void RecordDrops()
        {
            for (var i = 0; i < inputs.Length; i++)
            {
                if (_dropped[i] is not { } dropped) continue;
                inputs[i].CountFused(dropped.item<long>());
                dropped.Dispose();
                _dropped[i] = null;
            }
        }

        /// <summary>Frees the drop counts, L1 sums and breadcrumbs' tables still held (all consumed on success).</summary>
        public void FreeTotals()
        {
            foreach (var dropped in _dropped) dropped?.Dispose();
            foreach (var total in _l1)
            {
                total?.Sums.Dispose();
                total?.NonFinite.Dispose();
            }
            foreach (var crumbs in _crumbs) crumbs?.Dispose();
        }
    }
}
