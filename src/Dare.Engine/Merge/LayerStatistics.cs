using Dare.Engine.Charts;
using Dare.Engine.Safetensors;

namespace Dare.Engine.Merge;

/// <summary>
/// Figures of one task vector over one layer (or over the embeddings, or the other tensors outside the layers), for
/// Measure-TaskVector -PerLayer. Fractions are over the layer's entries, weighted by tensor size.
/// </summary>
public sealed record LayerStatistics(string TaskVector, int? Layer, string Part, int TensorCount, long ParameterCount, double MeanAbs, double MaxAbs,
    double NaturalSparsity, double? TargetDropRate, double? RealisedDropRate)
{
    /// <summary>
    /// Among the layer's entries where at least two of the vectors measured together have a non-zero δ, the fraction
    /// whose signs disagree (the interference TIES's sign election resolves). The same for every vector of a layer; null
    /// when fewer than two vectors were measured together or none overlap there.
    /// </summary>
    public double? SignConflictRate { get; init; }

    /// <summary>Entries of the layer where at least two vectors have a non-zero δ (the denominator of <see cref="SignConflictRate"/>).</summary>
    public long? OverlappingEntries { get; init; }

    public const string EmbeddingsPart = "embeddings";
    public const string OtherPart = "other";

    /// <summary>
    /// Measures each vector per layer (through <see cref="TaskVectorStatistics.Measure"/> per tensor) and, with two or
    /// more vectors, their sign conflicts tensor by tensor: one byte of flags per entry of the current tensor, so memory
    /// is bounded by the largest tensor, never the model. A merged vector stands for its inputs.
    /// </summary>
    public static IReadOnlyList<LayerStatistics> Measure(IReadOnlyList<TaskVector> given, MergeExecutor executor)
    {
        var vectors = given.SelectMany(v => v.IsMerged ? v.Inputs : new[] { v }).ToList();
        if (vectors.Count == 0) return Array.Empty<LayerStatistics>();
        var baseModel = vectors[0].Base;
        var layout = ModelLayout.Of(baseModel);
        string PartOf(string tensor) => layout.Position(tensor) is var p && p.LayerIndex is { } i ? $"layer {i}" : p.IsEmbedding ? EmbeddingsPart : OtherPart;
        int? LayerOf(string tensor) => layout.Position(tensor).LayerIndex;

        var conflicts = vectors.Count >= 2 && vectors.All(v => ReferenceEquals(v.Base, baseModel) || v.Base.Path == baseModel.Path)
            ? SignConflicts(vectors, executor, PartOf) : null;
        var results = new List<LayerStatistics>();
        foreach (var vector in vectors)
        {
            var perTensor = TaskVectorStatistics.Measure(vector, executor, perTensor: true).Tensors;
            foreach (var group in perTensor.GroupBy(t => PartOf(t.Tensor!)))
            {
                var count = group.Sum(t => t.ParameterCount);
                double Weighted(Func<TaskVectorStatistics, double> f) => count == 0 ? 0 : group.Sum(t => f(t) * t.ParameterCount) / count;
                var dare = group.All(t => t.RealisedDropRate is not null);
                var (conflicting, overlapping) = conflicts is not null && conflicts.TryGetValue(group.Key, out var c) ? c : (0L, 0L);
                results.Add(new LayerStatistics(vector.Name, LayerOf(group.First().Tensor!), group.Key, group.Count(), count,
                    Weighted(t => t.MeanAbs), group.Max(t => t.MaxAbs), Weighted(t => t.NaturalSparsity),
                    dare ? Weighted(t => t.TargetDropRate!.Value) : null, dare ? Weighted(t => t.RealisedDropRate!.Value) : null)
                {
                    SignConflictRate = conflicts is null || overlapping == 0 ? null : (double)conflicting / overlapping,
                    OverlappingEntries = conflicts is null ? null : overlapping,
                });
            }
        }
        // Embeddings first, then the layers in order, then the rest; vectors in input order within a part.
        return results.Select((r, i) => (r, i)).OrderBy(x => x.r.Part == EmbeddingsPart ? -1 : x.r.Layer ?? int.MaxValue).ThenBy(x => x.i).Select(x => x.r).ToList();
    }

    // Flags per entry: which signs were seen, and whether one or two vectors had a non-zero δ there.
    private const byte Positive = 1, Negative = 2, NonZeroOnce = 4, NonZeroTwice = 8;

    /// <summary>Per part: (entries with opposite signs, entries where at least two vectors are non-zero).</summary>
    private static unsafe Dictionary<string, (long Conflicting, long Overlapping)> SignConflicts(IReadOnlyList<TaskVector> vectors, MergeExecutor executor, Func<string, string> partOf)
    {
        var totals = new Dictionary<string, (long, long)>(StringComparer.Ordinal);
        foreach (var info in vectors[0].Base.Tensors.Where(t => t.DType.IsMergeable()))
        {
            var flags = new byte[info.ElementCount];
            foreach (var vector in vectors)
            {
                executor.StreamDeltas(vector, (_, first, delta) =>
                {
                    var values = delta.Floats;
                    // Each entry's flags are its own, so the cores share the chunk.
                    Partition.Run(delta.Count, (_, start, end) =>
                    {
                        for (var j = start; j < end; j++)
                        {
                            var v = values[j];
                            if (v == 0) continue;
                            ref var f = ref flags[first + j];
                            f |= (byte)((f & NonZeroOnce) != 0 ? NonZeroTwice | NonZeroOnce : NonZeroOnce);
                            f |= v > 0 ? Positive : Negative;
                        }
                    });
                }, $"Measuring sign conflicts ({vector.Name})", t => t.Name == info.Name);
            }
            var counts = new (long Conflicting, long Overlapping)[Partition.Ranges(flags.LongLength).Length];
            Partition.Run(flags.LongLength, (r, start, end) =>
            {
                long conflictingHere = 0, overlappingHere = 0;
                for (var j = start; j < end; j++)
                {
                    var f = flags[j];
                    if ((f & NonZeroTwice) == 0) continue;
                    overlappingHere++;
                    if ((f & (Positive | Negative)) == (Positive | Negative)) conflictingHere++;
                }
                counts[r] = (conflictingHere, overlappingHere);
            });
            var (conflicting, overlapping) = (counts.Sum(c => c.Conflicting), counts.Sum(c => c.Overlapping));
            var part = partOf(info.Name);
            var (c, o) = totals.GetValueOrDefault(part);
            totals[part] = (c + conflicting, o + overlapping);
        }
        return totals;
    }

    /// <summary>
    /// Draws the figures by layer: natural sparsity, realised drop rate and sign-conflict rate (fractions, left axis) and
    /// mean |δ| (right axis), one line per vector. Embeddings are drawn at x = −1 and the other tensors at x = layer count.
    /// </summary>
    public static void DrawChart(IReadOnlyList<LayerStatistics> statistics, string path)
    {
        var layerCount = statistics.Where(s => s.Layer is not null).Select(s => s.Layer!.Value + 1).DefaultIfEmpty(0).Max();
        double X(LayerStatistics s) => s.Layer ?? (s.Part == EmbeddingsPart ? -1 : layerCount);
        var series = new List<ChartSeries>();
        foreach (var vector in statistics.GroupBy(s => s.TaskVector))
        {
            var rows = vector.OrderBy(X).ToList();
            var xs = rows.Select(X).ToList();
            series.Add(new ChartSeries($"{vector.Key}: natural sparsity", xs, rows.Select(r => r.NaturalSparsity).ToList()));
            if (rows.Any(r => r.RealisedDropRate is not null)) series.Add(new ChartSeries($"{vector.Key}: realised drop", xs, rows.Select(r => r.RealisedDropRate ?? double.NaN).ToList()));
            series.Add(new ChartSeries($"{vector.Key}: mean |δ|", xs, rows.Select(r => r.MeanAbs).ToList()) { RightAxis = true });
        }
        var first = statistics.GroupBy(s => s.TaskVector).FirstOrDefault()?.OrderBy(X).ToList();
        if (first is not null && first.Any(r => r.SignConflictRate is not null))
        {
            series.Add(new ChartSeries("sign conflicts (overlapping entries)", first.Select(X).ToList(), first.Select(r => r.SignConflictRate ?? double.NaN).ToList()));
        }
        new LineChart("Task vector by layer (−1: embeddings; last: head and norms)", "layer", "fraction", series) { RightLabel = "mean |δ|", IntegerX = true }.Save(path);
    }
}
