using static TorchSharp.torch;

namespace Dare.Engine.Merge;

/// <summary>
/// The spherical methods (SLERP, NuSLERP, Multi-SLERP, Karcher, Model Stock) on the tensor backend: one pass sums each
/// row's Gram matrix (the vectors' products, each exact in float64) on the device; the method's own
/// <see cref="GramTensorMerge.SetCoefficients"/> turns it into per-row coefficients on the host; each chunk is then
/// a·b + Σ dᵢ·δᵢ in float32, a multiplication and an addition per input in the CPU combine's order. The sums are added
/// in another order than <see cref="GramKernels"/> adds them, so a coefficient may differ from the CPU's in its last
/// float32 bit and an output element by one ulp; the combine itself is the same.
/// </summary>
internal sealed class DeviceGramMerge(GramTensorMerge merge, int inputs) : IDeviceMerge
{
    /// <summary>The device merge of a spherical method's tensor merge.</summary>
    public static IDeviceMerge Of(ITensorMerge merge, TensorMergeSetup setup) => new DeviceGramMerge((GramTensorMerge)merge, setup.Inputs.Count);

    // On the device once the pass has run; freed with the tensor's merge (they belong to its scope).
    private Tensor? _baseCoefficients;
    private Tensor? _deltaCoefficients;

    public void RunPasses(IDeviceChunkPasses passes)
    {
        var vectors = merge.Vectors;
        var pairs = vectors.Count * (vectors.Count + 1) / 2;
        Tensor? sums = null;
        Device? device = null;
        try
        {
            passes.ForEachChunk((first, baseChunk, deltas) =>
            {
                using var scope = NewDisposeScope();
                var values = vectors.Select(v => Vector(v, baseChunk, deltas)).ToArray();
                device = baseChunk.device;
                sums ??= zeros(new[] { pairs, merge.Rows }, ScalarType.Float64, device).DetachFromDisposeScope();
                var p = 0;
                for (var k = 0; k < values.Length; k++)
                {
                    for (var l = k; l < values.Length; l++)
                    {
                        using var products = values[k].to_type(ScalarType.Float64).mul_(values[l].to_type(ScalarType.Float64));
                        using var pairSums = sums.select(0, p++);
                        AddSums(pairSums, first, products);
                    }
                }
            });
            // Row r's pairs at r·pairs, as the CPU's sums are laid out.
            merge.SetCoefficients(sums is null ? new double[merge.Rows * pairs] : sums.t().contiguous().cpu().data<double>().ToArray());
            if (device is null) return;
            _baseCoefficients = tensor(merge.BaseCoefficients, ScalarType.Float32, device);
            // Transposed, so that input i's coefficients are one contiguous row.
            _deltaCoefficients = tensor(merge.DeltaCoefficients, ScalarType.Float32, device).view(merge.Rows, inputs).t().contiguous();
        }
        finally
        {
            sums?.Dispose();
        }
    }

    /// <summary>Adds the chunk's products (elements from <paramref name="first"/>) to each vector's sum: by row, by column, or whole.</summary>
    private void AddSums(Tensor vectorSums, long first, Tensor products)
    {
        switch (merge.Layout)
        {
            case VectorLayout.LastDimension:
                var (firstRow, rows) = DeviceKernels.Rows(products, first, merge.RowLength, 0.0);
                using (var rowSums = rows.sum(1)) vectorSums.narrow(0, firstRow, rows.shape[0]).add_(rowSums);
                break;
            case VectorLayout.FirstDimension:
                // Element i is in column i mod columns: laid out as rows of that length, a column is a column.
                var (_, laidOut) = DeviceKernels.Rows(products, first, merge.Rows, 0.0);
                using (var columnSums = laidOut.sum(dim: 0)) vectorSums.add_(columnSums);
                break;
            default:
                using (var sum = products.sum()) vectorSums.add_(sum);
                break;
        }
    }

    /// <summary>vₖ in float32 as the CPU kernels see it: b, δᵢ, or b + δᵢ.</summary>
    private static Tensor Vector(VectorSource source, Tensor baseChunk, Tensor[] deltas) => source.Kind switch
    {
        VectorKind.Base => baseChunk,
        VectorKind.Delta => deltas[source.Input],
        _ => baseChunk.add(deltas[source.Input]),
    };

    /// <summary>The row (or column) of each element [first, first + count), int64 on the device; null for one whole vector.</summary>
    private Tensor? RowIndex(long first, long count, Device device) => merge.Layout switch
    {
        VectorLayout.LastDimension => DeviceKernels.RowIndex(first, count, merge.RowLength, device),
        VectorLayout.FirstDimension => arange(first, first + count, 1L, ScalarType.Int64, device).remainder_(merge.Rows),
        _ => null,
    };

    public Tensor Combine(long first, Tensor[] deltas) => throw new InvalidOperationException("A spherical merge combines with the base chunk.");

    public Tensor Combine(long first, Tensor baseChunk, Tensor[] deltas)
    {
        using var scope = NewDisposeScope();
        var rows = RowIndex(first, baseChunk.shape[0], baseChunk.device);
        Tensor PerElement(Tensor perRow) => rows is null ? perRow[0] : perRow.take(rows);
        var merged = baseChunk.mul(PerElement(_baseCoefficients!));
        for (var i = 0; i < deltas.Length; i++)
        {
            using var coefficients = _deltaCoefficients!.select(0, i);
            merged.add_(deltas[i].mul(PerElement(coefficients)));
        }
        return merged.MoveToOuterDisposeScope();
    }
}
