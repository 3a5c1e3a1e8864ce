using static TorchSharp.torch;

namespace Dare.Engine.Merge;

/// <summary>
/// SCE for one tensor on the tensor backend, in <see cref="SceTensorMerge"/>'s passes: the positions of non-zero
/// variance counted, the exact top-k variance threshold from the coarse and fine histograms of the variances' bits
/// (<see cref="DeviceSelection"/>, ties kept in element order), each input's Σ δ² over the kept positions, then the
/// combine. Variances and the combine are the CPU operators' float64 operations in their order, element by element;
/// the Σ δ² are added in another order than the CPU's one chain per input, so a weight may differ in its last bit and
/// an output element by one ulp.
/// </summary>
internal sealed class DeviceSceMerge(double selectTopK, TensorMergeSetup setup) : IDeviceMerge
{
    private DeviceSelection? _selection;
    private bool _keepNone;
    private double[] _weights = Array.Empty<double>();

    public void RunPasses(IDeviceChunkPasses passes)
    {
        var n = setup.ElementCount;
        if (selectTopK <= 0) _keepNone = true;
        else if (selectTopK < 1) Select(passes, n);

        Tensor? squares = null;
        try
        {
            passes.ForEachChunk((first, deltas) =>
            {
                using var scope = NewDisposeScope();
                var dropped = Kept(first, deltas)?.logical_not();
                var sums = stack(deltas.Select(d =>
                {
                    var values = d.to_type(ScalarType.Float64);
                    values.mul_(values);
                    return (dropped is null ? values : values.masked_fill_(dropped, 0.0)).sum();
                }));
                if (squares is null) squares = sums.DetachFromDisposeScope();
                else squares.add_(sums);
            });
            _weights = SceTensorMerge.Weights(squares is null ? new double[setup.Inputs.Count] : squares.cpu().data<double>().ToArray(), n);
        }
        finally
        {
            squares?.Dispose();
        }
    }

    /// <summary>The count of positions of non-zero variance, k from it, then the threshold's two counting passes.</summary>
    private void Select(IDeviceChunkPasses passes, long n)
    {
        Tensor? nonZero = null;
        long nonZeroCount;
        try
        {
            passes.ForEachChunk((_, deltas) =>
            {
                using var scope = NewDisposeScope();
                using var variances = Variances(deltas);
                var count = variances.count_nonzero();
                if (nonZero is null) nonZero = count.DetachFromDisposeScope();
                else nonZero.add_(count);
            });
            nonZeroCount = nonZero?.item<long>() ?? 0;
        }
        finally
        {
            nonZero?.Dispose();
        }
        // mergekit: k = int(count_nonzero(var) · select_topk); k = 0 keeps nothing.
        var k = (long)Math.Floor(nonZeroCount * selectTopK);
        if (k == 0)
        {
            _keepNone = true;
            return;
        }
        _selection = new DeviceSelection(k, n);
        DeviceSelection.CountPasses(passes, new[] { _selection }, (_, deltas) => DeviceKernels.MagnitudeBits(Variances(deltas)));
    }

    /// <summary>Which elements of the chunk are kept (null: all), in element order; the tie count starts again with each pass.</summary>
    private Tensor? Kept(long first, Tensor[] deltas)
    {
        if (_keepNone) return zeros(deltas[0].shape, ScalarType.Bool, deltas[0].device);
        if (_selection is null) return null;
        if (first == 0) _selection.RestartTies();
        using var variances = Variances(deltas);
        using var bits = DeviceKernels.MagnitudeBits(variances);
        return _selection.Selected(bits);
    }

    /// <summary>Per element, in float64: mean = Σ δᵢ / m, variance = Σ (δᵢ − mean)² / m, rounded to float32 (the CPU operator's steps).</summary>
    private static Tensor Variances(Tensor[] deltas)
    {
        using var scope = NewDisposeScope();
        var values = deltas.Select(d => d.to_type(ScalarType.Float64)).ToArray();
        var mean = zeros_like(values[0]);
        foreach (var v in values) mean.add_(v);
        mean.div_((double)values.Length);
        var squares = zeros_like(values[0]);
        foreach (var v in values)
        {
            using var difference = v.sub(mean);
            squares.add_(difference.mul_(difference));
        }
        return squares.div_((double)values.Length).to_type(ScalarType.Float32).MoveToOuterDisposeScope();
    }

    /// <summary>The combine sees only the kept positions, as on the CPU.</summary>
    public Tensor[] PrepareChunk(long first, Tensor[] deltas)
    {
        using var kept = Kept(first, deltas);
        if (kept is null) return deltas;
        using var dropped = kept.logical_not();
        return deltas.Select(d => d.masked_fill(dropped, 0f)).ToArray();
    }

    /// <summary>
    /// In float64, as the CPU operator: the sign of Σ δᵢ (≥ 0 is +), then Σ wᵢ·δᵢ and Σ wᵢ over the δᵢ of that sign (+0
    /// added for the others; zeros never agree), their quotient over max(Σ wᵢ, 1e-6), rounded to float32.
    /// </summary>
    public Tensor Combine(long first, Tensor[] deltas)
    {
        using var scope = NewDisposeScope();
        var values = deltas.Select(d => d.to_type(ScalarType.Float64)).ToArray();
        var sum = zeros_like(values[0]);
        foreach (var v in values) sum.add_(v);
        var positive = sum.ge(0.0);
        var merged = zeros_like(values[0]);
        var weight = zeros_like(values[0]);
        for (var i = 0; i < values.Length; i++)
        {
            using var disagrees = values[i].gt(0.0).where(positive, values[i].lt(0.0)).logical_not_();
            merged.add_(values[i].mul(_weights[i]).masked_fill_(disagrees, 0.0));
            weight.add_(full_like(values[i], _weights[i]).masked_fill_(disagrees, 0.0));
        }
        return merged.div_(weight.clamp_min_((double)SceTensorMerge.WeightFloor)).to_type(ScalarType.Float32).MoveToOuterDisposeScope();
    }
}
