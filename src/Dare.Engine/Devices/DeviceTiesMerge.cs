using static TorchSharp.torch;

namespace Dare.Engine.Merge;

/// <summary>
/// TIES for one tensor on the tensor backend, with the CPU kernels' exact selection (<see cref="DeviceSelection"/>):
/// two passes count the coarse and fine 64K-bin histograms of each input's |δ| on the device, which give the k-th
/// largest magnitude and how many of its ties to keep (the first ones in element order, as
/// <see cref="MagnitudeSelection"/> keeps them); each chunk is trimmed, then elected (<see cref="DeviceKernels.Ties"/>).
/// </summary>
internal sealed class DeviceTiesMerge : IDeviceMerge
{
    private readonly MergeOptions _options;
    private readonly double[] _weights;
    private readonly DeviceSelection[] _selections;

    public DeviceTiesMerge(MergeOptions options, TensorMergeSetup setup)
    {
        _options = options;
        var floatWeights = options.Weights.Select(w => (float)w.Resolve(setup.Position)).ToArray();
        CommonParameters.WeightSum(floatWeights, setup.Position, options.Normalize);
        _weights = floatWeights.Select(w => (double)w).ToArray();
        _selections = options.KeepRatios!.Select(k => new DeviceSelection(TiesTensorMerge.KeepCount(k.Resolve(setup.Position), setup.ElementCount), setup.ElementCount)).ToArray();
    }

    public void RunPasses(IDeviceChunkPasses passes) =>
        DeviceSelection.CountPasses(passes, _selections, (i, deltas) => DeviceKernels.MagnitudeBits(deltas[i]));

    public Tensor[] PrepareChunk(long first, Tensor[] deltas) =>
        deltas.Select((delta, i) => _selections[i] switch
        {
            { KeepAll: true } => delta,
            { KeepNone: true } => zeros_like(delta),
            var selection => selection.Trim(delta),
        }).ToArray();

    public Tensor Combine(long first, Tensor[] deltas) =>
        DeviceKernels.Ties(deltas, _weights, _options.SignMethod == SignMethod.Count, _options.Normalize, _options.Lambda);
}
