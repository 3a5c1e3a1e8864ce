using Dare.Engine.Safetensors;

namespace Dare.Engine.Merge;

/// <summary>
/// The counting passes of the counted route (<see cref="IBFloat16CountedPass"/>) over one tensor whose base and inputs
/// are in the page cache as stored bfloat16: each pass reads every chunk piece by piece from the page cache and counts
/// each input's δ without storing it (<see cref="ChunkKernels.CountFromBFloat16"/>); the presample comes from the files.
/// Reading a tensor of one chunk into memory once for all passes instead was slower here (copying 6.5 GB into memory
/// outside the caches took 1.5 s of a large TIES export, more than reading it piece by piece twice).
/// </summary>
internal sealed class StoredPasses(ChunkReader chunks, TensorInfo baseInfo, InputChain[] inputs, long chunk, FilePresample presample, CancellationToken cancellation)
    : IStoredPasses
{
    /// <summary>
    /// Whether the counted route can read this tensor: bfloat16 base and inputs, each fused, all in the page cache, in
    /// files that were in it before the export read them (<see cref="TensorReader.FileWasCached"/>), so that a cold
    /// file's tensor cached by the read-ahead of its neighbour is read ahead once as the general route reads it.
    /// </summary>
    public static bool Takes(TensorReader reader, TensorInfo baseInfo, InputChain[] inputs) =>
        baseInfo.DType == SafetensorsDType.BF16 && inputs.All(c => c.IsFused) &&
        inputs.Select(c => c.Tensor!.StoredBFloat16!).Prepend(baseInfo).All(info => reader.FileWasCached(info) && reader.IsCached(info));

    public bool[] Presample(MagnitudeSelection?[] selections)
    {
        using (PhaseProfile.Time(chunks.Profile, Phase.Select)) return presample.Add(baseInfo, inputs, selections, knownCached: true);
    }

    public void Count(MagnitudeSelection?[] selections)
    {
        var n = baseInfo.ElementCount;
        var ranges = new List<StoredRange>(inputs.Length + 1);
        for (var first = 0L; first < n; first += chunk)
        {
            cancellation.ThrowIfCancellationRequested();
            var count = Math.Min(chunk, n - first);
            try
            {
                var sources = TensorMerger.OpenChunk(chunks, baseInfo, inputs, first, count, ranges);
                using (PhaseProfile.Time(chunks.Profile, Phase.Select)) ChunkKernels.CountFromBFloat16(ranges[0], sources, selections, first, count);
                // NaN/Inf in an input fails (or warns) in the first pass that reads it, before anything is written.
                foreach (var range in ranges) chunks.Reader.Complete(range);
            }
            finally
            {
                foreach (var range in ranges) range.Dispose();
                ranges.Clear();
            }
        }
    }
}

/// <summary>
/// TIES presamples read from the files of tensors in the page cache: a few thousand reads of 512 bytes, ~10 ms for a
/// 65M-element tensor here, split between the cores. One reader serves every tensor of an export.
/// </summary>
internal sealed class FilePresample(TensorReader reader)
{
    private TensorInfo? _last;

    /// <summary>Tensors presampled (a tensor presampled again by the general route after a counted one gave way counts once).</summary>
    public int Tensors { get; private set; }

    /// <summary>
    /// Adds input i's presample of tensor <paramref name="baseInfo"/> to <paramref name="selections"/>[i] (null: none
    /// wanted) for each fused input whose files can give one: the base and the input stored as bfloat16 tensors of
    /// their own (not assembled from pieces), in the page cache (<paramref name="knownCached"/>: the caller found them
    /// there already). Returns which were added. Each core reads its share of the base's runs and of every input's
    /// (<see cref="ChunkKernels.ForPresampleParts"/>): a presample is mostly its reads' system calls.
    /// </summary>
    public unsafe bool[] Add(TensorInfo baseInfo, InputChain[] inputs, MagnitudeSelection?[] selections, bool knownCached = false)
    {
        var added = new bool[selections.Length];
        if (!selections.Any(s => s is not null) || baseInfo.DType != SafetensorsDType.BF16 || baseInfo.Assembly is not null ||
            !(knownCached || reader.IsCached(baseInfo))) return added;
        for (var i = 0; i < selections.Length; i++)
        {
            added[i] = selections[i] is not null && inputs[i] is { IsFused: true, Tensor.StoredBFloat16: { Assembly: null } tuned } &&
                (knownCached || reader.IsCached(tuned));
        }
        if (!added.Contains(true)) return added;
        var n = baseInfo.ElementCount;
        ChunkKernels.ForPresampleParts(n, (first, runs) =>
        {
            var length = runs * ChunkKernels.PresampleRun;
            using var scratch = KernelScratch.Rent(2 * length * sizeof(ushort));
            var baseRuns = (ushort*)scratch.Pointer;
            var tunedRuns = baseRuns + length;
            reader.ReadRuns(baseInfo, ChunkKernels.PresampleSpacing, ChunkKernels.PresampleRun, first, runs, (byte*)baseRuns);
            for (var i = 0; i < inputs.Length; i++)
            {
                if (!added[i]) continue;
                reader.ReadRuns(inputs[i].Tensor!.StoredBFloat16!, ChunkKernels.PresampleSpacing, ChunkKernels.PresampleRun, first, runs, (byte*)tunedRuns);
                var (dare, key, threshold, scale) = inputs[i].FusedDrop;
                selections[i]!.AddPresample(ChunkKernels.PresampleTable(baseRuns, tunedRuns, n, ChunkKernels.PresampleRun, first, runs, dare, key, threshold, scale));
            }
        });
        if (!ReferenceEquals(_last, baseInfo)) Tensors++;
        _last = baseInfo;
        return added;
    }
}
