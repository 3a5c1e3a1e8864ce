using static TorchSharp.torch;

namespace Dare.Engine.Merge;

/// <summary>
/// Model Breadcrumbs' pruning of one input on the tensor backend, with the CPU's exact selections
/// (<see cref="BreadcrumbsPrune"/>): two passes over raw δ count the coarse and fine histograms of |δ|'s bits on the
/// device, giving the outliers' and the band's thresholds and how many of their ties each takes; from then on each
/// chunk keeps the band minus the outliers, ties taken in element order (the budgets restart with every pass).
/// </summary>
internal sealed class DeviceBreadcrumbs(BreadcrumbsPrune prune)
{
    private readonly Selection _outliers = new(prune.KeepCounts.Outliers, prune.ElementCount);
    private readonly Selection _band = new(prune.KeepCounts.Band, prune.ElementCount);
    private Tensor? _coarse, _fineOutliers, _fineBand, _dropped;
    private bool _counted;

    /// <summary>Whether the thresholds need the two counting passes.</summary>
    public bool NeedsPasses => _outliers.NeedsPasses || _band.NeedsPasses;

    /// <summary>Adds a chunk's raw δ to the coarse histogram (pass 0) or to each selection's fine one (pass 1).</summary>
    public void Count(Tensor delta, int pass)
    {
        using var scope = NewDisposeScope();
        var bits = DeviceKernels.MagnitudeBits(delta);
        if (pass == 0) Accumulate(ref _coarse, DeviceKernels.CoarseHistogram(bits));
        else
        {
            if (_outliers.NeedsPasses) Accumulate(ref _fineOutliers, DeviceKernels.FineHistogram(bits, _outliers.Bin));
            if (_band.NeedsPasses) Accumulate(ref _fineBand, DeviceKernels.FineHistogram(bits, _band.Bin));
        }
    }

    /// <summary>Ends a counting pass: the coarse bins (pass 0), then the thresholds and ties (pass 1).</summary>
    public void FinishPass(int pass)
    {
        if (pass == 0)
        {
            var coarse = Take(ref _coarse);
            _outliers.FindBin(coarse);
            _band.FindBin(coarse);
        }
        else
        {
            if (_outliers.NeedsPasses) _outliers.FindThreshold(Take(ref _fineOutliers));
            if (_band.NeedsPasses) _band.FindThreshold(Take(ref _fineBand));
        }
    }

    /// <summary>The chunk of δ at element <paramref name="first"/> with everything outside the band, or among the outliers, set to 0 (a new tensor).</summary>
    public Tensor Apply(Tensor delta, long first)
    {
        using var scope = NewDisposeScope();
        if (first == 0)
        {
            _outliers.RestartTies();
            _band.RestartTies();
        }
        var bits = DeviceKernels.MagnitudeBits(delta);
        var dropped = _band.Selected(bits).logical_and_(_outliers.Selected(bits).logical_not()).logical_not();
        if (!_counted) Accumulate(ref _dropped, dropped.sum(ScalarType.Int64));
        return delta.masked_fill(dropped, 0f).MoveToOuterDisposeScope();
    }

    /// <summary>After a pass that pruned: its drop count is the transform's (once, read from the device once).</summary>
    public void EndPass()
    {
        if (_counted || _dropped is null) return;
        prune.CountDropped(Take(ref _dropped).Single());
        _counted = true;
    }

    private static void Accumulate(ref Tensor? total, Tensor part)
    {
        if (total is null) total = part.clone().DetachFromDisposeScope();
        else total.add_(part);
    }

    private static long[] Take(ref Tensor? total)
    {
        var values = total!.cpu().data<long>().ToArray();
        total.Dispose();
        total = null;
        return values;
    }

    /// <summary>One top-k selection by magnitude: keeps |x| above its threshold, and the first of its ties.</summary>
    private sealed class Selection(long keep, long elementCount)
    {
        private readonly bool _all = keep >= elementCount, _none = keep <= 0;
        private long _needInBin, _ties, _tiesLeft;
        private uint _bits;

        public bool NeedsPasses => !_all && !_none;
        public uint Bin { get; private set; }

        public void FindBin(long[] coarse)
        {
            if (!NeedsPasses) return;
            var (bin, above) = DeviceKernels.FindFromTop(coarse, keep);
            (Bin, _needInBin) = ((uint)bin, keep - above);
        }

        public void FindThreshold(long[] fine)
        {
            var (low, above) = DeviceKernels.FindFromTop(fine, _needInBin);
            (_bits, _ties) = ((Bin << 16) | (uint)low, _needInBin - above);
        }

        public void RestartTies() => _tiesLeft = _ties;

        /// <summary>Which elements the selection takes; ties in element order while they last (the count carries from chunk to chunk).</summary>
        public Tensor Selected(Tensor bits)
        {
            if (_all) return ones_like(bits, ScalarType.Bool);
            if (_none) return zeros_like(bits, ScalarType.Bool);
            var selected = bits.gt((long)_bits);
            if (_tiesLeft <= 0) return selected;
            var ties = bits.eq((long)_bits);
            var rank = ties.to_type(ScalarType.Int64).cumsum(0);
            var budget = _tiesLeft;
            _tiesLeft = Math.Max(0, budget - ties.sum().item<long>());
            return selected.logical_or_(ties.logical_and_(rank.le(budget)));
        }
    }
}
