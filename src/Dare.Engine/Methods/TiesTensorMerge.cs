using Dare.Engine.Safetensors;

namespace Dare.Engine.Merge;

/// <summary>
/// TIES for one tensor. The magnitude thresholds (see <see cref="MagnitudeSelection"/>) come from passes over the
/// chunks: the first samples δ (inside the fused δ kernel when it can), which usually settles the threshold or brackets
/// it for one more pass; a tensor kept as stored or in the page cache is presampled before its first pass, which then counts the bracket
/// itself; the exact coarse and fine passes run only when a sample misled. The combine then trims as
/// it reads (<see cref="CombineKernels.Ties"/>). When every input's trim keeps all its non-zero values (no trim, or a
/// DARE drop that leaves no more survivors than TIES keeps, the usual DARE-TIES case), no pass is needed and the merge
/// takes the single-pass bfloat16 route instead, as linear does: δ, mask and combine block by block in cache, each
/// chunk read once. That the drop leaves few enough survivors is proven from the mask's own counts after the first
/// chunk (<see cref="Confirm"/>), or before anything is read when the expected count is close to the limit. When the
/// trim is needed and the inputs are in the page cache as stored bfloat16, the counted route runs instead of the general
/// one (<see cref="CountedPass"/>): the passes count each δ from the stored bytes without storing it, and one fused pass
/// trims, elects and averages (<see cref="DareTiesKernel"/>), so no float32 δ is ever written to memory.
/// </summary>
internal sealed class TiesTensorMerge : ITensorMerge, IBFloat16SinglePass, IBFloat16CountedPass
{
    private readonly MergeOptions _options;
    private readonly TensorMergeSetup _setup;
    private readonly MagnitudeSelection[] _selections;
    private readonly bool[] _sampleWhileReading;
    private readonly double[] _weights;
    private long[] _tiesLeft = Array.Empty<long>();
    private double[]? _rescales;
    private uint[]? _keepBits;
    private long[]?[] _tieBudgets;
    private bool? _keepsEveryNonZero;
    private bool[] _unproven = Array.Empty<bool>();
    private uint[]? _countedKeepBits;

    /// <summary>
    /// Tensors below this many elements take the general route: a sample of them is too small to plan a bracket, and
    /// the exact passes it would need run on stored δ.
    /// </summary>
    internal const long MinCountedElements = 1 << 16;

    /// <summary>
    /// How many standard deviations of its survivor count a DARE drop's expected survivors must lie below TIES's keep
    /// count for the single pass to start before the count is proven (<see cref="Confirm"/> proves it). Closer to the
    /// limit the mask is counted first, as a failed proof costs the first chunk's merge.
    /// </summary>
    internal const double DefaultSurvivorSigmas = 8;

    public TiesTensorMerge(MergeOptions options, TensorMergeSetup setup)
    {
        _options = options;
        _setup = setup;
        var n = setup.ElementCount;
        var floatWeights = options.Weights.Select(w => (float)w.Resolve(setup.Position)).ToArray();
        CommonParameters.WeightSum(floatWeights, setup.Position, options.Normalize);
        _weights = floatWeights.Select(w => (double)w).ToArray();
        _selections = options.KeepRatios!.Select(k => new MagnitudeSelection(KeepCount(k.Resolve(setup.Position), n), n)).ToArray();
        _sampleWhileReading = _selections.Select((s, i) => s.NeedsPasses && setup.Inputs[i].IsFused && setup.ChunkElements <= MagnitudeSelection.MaxSpan).ToArray();
        _tieBudgets = new long[]?[_selections.Length];
    }

    /// <summary>How many of <paramref name="n"/> elements TIES keeps at density <paramref name="keepRatio"/> (the device backend keeps the same).</summary>
    internal static long KeepCount(double keepRatio, long n) => (long)Math.Ceiling(keepRatio * n - 1e-9);

    public IBFloat16SinglePass? SinglePass
    {
        get
        {
            if (_keepsEveryNonZero is null) { using (PhaseProfile.Time(_setup.Profile, Phase.Select)) _keepsEveryNonZero = KeepsEveryNonZero(); }
            return _keepsEveryNonZero.Value ? this : null;
        }
    }

