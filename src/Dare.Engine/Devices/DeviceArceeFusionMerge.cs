using static TorchSharp.torch;

namespace Dare.Engine.Merge;

/// <summary>
/// Arcee Fusion for one tensor on the tensor backend, in <see cref="ArceeFusionMerge"/>'s passes: each row's softmax
/// maximum and Σ exp of base and model (merged from chunk to chunk, as a row may span chunks), each row's KL, the
/// importances |δ|·KL (all, or the CPU's fixed sample of positions) brought to the host for the same quartiles, then
/// δ where the importance reaches median + 1.5·IQR. The KL is a float64 sum of exponentials taken in another order
/// (and by another exp) than the CPU's, but it enters the importances rounded to float32, as on the CPU: only a row
/// whose KL lies within float64 rounding of a float32 boundary could be weighted differently.
/// </summary>
internal sealed class DeviceArceeFusionMerge(TensorMergeSetup setup) : IDeviceMerge
{
    private readonly long _rowLength = setup.RowLength;
    private readonly long _rows = setup.ElementCount == 0 ? 0 : setup.ElementCount / setup.RowLength;
    private Tensor? _kl;
    private float _threshold = float.PositiveInfinity;

    public void RunPasses(IDeviceChunkPasses passes)
    {
        var count = setup.ElementCount;
        if (count == 0) return;
        var sampling = count <= ArceeFusionMethod.SampleLimit ? Task.FromResult<long[]?>(null)
            : Task.Run<long[]?>(() => ArceeFusionMerge.SamplePositions(count, ArceeFusionMethod.SampleLimit, setup.Position.Name));
        Tensor? logBase = null, logModel = null;
        try
        {
            (logBase, logModel) = LogSumExp(passes);
            using var kl = KL(passes, logBase, logModel);
            // Rounded to float32 before it weighs |δ|, as on the CPU.
            _kl = kl.to_type(ScalarType.Float32);
        }
        finally
        {
            logBase?.Dispose();
            logModel?.Dispose();
        }
        _threshold = ArceeFusionMerge.Threshold(Importances(passes, sampling.GetAwaiter().GetResult()));
    }

    /// <summary>Per row, log Σ exp over the base's and the model's values (float64), from running maxima and sums.</summary>
    private (Tensor Base, Tensor Model) LogSumExp(IDeviceChunkPasses passes)
    {
        Tensor? maxA = null, sumA = null, maxB = null, sumB = null;
        try
        {
            passes.ForEachChunk((first, baseChunk, deltas) =>
            {
                using var scope = NewDisposeScope();
                var a = baseChunk.to_type(ScalarType.Float64);
                var b = baseChunk.add(deltas[0]).to_type(ScalarType.Float64);
                Merge(ref maxA, ref sumA, first, a);
                Merge(ref maxB, ref sumB, first, b);
            });
            return (maxA!.add(sumA!.log()), maxB!.add(sumB!.log()));
        }
        finally
        {
            foreach (var t in new[] { maxA, sumA, maxB, sumB }) t?.Dispose();
        }
    }

    /// <summary>Adds a chunk's values (from element <paramref name="first"/>) to the rows' running maximum and Σ exp(x − maximum).</summary>
    private void Merge(ref Tensor? max, ref Tensor? sum, long first, Tensor values)
    {
        var device = values.device;
        if (max is null)
        {
            max = full(_rows, double.NegativeInfinity, ScalarType.Float64, device).DetachFromDisposeScope();
            sum = zeros(_rows, ScalarType.Float64, device).DetachFromDisposeScope();
        }
        var (firstRow, rows) = DeviceKernels.Rows(values, first, _rowLength, double.NegativeInfinity);
        var rowMax = max.narrow(0, firstRow, rows.shape[0]);
        var rowSum = sum!.narrow(0, firstRow, rows.shape[0]);
        var newMax = rowMax.maximum(rows.amax(new long[] { 1 }));
        var chunkSum = rows.sub(newMax.unsqueeze(1)).exp_().sum(1);
        // A row seen for the first time has maximum −∞ and sum 0: its carried sum is 0·exp(−∞) = 0.
        rowSum.mul_(rowMax.sub(newMax).exp_()).add_(chunkSum);
        rowMax.copy_(newMax);
    }

    /// <summary>Per row, KL = Σ p·log(p/q), p = exp(b − log Σ exp b) + ε, q = exp(a − log Σ exp a) + ε (float64).</summary>
    private Tensor KL(IDeviceChunkPasses passes, Tensor logBase, Tensor logModel)
    {
        var kl = zeros(_rows, ScalarType.Float64, logBase.device);
        passes.ForEachChunk((first, baseChunk, deltas) =>
        {
            using var scope = NewDisposeScope();
            var rowOf = DeviceKernels.RowIndex(first, baseChunk.shape[0], _rowLength, baseChunk.device);
            var a = baseChunk.to_type(ScalarType.Float64);
            var b = baseChunk.add(deltas[0]).to_type(ScalarType.Float64);
            var p = b.sub_(logModel.take(rowOf)).exp_().add_(ArceeFusionMerge.Epsilon);
            var q = a.sub_(logBase.take(rowOf)).exp_().add_(ArceeFusionMerge.Epsilon);
            var (firstRow, rows) = DeviceKernels.Rows(p.mul(p.div(q).log_()), first, _rowLength, 0.0);
            kl.narrow(0, firstRow, rows.shape[0]).add_(rows.sum(1));
        });
        return kl;
    }

    /// <summary>The importances |δ|·KL (float32) of every element, or of the sampled positions, on the host.</summary>
    private float[] Importances(IDeviceChunkPasses passes, long[]? positions)
    {
        var values = new float[positions?.Length ?? setup.ElementCount];
        var next = 0;
        passes.ForEachChunk((first, deltas) =>
        {
            using var scope = NewDisposeScope();
            var n = deltas[0].shape[0];
            if (positions is null)
            {
                Importance(first, deltas[0]).cpu().data<float>().CopyTo(values, (int)first);
                return;
            }
            var start = next;
            while (next < positions.Length && positions[next] < first + n) next++;
            if (next == start) return;
            var inChunk = tensor(positions[start..next].Select(p => p - first).ToArray(), ScalarType.Int64, deltas[0].device);
            Importance(first, deltas[0]).take(inChunk).cpu().data<float>().CopyTo(values, start);
        });
        return values;
    }

    /// <summary>|δ| × the row's KL rounded to float32, as the CPU's Importance.</summary>
    private Tensor Importance(long first, Tensor delta) => delta.abs().mul_(_kl!.take(DeviceKernels.RowIndex(first, delta.shape[0], _rowLength, delta.device)));

    public Tensor Combine(long first, Tensor[] deltas)
    {
        using var scope = NewDisposeScope();
        var below = Importance(first, deltas[0]).ge(_threshold).logical_not_();
        return deltas[0].masked_fill(below, 0f).MoveToOuterDisposeScope();
    }
}
