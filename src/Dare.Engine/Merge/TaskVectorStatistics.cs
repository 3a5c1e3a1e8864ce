using Dare.Engine.Safetensors;

namespace Dare.Engine.Merge;

/// <summary>Figures describing a task vector δ (whole model, or one tensor).</summary>
public sealed record TaskVectorStatistics(
    string TaskVector,
    string? Tensor,
    long ParameterCount,
    double NaturalSparsity,
    double MaxAbs,
    double MeanAbs,
    double StdAbs,
    double? TargetDropRate,
    double? RealisedDropRate)
{
    /// <summary>Per-tensor figures (filled for the whole-model record when asked for).</summary>
    public IReadOnlyList<TaskVectorStatistics> Tensors { get; init; } = Array.Empty<TaskVectorStatistics>();

    /// <summary>The largest LoRA rank r of the adapters the vector draws on (null when it draws on none).</summary>
    public int? AdapterRank { get; init; }

    /// <summary>The effective rank of a few sampled matrices of δ (see <see cref="MatrixRank"/>); empty when none was sampled.</summary>
    public IReadOnlyList<MatrixRank> SampledRanks { get; init; } = Array.Empty<MatrixRank>();

    /// <summary>The median over the sampled non-zero matrices of Rank99 / min(rows, columns); null when none was sampled.</summary>
    public double? EffectiveRankFraction { get; init; }

    /// <summary>Whether δ is low-rank like a LoRA's: the sampled matrices hold 99% of their energy in at most <see cref="LowRankFraction"/> of their possible rank.</summary>
    public bool? LooksLowRank => EffectiveRankFraction is { } f ? f <= LowRankFraction : null;

    /// <summary>Rank99 / min(rows, columns) at or below which a δ counts as low-rank (a rank-64 LoRA of a 4096-wide layer is 0.016; full fine-tunes are far above).</summary>
    public const double LowRankFraction = 0.1;

    /// <summary>Entries with |δ| below this fraction of the tensor's max |δ| count as naturally sparse.</summary>
    public const double SparsityFraction = 0.01;

    /// <summary>
    /// Computes the statistics by streaming the vector through the executor. Natural sparsity is relative to each
    /// tensor's own max |δ|, which a tensor larger than one chunk only knows after a first pass.
    /// </summary>
    public static unsafe TaskVectorStatistics Measure(TaskVector vector, MergeExecutor executor, bool perTensor, int rankSamples = 0)
    {
        var accumulators = new Dictionary<string, Accumulator>(StringComparer.Ordinal);
        var counts = executor.StreamDeltas(vector, (info, _, delta) =>
        {
            var a = Accum(accumulators, info);
            var (max, sum, squares) = DeltaMoments.Of(delta.Floats, delta.Count);
            a.Max = Math.Max(a.Max, max);
            a.Sum += sum;
            a.SumSquares += squares;
            if (delta.Count == info.ElementCount)
            {
                a.Sparse = DeltaMoments.CountSparse(delta.Floats, delta.Count, a.Max, SparsityFraction);
                a.SparseKnown = true;
            }
        }, "Measuring", tensorDone: (info, drops) =>
        {
            var a = Accum(accumulators, info);
            a.Dropped = drops.Dropped;
            a.DareElements = drops.Elements;
            a.TargetDropped = drops.TargetDropped;
        });

        var unknown = accumulators.Where(p => !p.Value.SparseKnown).Select(p => p.Key).ToHashSet(StringComparer.Ordinal);
        if (unknown.Count > 0)
        {
            executor.StreamDeltas(vector, (info, _, delta) =>
            {
                var a = accumulators[info.Name];
                a.Sparse += DeltaMoments.CountSparse(delta.Floats, delta.Count, a.Max, SparsityFraction);
            }, "Measuring sparsity", t => unknown.Contains(t.Name));
        }

        var usesDare = counts.Elements > 0;
        var perTensorResults = perTensor
            ? accumulators.Values.Select(a => a.ToStatistics(vector.Name,
                a.DareElements > 0 ? a.TargetDropped / a.DareElements : null,
                a.DareElements > 0 ? (double)a.Dropped / a.DareElements : null)).ToList()
            : new List<TaskVectorStatistics>();
        var total = new Accumulator(null!, accumulators.Values.Sum(a => a.Count))
        {
            Max = accumulators.Values.Select(a => a.Max).DefaultIfEmpty(0).Max(),
            Sum = accumulators.Values.Sum(a => a.Sum),
            SumSquares = accumulators.Values.Sum(a => a.SumSquares),
            Sparse = accumulators.Values.Sum(a => a.Sparse),
        };
        var ranks = MatrixRank.Sample(vector, executor, rankSamples);
        var nonZero = ranks.Where(r => r.Rank99 > 0).Select(r => r.Fraction).Order().ToList();
        return total.ToStatistics(vector.Name,
            usesDare ? counts.TargetDropped / counts.Elements : null,
            usesDare ? (double)counts.Dropped / counts.Elements : null) with
        {
            Tensor = null,
            Tensors = perTensorResults,
            AdapterRank = vector.LoraAdapters.Count > 0 ? vector.LoraAdapters.Max(a => a.Rank) : null,
            SampledRanks = ranks,
            EffectiveRankFraction = nonZero.Count > 0 ? nonZero[nonZero.Count / 2] : null,
        };
    }

    private static Accumulator Accum(Dictionary<string, Accumulator> accumulators, TensorInfo info)
    {
        if (!accumulators.TryGetValue(info.Name, out var a))
        {
            a = new Accumulator(info.Name, info.ElementCount);
            accumulators[info.Name] = a;
        }
        return a;
    }

    private sealed class Accumulator(string name, long count)
    {
        public string Name { get; } = name;
        public long Count { get; } = count;
        public double Max, Sum, SumSquares;
        public long Sparse;
        public bool SparseKnown;
        public long Dropped, DareElements;
        public double TargetDropped;

        public TaskVectorStatistics ToStatistics(string vector, double? target, double? realised)
        {
            var mean = Count > 0 ? Sum / Count : 0;
            var variance = Count > 0 ? Math.Max(0, SumSquares / Count - mean * mean) : 0;
            return new TaskVectorStatistics(vector, Name, Count, Count > 0 ? (double)Sparse / Count : 0, Max, mean, Math.Sqrt(variance), target, realised);
        }
    }
}