    /// <summary>
    /// Whether each input's trim keeps every non-zero value: it keeps all, or a fused DARE drop leaves at most as many
    /// survivors as it keeps (counted from the hash alone, whatever the data). Then the thresholds are 0 and there are
    /// no ties to budget. A drop whose expected survivors are far below the limit is taken as keeping them all until
    /// <see cref="Confirm"/> proves it from the first chunk's counts; otherwise the mask is counted here.
    /// </summary>
    private bool KeepsEveryNonZero()
    {
        var n = _setup.ElementCount;
        var unproven = new bool[_selections.Length];
        for (var i = 0; i < _selections.Length; i++)
        {
            var selection = _selections[i];
            if (selection.KeepAll) continue;
            if (selection.KeepNone || _setup.Inputs[i] is not { IsFused: true, Drop: { } drop }) return false;
            if (SurvivorsExpectedBelow(drop.Threshold, n, selection.KeepCount, _setup.SurvivorSigmas)) unproven[i] = true;
            else if (!DareMask.DropsAtLeast(0, n, drop.Key, drop.Threshold, n - selection.KeepCount)) return false;
        }
        _unproven = unproven;
        return true;
    }

    /// <summary>
    /// Whether the survivors of a DARE mask with <paramref name="threshold"/> over <paramref name="n"/> elements are
    /// expected <paramref name="sigmas"/> standard deviations (and 16 elements) or more below <paramref name="keep"/>,
    /// taking each element to survive independently with probability 1 − threshold / 2³².
    /// </summary>
    internal static bool SurvivorsExpectedBelow(uint threshold, long n, long keep, double sigmas)
    {
        var survives = 1 - threshold / 4294967296.0;
        var expected = survives * n;
        return expected + sigmas * Math.Sqrt(n * survives * (1 - survives)) + 16 <= keep;
    }

    /// <summary>
    /// After the first chunk, [0, <paramref name="count"/>), is merged and before it is written: proves that each
    /// input taken on expectation leaves no more DARE survivors than TIES keeps, from the chunk's drop counts and, if
    /// they are not enough, the mask's count over the rest of the tensor. False (the tensor then takes the general
    /// route, and this merge offers no single pass any more) when it does not.
    /// </summary>
    public bool Confirm(long count, long[] dropped)
    {
        if (_countedKeepBits is not null) return true;
        var n = _setup.ElementCount;
        using var _ = PhaseProfile.Time(_setup.Profile, Phase.Select);
        for (var i = 0; i < _selections.Length; i++)
        {
            if (!_unproven[i]) continue;
            var needed = n - _selections[i].KeepCount - dropped[i];
            var drop = _setup.Inputs[i].Drop!;
            if (needed > 0 && (count == n || !DareMask.DropsAtLeast(count, n - count, drop.Key, drop.Threshold, needed)))
            {
                _keepsEveryNonZero = false;
                return false;
            }
        }
        _unproven = new bool[_selections.Length];
        return true;
    }

    public ChunkKernels.MergedChunk MergeChunk(StoredRange baseBits, DeltaSource[] sources, CombineTarget target, long first, long count)
    {
        var bySignCount = _options.SignMethod == SignMethod.Count;
        if (_countedKeepBits is { } keepBits)
        {
            var chunk = (int)(first / _setup.ChunkElements);
            var budgets = _selections.Select(s => s.TrimKeepsEveryNonZero ? null : s.TieBudgets(chunk)).ToArray();
            var trim = new TiesTrim(keepBits, budgets);
            return DareTiesKernel.MergeChunk(baseBits, sources, _weights, _options.Normalize, _options.Lambda, target, first, count, trim);
        }
        if (DareTiesKernel.Takes(sources.Length, bySignCount, _setup.FusedOnAnyProcessor))
        {
            return DareTiesKernel.MergeChunk(baseBits, sources, _weights, _options.Normalize, _options.Lambda, target, first, count);
        }
        return ChunkKernels.MergeFromBFloat16(baseBits, sources,
            (deltas, blockTarget, start, end) => CombineKernels.TiesRange(deltas, _weights, bySignCount, _options.Normalize, _options.Lambda, blockTarget, start, end),
            target, first, count);
    }

