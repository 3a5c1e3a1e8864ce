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
        var added = new bool[selections.Length];
        if (!selections.Any(s => s is not null)) return added;
        using (PhaseProfile.Time(chunks.Profile, Phase.Select))
        {
            presample.ReadBase(baseInfo, inputs.Length);
            // Each input on a core of its own: most of a presample is its reads' system calls, on one thread it is
            // ~10 % of a large TIES export while the other core waits.
            Partition.Each(selections.Length, i =>
            {
                if (selections[i] is not { } selection || !presample.Takes(baseInfo, inputs[i], knownCached: true)) return;
                presample.Add(inputs[i], selection, slot: i);
                added[i] = true;
            });
        }
        return added;
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
/// TIES presamples read from the files of tensors in the page cache (<see cref="ChunkKernels.PresampleRuns"/>): a few
/// thousand reads of 512 bytes, ~10 ms for a 65M-element tensor here; the base's runs are read once per tensor. One
/// reader serves every tensor of an export and reuses its buffers: runs read into fresh arrays for each tensor (large
/// objects, freed only by a full collection) grew a large TIES export's memory by ~100 MB. Inputs in different slots
/// may be presampled at once, on different threads, once the base's runs are read.
/// </summary>
internal sealed class FilePresample(TensorReader reader)
{
    private ushort[] _baseRuns = Array.Empty<ushort>();
    private ushort[][] _tunedRuns = Array.Empty<ushort[]>();
    private TensorInfo? _base;

    /// <summary>Tensors whose base runs were read (a tensor presampled again by the general route after a counted one gave way counts once).</summary>
    public int Tensors { get; private set; }

    /// <summary>Whether <paramref name="input"/>'s files can give a presample of tensor <paramref name="baseInfo"/> (<paramref name="knownCached"/>: the caller found them in the page cache already).</summary>
    public bool Takes(TensorInfo baseInfo, InputChain input, bool knownCached = false) =>
        input.IsFused && baseInfo.DType == SafetensorsDType.BF16 && baseInfo.Assembly is null && input.Tensor!.StoredBFloat16!.Assembly is null &&
        (knownCached || (reader.IsCached(baseInfo) && reader.IsCached(input.Tensor!.StoredBFloat16!)));

    /// <summary>
    /// Reads the base's runs of tensor <paramref name="baseInfo"/>, unless they are read already, and makes room for
    /// <paramref name="inputs"/> inputs' runs (one buffer each, so that they can be added at once).
    /// </summary>
    public void ReadBase(TensorInfo baseInfo, int inputs)
    {
        if (inputs > _tunedRuns.Length)
        {
            var old = _tunedRuns.Length;
            Array.Resize(ref _tunedRuns, inputs);
            for (var i = old; i < inputs; i++) _tunedRuns[i] = Array.Empty<ushort>();
        }
        if (ReferenceEquals(_base, baseInfo)) return;
        ReadRuns(baseInfo, ref _baseRuns);
        _base = baseInfo;
        Tensors++;
    }

    /// <summary>
    /// Adds <paramref name="input"/>'s presample of the tensor whose base runs were read last (<see cref="ReadBase"/>)
    /// to <paramref name="selection"/>, reading its runs into buffer <paramref name="slot"/>; the caller checked <see cref="Takes"/>.
    /// </summary>
    public unsafe void Add(InputChain input, MagnitudeSelection selection, int slot = 0)
    {
        if (_base is null) throw new InvalidOperationException("The base's runs are not read.");
        if (slot >= _tunedRuns.Length) throw new ArgumentOutOfRangeException(nameof(slot), "Input slot past those ReadBase made room for.");
        var (dare, key, threshold, scale) = input.FusedDrop;
        ReadRuns(input.Tensor!.StoredBFloat16!, ref _tunedRuns[slot]);
        fixed (ushort* baseBits = _baseRuns, tunedBits = _tunedRuns[slot])
        {
            ChunkKernels.PresampleRuns(baseBits, tunedBits, _base.ElementCount, dare, key, threshold, scale, selection);
        }
    }

    /// <summary>The presample's runs of a tensor, read from its file into <paramref name="bits"/> (grown when too small).</summary>
    private unsafe void ReadRuns(TensorInfo info, ref ushort[] bits)
    {
        var runs = (info.ElementCount + ChunkKernels.PresampleSpacing - 1) / ChunkKernels.PresampleSpacing;
        if (bits.Length < runs * ChunkKernels.PresampleRun) bits = new ushort[runs * ChunkKernels.PresampleRun];
        fixed (ushort* destination = bits) reader.ReadRuns(info, ChunkKernels.PresampleSpacing, ChunkKernels.PresampleRun, (byte*)destination);
    }
}
