using static TorchSharp.torch;

namespace Dare.Engine.Merge;

/// <summary>
/// One exact top-k selection by magnitude on the tensor backend, as <see cref="MagnitudeSelection"/> makes it: a coarse
/// and then a fine 64K-bin histogram of |δ|'s bits, each summed on the device over a pass, give the k-th largest
/// magnitude and how many of its ties to take. <see cref="Selected"/> then takes the elements above it and the first
/// of its ties in element order, the tie count carrying from chunk to chunk. TIES's trim and breadcrumbs' two
/// selections are made of it.
/// </summary>
internal sealed class DeviceSelection(long keep, long elementCount) : IDisposable
{
    private Tensor? _histogram;
    private long _needInBin, _ties, _tiesLeft;
    private uint _thresholdBits;

    public bool KeepAll => keep >= elementCount;
    public bool KeepNone => keep <= 0;

    /// <summary>Whether the threshold needs the two counting passes (not when the selection takes all or nothing).</summary>
    public bool NeedsPasses => !KeepAll && !KeepNone;

    /// <summary>The coarse bin (upper 16 bits) that holds the threshold, once <see cref="FinishCoarse"/> has run: the fine pass counts within it.</summary>
    public uint Bin { get; private set; }

    /// <summary>
    /// The coarse and then the fine counting pass for each of <paramref name="selections"/> that needs them, over the
    /// magnitude bits <paramref name="bitsOf"/>(the selection's index, the chunk's δs) gives: each input's |δ| for TIES,
    /// the variances for SCE. Their histograms are freed however the passes end.
    /// </summary>
    public static void CountPasses(IDeviceChunkPasses passes, IReadOnlyList<DeviceSelection> selections, Func<int, Tensor[], Tensor> bitsOf)
    {
        var counting = Enumerable.Range(0, selections.Count).Where(i => selections[i].NeedsPasses).ToArray();
        if (counting.Length == 0) return;
        try
        {
            Pass((_, bits) => DeviceKernels.CoarseHistogram(bits));
            foreach (var i in counting) selections[i].FinishCoarse();
            Pass((selection, bits) => DeviceKernels.FineHistogram(bits, selection.Bin));
            foreach (var i in counting) selections[i].FinishFine();
        }
        finally
        {
            foreach (var i in counting) selections[i].Dispose();
        }

        // One pass adding a histogram of each counting selection's bits to its total on the device.
        void Pass(Func<DeviceSelection, Tensor, Tensor> histogram) =>
            passes.ForEachChunk((_, deltas) =>
            {
                foreach (var i in counting)
                {
                    using var scope = NewDisposeScope();
                    selections[i].Add(histogram(selections[i], bitsOf(i, deltas)));
                }
            });
    }

    /// <summary>Adds a chunk's histogram (coarse in the first pass, fine in the second) to the pass's total on the device.</summary>
    public void Add(Tensor histogram)
    {
        if (_histogram is null) _histogram = histogram.clone().DetachFromDisposeScope();
        else _histogram.add_(histogram);
    }

    /// <summary>Ends the coarse pass: the bin of the k-th largest magnitude.</summary>
    public void FinishCoarse()
    {
        if (!NeedsPasses) return;
        var (bin, above) = FindFromTop(TakeHistogram(), keep);
        (Bin, _needInBin) = ((uint)bin, keep - above);
    }

    /// <summary>Ends the fine pass: the threshold's bits and how many of its ties are taken.</summary>
    public void FinishFine()
    {
        if (!NeedsPasses) return;
        var (low, above) = FindFromTop(TakeHistogram(), _needInBin);
        _thresholdBits = (Bin << 16) | (uint)low;
        _tiesLeft = _ties = _needInBin - above;
    }

    /// <summary>Starts the tie count again, for a pass that selects from element 0 once more.</summary>
    public void RestartTies() => _tiesLeft = _ties;

    /// <summary>Which elements the selection takes, given their magnitude bits (<see cref="DeviceKernels.MagnitudeBits"/>).</summary>
    public Tensor Selected(Tensor bits)
    {
        if (KeepAll) return ones_like(bits, ScalarType.Bool);
        if (KeepNone) return zeros_like(bits, ScalarType.Bool);
        var selected = bits.gt((long)_thresholdBits);
        if (_tiesLeft <= 0) return selected;
        var ties = bits.eq((long)_thresholdBits);
        var rank = ties.to_type(ScalarType.Int64).cumsum(0);
        var budget = _tiesLeft;
        _tiesLeft = Math.Max(0, budget - ties.sum().item<long>());
        return selected.logical_or_(ties.logical_and_(rank.le(budget)));
    }

    /// <summary>TIES's trim: δ with what the selection does not take set to 0 (a new tensor).</summary>
    public Tensor Trim(Tensor delta)
    {
        using var scope = NewDisposeScope();
        return delta.masked_fill(Selected(DeviceKernels.MagnitudeBits(delta)).logical_not(), 0f).MoveToOuterDisposeScope();
    }

    /// <summary>Frees a histogram total a pass left (one cut short by an error).</summary>
    public void Dispose()
    {
        _histogram?.Dispose();
        _histogram = null;
    }

    private long[] TakeHistogram()
    {
        var counts = _histogram!.cpu().data<long>().ToArray();
        Dispose();
        return counts;
    }

    private static (int Bin, long Above) FindFromTop(long[] histogram, long rank) =>
        MagnitudeSelection.FindFromTop(histogram, rank) ?? throw new InvalidOperationException("The histogram holds fewer elements than the rank asked for.");
}
