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
    /// <summary>Whether the counted route can read this tensor: bfloat16 base and inputs, each fused, all in the page cache.</summary>
    public static bool Takes(TensorReader reader, TensorInfo baseInfo, InputChain[] inputs) =>
        baseInfo.DType == SafetensorsDType.BF16 && inputs.All(c => c.IsFused) && reader.IsCached(baseInfo) &&
        inputs.All(c => reader.IsCached(c.Tensor!.StoredBFloat16!));

    public bool Presample(int input, MagnitudeSelection selection) => presample.Add(baseInfo, inputs[input], selection, knownCached: true);

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
/// TIES presamples read from the files of tensors in the page cache (<see cref="ChunkKernels.PresampleRuns"/>): a few
/// thousand reads of 512 bytes, ~10 ms for a 65M-element tensor here; the base's runs are read once per tensor. One
/// reader serves every tensor of an export and reuses its buffers: runs read into fresh arrays for each tensor (large
/// objects, freed only by a full collection) grew a large TIES export's memory by ~100 MB.
/// </summary>
internal sealed class FilePresample(TensorReader reader, PhaseProfile? profile)
{
    private ushort[] _baseRuns = Array.Empty<ushort>(), _tunedRuns = Array.Empty<ushort>();
    private TensorInfo? _base;

    /// <summary>Tensors whose base runs were read (a tensor presampled again by the general route after a counted one gave way counts once).</summary>
    public int Tensors { get; private set; }

    /// <summary>
    /// Adds <paramref name="input"/>'s presample of tensor <paramref name="baseInfo"/> to <paramref name="selection"/>;
    /// false, with nothing added, when its files cannot give one (<paramref name="knownCached"/>: the caller found
    /// them in the page cache already).
    /// </summary>
    public unsafe bool Add(TensorInfo baseInfo, InputChain input, MagnitudeSelection selection, bool knownCached = false)
    {
        if (!input.IsFused) return false;
        var tuned = input.Tensor!.StoredBFloat16!;
        if (baseInfo.DType != SafetensorsDType.BF16 || baseInfo.Assembly is not null || tuned.Assembly is not null ||
            !(knownCached || (reader.IsCached(baseInfo) && reader.IsCached(tuned))))
        {
            return false;
        }
        var (dare, key, threshold, scale) = input.FusedDrop;
        using (PhaseProfile.Time(profile, Phase.Select))
        {
            if (!ReferenceEquals(_base, baseInfo))
            {
                ReadRuns(baseInfo, ref _baseRuns);
                _base = baseInfo;
                Tensors++;
            }
            ReadRuns(tuned, ref _tunedRuns);
            fixed (ushort* baseBits = _baseRuns, tunedBits = _tunedRuns)
            {
                ChunkKernels.PresampleRuns(baseBits, tunedBits, baseInfo.ElementCount, dare, key, threshold, scale, selection);
            }
        }
        return true;
    }

    /// <summary>The presample's runs of a tensor, read from its file into <paramref name="bits"/> (grown when too small).</summary>
    private unsafe void ReadRuns(TensorInfo info, ref ushort[] bits)
    {
        var runs = (info.ElementCount + ChunkKernels.PresampleSpacing - 1) / ChunkKernels.PresampleSpacing;
        if (bits.Length < runs * ChunkKernels.PresampleRun) bits = new ushort[runs * ChunkKernels.PresampleRun];
        fixed (ushort* destination = bits) reader.ReadRuns(info, ChunkKernels.PresampleSpacing, ChunkKernels.PresampleRun, (byte*)destination);
    }
}
