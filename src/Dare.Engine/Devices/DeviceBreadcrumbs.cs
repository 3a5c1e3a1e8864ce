using static TorchSharp.torch;

namespace Dare.Engine.Merge;

/// <summary>
/// Model Breadcrumbs' pruning of one input on the tensor backend, with the CPU's exact selections
/// (<see cref="BreadcrumbsPrune"/>): two passes over raw δ count the histograms of the outliers' and the band's
/// <see cref="DeviceSelection"/>; from then on each chunk keeps the band minus the outliers, ties taken in element order
/// (the counts restart with every pass).
/// </summary>
internal sealed class DeviceBreadcrumbs(BreadcrumbsPrune prune) : IDisposable
{
    private readonly DeviceSelection _outliers = new(prune.KeepCounts.Outliers, prune.ElementCount);
    private readonly DeviceSelection _band = new(prune.KeepCounts.Band, prune.ElementCount);
    private Tensor? _dropped;
    private bool _counted;

    /// <summary>Whether the thresholds need the two counting passes.</summary>
    public bool NeedsPasses => _outliers.NeedsPasses || _band.NeedsPasses;

    /// <summary>Adds a chunk's raw δ to the coarse histograms (pass 0, counted once for both) or to each selection's fine one (pass 1).</summary>
    public void Count(Tensor delta, int pass)
    {
        using var scope = NewDisposeScope();
        var bits = DeviceKernels.MagnitudeBits(delta);
        var coarse = pass == 0 ? DeviceKernels.CoarseHistogram(bits) : null;
        foreach (var selection in new[] { _outliers, _band })
        {
            if (selection.NeedsPasses) selection.Add(coarse ?? DeviceKernels.FineHistogram(bits, selection.Bin));
        }
    }

    /// <summary>Ends a counting pass: the coarse bins (pass 0), then the thresholds and ties (pass 1).</summary>
    public void FinishPass(int pass)
    {
        foreach (var selection in new[] { _outliers, _band })
        {
            if (pass == 0) selection.FinishCoarse();
            else selection.FinishFine();
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
        if (!_counted)
        {
            var count = dropped.sum(ScalarType.Int64);
            if (_dropped is null) _dropped = count.DetachFromDisposeScope();
            else _dropped.add_(count);
        }
        return delta.masked_fill(dropped, 0f).MoveToOuterDisposeScope();
    }

    /// <summary>After a pass that pruned: its drop count is the transform's (once, read from the device once).</summary>
    public void EndPass()
    {
        if (_counted || _dropped is null) return;
        prune.CountDropped(_dropped.item<long>());
        _dropped.Dispose();
        _dropped = null;
        _counted = true;
    }

    /// <summary>Frees what a pass cut short by an error left on the device.</summary>
    public void Dispose()
    {
        _outliers.Dispose();
        _band.Dispose();
        _dropped?.Dispose();
        _dropped = null;
    }
}
