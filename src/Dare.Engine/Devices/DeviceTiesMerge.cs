using static TorchSharp.torch;

namespace Dare.Engine.Merge;

/// <summary>
/// TIES for one tensor on the tensor backend, with the CPU kernels' exact selection: two passes count the coarse and
/// fine 64K-bin histograms of |δ|'s bits on the device (<see cref="DeviceKernels.CoarseHistogram"/>), which give the
/// k-th largest magnitude and how many of its ties to keep (the first ones in element order, as
/// <see cref="MagnitudeSelection"/> keeps them); the combine trims and elects per chunk (<see cref="DeviceKernels.Ties"/>).
/// </summary>
internal sealed class DeviceTiesMerge : IDeviceMerge
{
    private readonly MergeOptions _options;
    private readonly double[] _weights;
    private readonly long[] _keep;
    private readonly long _elementCount;
    private readonly uint[] _thresholdBits;
    private readonly long[] _tiesLeft;

    public DeviceTiesMerge(MergeOptions options, TensorMergeSetup setup)
    {
        _options = options;
        _elementCount = setup.ElementCount;
        var floatWeights = options.Weights.Select(w => (float)w.Resolve(setup.Position)).ToArray();
        CommonParameters.WeightSum(floatWeights, setup.Position, options.Normalize);
        _weights = floatWeights.Select(w => (double)w).ToArray();
        _keep = options.KeepRatios!.Select(k => TiesTensorMerge.KeepCount(k.Resolve(setup.Position), setup.ElementCount)).ToArray();
        _thresholdBits = new uint[_keep.Length];
        _tiesLeft = new long[_keep.Length];
    }

    private bool KeepAll(int i) => _keep[i] >= _elementCount;
    private bool KeepNone(int i) => _keep[i] <= 0;

    public void RunPasses(IDeviceChunkPasses passes)
    {
        var selecting = Enumerable.Range(0, _keep.Length).Where(i => !KeepAll(i) && !KeepNone(i)).ToArray();
        if (selecting.Length == 0) return;
        var coarse = Count(passes, selecting, bits => DeviceKernels.CoarseHistogram(bits));
        var bins = new uint[_keep.Length];
        var needInBin = new long[_keep.Length];
        foreach (var i in selecting)
        {
            var (bin, above) = DeviceKernels.FindFromTop(coarse[i]!, _keep[i]);
            bins[i] = (uint)bin;
            needInBin[i] = _keep[i] - above;
        }
        var fine = Count(passes, selecting, (bits, i) => DeviceKernels.FineHistogram(bits, bins[i]));
        foreach (var i in selecting)
        {
            var (low, above) = DeviceKernels.FindFromTop(fine[i]!, needInBin[i]);
            _thresholdBits[i] = (bins[i] << 16) | (uint)low;
            _tiesLeft[i] = needInBin[i] - above;
        }
    }

    private long[]?[] Count(IDeviceChunkPasses passes, int[] selecting, Func<Tensor, Tensor> histogram) => Count(passes, selecting, (bits, _) => histogram(bits));

    /// <summary>One pass summing a histogram per selecting input on the device; the totals come back to the host once.</summary>
    private long[]?[] Count(IDeviceChunkPasses passes, int[] selecting, Func<Tensor, int, Tensor> histogram)
    {
        var totals = new Tensor?[_keep.Length];
        try
        {
            passes.ForEachChunk((_, deltas) =>
            {
                foreach (var i in selecting)
                {
                    using var bits = DeviceKernels.MagnitudeBits(deltas[i]);
                    using var counts = histogram(bits, i);
                    var total = totals[i] is { } before ? before.add(counts) : counts.clone();
                    totals[i]?.Dispose();
                    totals[i] = total.DetachFromDisposeScope();
                }
            });
            return totals.Select(t => t?.cpu().data<long>().ToArray()).ToArray();
        }
        finally
        {
            foreach (var total in totals) total?.Dispose();
        }
    }

    public Tensor Combine(long first, Tensor[] deltas, float[] rescales)
    {
        var kept = new Tensor[deltas.Length];
        for (var i = 0; i < deltas.Length; i++)
        {
            kept[i] = KeepAll(i) ? deltas[i] : KeepNone(i) ? zeros_like(deltas[i]) : DeviceKernels.Trim(deltas[i], _thresholdBits[i], ref _tiesLeft[i]);
            // The L1 rescale after the trim, whose thresholds are the unscaled magnitudes'.
            if (rescales[i] != 1f) kept[i] = kept[i].mul(rescales[i]);
        }
        return DeviceKernels.Ties(kept, _weights, _options.SignMethod == SignMethod.Count, _options.Normalize, _options.Lambda);
    }
}