    /// <summary>
    /// The counted route: for one to four inputs electing by sum where the fused pass runs natively, every input fused
    /// (its δ computed from the stored bytes, no L1 rescale), in chunks a sample can span.
    /// </summary>
    public IBFloat16CountedPass? CountedPass =>
        DareTiesKernel.Takes(_selections.Length, _options.SignMethod == SignMethod.Count, _setup.FusedOnAnyProcessor) && _setup.ElementCount >= MinCountedElements &&
        _setup.ChunkElements <= MagnitudeSelection.MaxSpan && _setup.Inputs.All(c => c.IsFused) && _selections.Any(s => s.NeedsPasses) ? this : null;

    /// <summary>
    /// The passes of <see cref="RunPasses(IChunkPasses)"/>, counted from the stored bytes: a presample from the files
    /// plans each bracket when it can, so that one pass counts it; otherwise one pass samples and one counts the bracket.
    /// Null (take the general route) where a sample misled and the exact passes would be needed, or where the bracket's
    /// counts per range were not kept (the tie budgets would be unknown).
    /// </summary>
    public IBFloat16SinglePass? RunPasses(IStoredPasses passes)
    {
        var profile = _setup.Profile;
        var counting = _selections.Select(s => s.NeedsPasses ? s : null).ToArray();
        var presampled = passes.Presample(counting);
        using (PhaseProfile.Time(profile, Phase.Select))
        {
            for (var i = 0; i < counting.Length; i++) presampled[i] = presampled[i] && counting[i]!.FinishPresample();
        }
        for (var pass = 0; counting.Any(s => s is not null); pass++)
        {
            passes.Count(counting);
            using var _ = PhaseProfile.Time(profile, Phase.Select);
            for (var i = 0; i < counting.Length; i++)
            {
                if (counting[i] is not { } selection) continue;
                var bracket = pass > 0 || presampled[i];
                var step = bracket ? selection.FinishBracket() : selection.FinishSample();
                if (step == SelectionStep.CoarseAndFine || (bracket && step != SelectionStep.Done)) return null;
                if (step == SelectionStep.Done)
                {
                    PhaseProfile.CountSelection(profile, !bracket ? "sample" : presampled[i] ? "presampled bracket" : "bracket");
                    if (!selection.TrimKeepsEveryNonZero && selection.TieBudgets(0) is null) return null;
                    counting[i] = null;
                }
            }
        }
        _countedKeepBits = _selections.Select(s => s.KeepBits).ToArray();
        return this;
    }

    public MagnitudeSelection? SampleWhileReading(int input) => _sampleWhileReading[input] ? _selections[input] : null;

    public void RunPasses(IChunkPasses passes)
    {
        var profile = _setup.Profile;
        var steps = new SelectionStep[_selections.Length];
        if (_selections.Any(s => s.NeedsPasses))
        {
            // A tensor kept as stored or in the page cache can be presampled before its first pass: the presample plans
            // each bracket, and the first pass counts the bracket as it computes δ instead of sampling, so the bracket
            // pass is not needed.
            var presampled = passes.Presample(_selections.Select((s, i) => s.NeedsPasses && _sampleWhileReading[i] ? s : null).ToArray());
            using (PhaseProfile.Time(profile, Phase.Select))
            {
                for (var i = 0; i < _selections.Length; i++) presampled[i] = presampled[i] && _selections[i].FinishPresample();
            }
            passes.ForEachChunk((first, deltas) =>
            {
                for (var i = 0; i < _selections.Length; i++)
                {
                    if (_selections[i].NeedsPasses && !_sampleWhileReading[i]) { using (PhaseProfile.Time(profile, Phase.Select)) AddSample(_selections[i], deltas[i], first); }
                }
            });
            for (var i = 0; i < _selections.Length; i++)
            {
                if (!_selections[i].NeedsPasses) continue;
                if (presampled[i])
                {
                    using (PhaseProfile.Time(profile, Phase.Select)) steps[i] = _selections[i].FinishBracket();
                    PhaseProfile.CountSelection(profile, steps[i] == SelectionStep.Done ? "presampled bracket" : "presampled bracket missed");
                    continue;
                }
                steps[i] = _selections[i].FinishSample();
                if (steps[i] == SelectionStep.Done) PhaseProfile.CountSelection(profile, "sample");
            }
        }
        SelectionPass(SelectionStep.Bracket, AddBracket, s =>
        {
            var next = s.FinishBracket();
            PhaseProfile.CountSelection(profile, next == SelectionStep.Done ? "bracket" : "bracket missed");
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
            PhaseProfile.CountSelection(profile, "exact passes");
            return SelectionStep.Done;
        });

        // One pass over every chunk for the inputs at <paramref name="step"/>, then <paramref name="finish"/> gives each its next step.
        void SelectionPass(SelectionStep step, Action<MagnitudeSelection, ChunkView> add, Func<MagnitudeSelection, SelectionStep> finish)
        {
            if (!steps.Contains(step)) return;
            passes.ForEachChunk((_, deltas) =>
            {
                for (var i = 0; i < _selections.Length; i++)
                {
                    if (steps[i] == step) { using (PhaseProfile.Time(profile, Phase.Select)) add(_selections[i], deltas[i]); }
                }
            });
            using (PhaseProfile.Time(profile, Phase.Select))
            {
                for (var i = 0; i < _selections.Length; i++)
                {
                    if (steps[i] == step) steps[i] = finish(_selections[i]);
                }
            }
        }
    }

