using Dare.Engine.Safetensors;

namespace Dare.Engine.Merge;

/// <summary>What a method's per-tensor merge is given: the tensor, its inputs (after their transforms), the chunking.</summary>
internal sealed record TensorMergeSetup(TensorPosition Position, long ElementCount, long ChunkElements, IReadOnlyList<InputChain> Inputs, PhaseProfile? Profile)
{
    public string TensorName => Position.Name;

    /// <summary>See <see cref="TiesTensorMerge.DefaultSurvivorSigmas"/> (tests set it below 0 to make every proof wait for the first chunk).</summary>
    public double SurvivorSigmas { get; init; } = TiesTensorMerge.DefaultSurvivorSigmas;

    /// <summary>Take the fused TIES routes on any processor (tests; see <see cref="DareTiesKernel.Takes"/>).</summary>
    public bool FusedOnAnyProcessor { get; init; }

    /// <summary>Elements per row (the last dimension; the whole tensor for a vector), for methods that work row by row.</summary>
    public long RowLength { get; init; } = Math.Max(1, ElementCount);

    /// <summary>The tensor's shape (row-wise methods take rows of its last dimension); [ElementCount] when not given.</summary>
    public IReadOnlyList<long> Shape { get => _shape ?? new[] { ElementCount }; init => _shape = value; }
    private readonly IReadOnlyList<long>? _shape;
}

/// <summary>Runs passes over a tensor's chunks for a method: each call sees every chunk's δs (one per input) in element order.</summary>
internal interface IChunkPasses
{
    /// <summary>One pass: <paramref name="body"/>(first element, δ of each input) for every chunk.</summary>
    void ForEachChunk(Action<long, ChunkView[]> body);

    /// <summary>One pass that also sees the base chunk (float32 when the merge says <see cref="ITensorMerge.NeedsBaseValues"/>).</summary>
    void ForEachChunk(Action<long, ChunkView, ChunkView[]> body);

    /// <summary>
    /// Adds a sample of each input i's δ to <paramref name="selections"/>[i]'s presample (null: none wanted) before the
    /// first pass (<see cref="MagnitudeSelection.AddPresample"/>), when the tensor is in memory already (kept as stored)
    /// or in the page cache, so that the first pass can count a bracket instead of sampling; inputs at once. Returns
    /// which were added.
    /// </summary>
    bool[] Presample(MagnitudeSelection?[] selections);
}

/// <summary>
/// A method's merge of one tensor: any passes it needs over the chunks (e.g. TIES's magnitude thresholds), then per
/// chunk the combine of the inputs' δs into the merged δ (λ applied), written through a <see cref="CombineTarget"/>.
/// </summary>
internal interface ITensorMerge
{
    /// <summary>A selection whose sample the fused δ kernel takes in the first pass for input <paramref name="input"/>, or null.</summary>
    MagnitudeSelection? SampleWhileReading(int input);

    /// <summary>The passes the method needs before the combine (none for linear).</summary>
    void RunPasses(IChunkPasses passes);

    /// <summary>Per-chunk work on the inputs' δs before any input rescale and the combine (TIES's trim).</summary>
    void PrepareChunk(long first, ChunkView[] deltas);

    /// <summary>Combines the chunk's δs into the merged δ at <paramref name="target"/>.</summary>
    void Combine(ChunkView[] deltas, CombineTarget target);

    /// <summary>
    /// Whether the method reads the base's values, not only the δs (arcee_fusion's softmax in its passes; the spherical
    /// methods interpolate whole weights): the base chunk is then float32 in the passes and in
    /// <see cref="Combine(long, ChunkView, ChunkView[], CombineTarget)"/>.
    /// </summary>
    bool NeedsBaseValues => false;

    /// <summary>The combine of the chunk at element <paramref name="first"/>, with the base chunk; by default <see cref="Combine(ChunkView[], CombineTarget)"/>.</summary>
    void Combine(long first, ChunkView baseChunk, ChunkView[] deltas, CombineTarget target) => Combine(deltas, target);

    /// <summary>The whole merge of a chunk from bfloat16 inputs in one fused pass, if the method offers one.</summary>
    IBFloat16SinglePass? SinglePass { get; }

    /// <summary>Counting passes over the stored bytes, then one fused pass, if the method offers them (asked when it offers no <see cref="SinglePass"/>).</summary>
    IBFloat16CountedPass? CountedPass => null;
}

/// <summary>
/// A fused route with counting passes before it (TIES's thresholds): each pass sees every input's δ computed a block at
/// a time from the stored bytes (<see cref="IStoredPasses"/>) and never stored whole; then every chunk is merged in one
/// fused pass, as the single-pass route merges it.
/// </summary>
internal interface IBFloat16CountedPass
{
    /// <summary>
    /// Runs the passes; returns the fused pass to merge with, or null when they did not settle what it needs (the
    /// tensor then takes the general route, with a new merge).
    /// </summary>
    IBFloat16SinglePass? RunPasses(IStoredPasses passes);
}

/// <summary>Counting passes over a tensor's chunks as stored (<see cref="ChunkKernels.CountFromBFloat16"/>).</summary>
internal interface IStoredPasses
{
    /// <summary>As <see cref="IChunkPasses.Presample"/>, from the files.</summary>
    bool[] Presample(MagnitudeSelection?[] selections);

    /// <summary>One pass over every chunk: input i's δ into <paramref name="selections"/>[i]'s sample or planned bracket (null: not counted).</summary>
    void Count(MagnitudeSelection?[] selections);
}

/// <summary>A fused route: base and inputs read as stored bfloat16, δ, transform and combine block by block, output bytes written directly.</summary>
internal interface IBFloat16SinglePass
{
    /// <summary>
    /// Merges elements [first, first + count) into <paramref name="target"/>, reading the base and each source's
    /// stored range piece by piece (<see cref="StoredRange.Piece"/>); returns each input's drop count and whether the
    /// output is all finite (scanned as it was written).
    /// </summary>
    ChunkKernels.MergedChunk MergeChunk(StoredRange baseBits, DeltaSource[] sources, CombineTarget target, long first, long count);

    /// <summary>
    /// Called once the first chunk, [0, <paramref name="count"/>), is merged (with each input's drop count there) and
    /// before it is written: false withdraws the route, and the tensor is merged again by the general one.
    /// </summary>
    bool Confirm(long count, long[] dropped) => true;
}