    public void PrepareChunk(long first, ChunkView[] deltas)
    {
        if (_rescales is null)
        {
            // After the passes: the L1 rescales are known, and each input's tie allowance starts.
            _rescales = _setup.Inputs.Select(c => c.Rescale).ToArray();
            _keepBits = _selections.Select((s, i) => _rescales[i] == 1.0 ? s.KeepBits : 0u).ToArray();
            _tiesLeft = _selections.Select(s => s.TiesToKeep).ToArray();
        }
        _tieBudgets = new long[]?[_selections.Length];
        for (var i = 0; i < _selections.Length; i++)
        {
            // The combine trims as it reads: it drops |x| below each input's threshold and keeps each parallel range's
            // share of the ties, known from the bracket pass. Without those shares the excess ties are dropped here
            // first. An L1 rescale would change the magnitudes, so such an input is trimmed in full first. TIES ignores
            // zeros, so a trim that could only change the sign of a zero is skipped.
            var selection = _selections[i];
            if (selection.TrimKeepsEveryNonZero) continue;
            if (_rescales[i] == 1.0 && selection.TieBudgets((int)(first / _setup.ChunkElements)) is { } budgets)
            {
                _tieBudgets[i] = budgets;
                continue;
            }
            using (PhaseProfile.Time(_setup.Profile, Phase.Trim))
            {
                if (_rescales[i] != 1.0) Trim(selection, deltas[i], ref _tiesLeft[i]);
                else DropExcessTies(selection, deltas[i], ref _tiesLeft[i]);
            }
        }
    }

    public unsafe void Combine(ChunkView[] deltas, CombineTarget target) =>
        CombineKernels.Ties(ChunkView.FloatPointers(deltas), _weights, _keepBits!, _tieBudgets,
            _options.SignMethod == SignMethod.Count, _options.Normalize, _options.Lambda, target, deltas[0].Count);

    private static unsafe void AddSample(MagnitudeSelection selection, ChunkView delta, long first) => selection.AddSample(delta.Floats, first, delta.Count);
    private static unsafe void AddBracket(MagnitudeSelection selection, ChunkView delta) => selection.AddBracket(delta.Floats, delta.Count);
    private static unsafe void AddCoarse(MagnitudeSelection selection, ChunkView delta) => selection.AddCoarse(delta.Floats, delta.Count);
    private static unsafe void AddFine(MagnitudeSelection selection, ChunkView delta) => selection.AddFine(delta.Floats, delta.Count);
    private static unsafe void Trim(MagnitudeSelection selection, ChunkView delta, ref long tiesLeft) => selection.Trim(delta.Floats, delta.Count, ref tiesLeft);
    private static unsafe void DropExcessTies(MagnitudeSelection selection, ChunkView delta, ref long tiesLeft) => selection.DropExcessTies(delta.Floats, delta.Count, ref tiesLeft);
}
