using Dare.Engine.Safetensors;

namespace Dare.Engine.Merge;

/// <summary>
/// The same sampled rows of every floating-point tensor, read as raw δ (before any drop step) from each task vector,
/// and the figures the guidance reads from them: natural sparsity per vector, cosine and sign conflicts per pair, per
/// layer and overall. Rows are chosen deterministically (evenly spaced; every row when a tensor has no more than
/// <see cref="RowsPerTensor"/>), so memory is one tensor's sample at a time whatever the model size.
/// </summary>
public sealed class DeltaSample
{
    /// <summary>Entries with |δ| below this fraction of their tensor's max |δ| (in the sample) count as naturally sparse.</summary>
    public const double SparsityFraction = TaskVectorStatistics.SparsityFraction;

    /// <summary>A 1-D tensor is read as rows of at most this many elements.</summary>
    private const long FlatRowLength = 4096;

    private readonly int _count;
    private readonly long[] _sparse;
    private readonly long[] _sampled;
    private readonly Dictionary<int, LayerAccumulator> _layers = new();
    private readonly LayerAccumulator _total;

    private DeltaSample(IReadOnlyList<string> names, int rowsPerTensor)
    {
        Names = names;
        RowsPerTensor = rowsPerTensor;
        _count = names.Count;
        _sparse = new long[_count];
        _sampled = new long[_count];
        _total = new LayerAccumulator(_count);
    }

    public IReadOnlyList<string> Names { get; }
    public int RowsPerTensor { get; }

    /// <summary>Elements sampled per task vector (the same positions in each).</summary>
    public long SampledElements => _count > 0 ? _sampled[0] : 0;

    public int SampledTensors { get; private set; }

    /// <summary>Per vector: the fraction of sampled entries with |δ| below 1% of their tensor's sampled max |δ| (an all-zero tensor counts as wholly sparse).</summary>
    public IReadOnlyList<double> NaturalSparsity => _sparse.Select((s, i) => _sampled[i] > 0 ? (double)s / _sampled[i] : 0).ToList();

    /// <summary>Every pair of vectors: cosine over the sampled entries, and the share of entries non-zero in both whose signs differ.</summary>
    public IReadOnlyList<TaskVectorPair> Pairs => _total.Pairs(Names);

    /// <summary>Among entries non-zero in at least two vectors: the share whose non-zero signs disagree (what TIES's sign election resolves).</summary>
    public double SignConflictRate => _total.ConflictRate;

    /// <summary>The same figures per decoder layer (Layer null: tensors outside the layers), in layer order.</summary>
    public IReadOnlyList<LayerInterference> Layers =>
        _layers.OrderBy(p => p.Key).Select(p => p.Value.ToLayer(p.Key < 0 ? null : p.Key, Names)).ToList();

    /// <summary>Samples every floating-point tensor of the vectors' base; the vectors' raw δs (drop steps are ignored).</summary>
    public static unsafe DeltaSample Measure(IReadOnlyList<TaskVector> vectors, int rowsPerTensor, CancellationToken cancellation = default)
    {
        if (rowsPerTensor < 1) throw new ArgumentOutOfRangeException(nameof(rowsPerTensor));
        var leaves = vectors.SelectMany(v => v.Leaves).ToList();
        var sample = new DeltaSample(leaves.Select(l => l.Name).ToList(), rowsPerTensor);
        if (leaves.Count == 0) return sample;
        var @base = leaves[0].Base;
        var layout = ModelLayout.Of(@base);
        using var reader = new TensorReader();
        using var workspace = new ChunkWorkspace();
        var chunks = new ChunkReader(reader, workspace, null);
        foreach (var info in @base.Tensors.Where(t => t.DType.IsMergeable() && t.ElementCount > 0))
        {
            cancellation.ThrowIfCancellationRequested();
            var parts = leaves.Select(l => l.Input.Open(info)).ToList();
            var (rows, rowLength) = RowsOf(info);
            var picked = PickRows(rows, rowsPerTensor);
            var values = new float[leaves.Count][];
            for (var i = 0; i < leaves.Count; i++) values[i] = new float[picked.Count * rowLength];
            for (var r = 0; r < picked.Count; r++)
            {
                var first = picked[r] * rowLength;
                var baseChunk = chunks.ReadFloat32(0, info, first, rowLength);
                for (var i = 0; i < leaves.Count; i++)
                {
                    if (parts[i] is not { } part) continue;
                    var delta = part.ReadDelta(chunks, 1, baseChunk, first, rowLength);
                    new ReadOnlySpan<float>(delta.Floats, checked((int)rowLength)).CopyTo(values[i].AsSpan(checked((int)(r * rowLength))));
                }
            }
            sample.Add(layout.Position(info.Name).LayerIndex ?? -1, values);
        }
        return sample;
    }

    /// <summary>A tensor as rows: its first dimension for a matrix (or more), rows of up to 4096 elements for a 1-D tensor.</summary>
    private static (long Rows, long RowLength) RowsOf(TensorInfo info)
    {
        if (info.Shape.Length >= 2) return (info.Shape[0], info.ElementCount / info.Shape[0]);
        var length = Math.Min(info.ElementCount, FlatRowLength);
        return (info.ElementCount / length, length);
    }

    /// <summary>min(count, rows) rows evenly spaced from the first: row ⌊i·rows/k⌋ for i &lt; k.</summary>
    internal static IReadOnlyList<long> PickRows(long rows, int count)
    {
        var k = (int)Math.Min(rows, count);
        return Enumerable.Range(0, k).Select(i => (long)i * rows / k).ToList();
    }

    private unsafe void Add(int layer, float[][] values)
    {
        SampledTensors++;
        var length = values[0].Length;
        for (var i = 0; i < _count; i++)
        {
            fixed (float* data = values[i])
            {
                // Measure-TaskVector's natural sparsity, relative to the sample's own max |δ|.
                _sparse[i] += DeltaMoments.CountSparse(data, length, DeltaMoments.Of(data, length).MaxAbs, SparsityFraction);
            }
            _sampled[i] += length;
        }
        if (!_layers.TryGetValue(layer, out var accumulator)) _layers[layer] = accumulator = new LayerAccumulator(_count);
        accumulator.Add(values);
        _total.Add(values);
    }

    /// <summary>Dot products, squared norms and sign counts of one group of entries (a layer, or all).</summary>
    private sealed class LayerAccumulator(int count)
    {
        private readonly double[,] _dot = new double[count, count];
        private readonly long[,] _bothNonZero = new long[count, count];
        private readonly long[,] _opposite = new long[count, count];
        private long _shared, _conflicts, _elements;

        public double ConflictRate => _shared > 0 ? (double)_conflicts / _shared : 0;

        public void Add(float[][] values)
        {
            var length = values[0].Length;
            _elements += length;
            for (var e = 0; e < length; e++)
            {
                int positive = 0, negative = 0;
                for (var i = 0; i < count; i++)
                {
                    var a = values[i][e];
                    if (a > 0) positive++;
                    else if (a < 0) negative++;
                    _dot[i, i] += (double)a * a;
                    for (var j = i + 1; j < count; j++)
                    {
                        var b = values[j][e];
                        _dot[i, j] += (double)a * b;
                        if (a != 0 && b != 0)
                        {
                            _bothNonZero[i, j]++;
                            if (a > 0 != b > 0) _opposite[i, j]++;
                        }
                    }
                }
                if (positive + negative < 2) continue;
                _shared++;
                if (positive > 0 && negative > 0) _conflicts++;
            }
        }

        public IReadOnlyList<TaskVectorPair> Pairs(IReadOnlyList<string> names)
        {
            var pairs = new List<TaskVectorPair>();
            for (var i = 0; i < count; i++)
            {
                for (var j = i + 1; j < count; j++)
                {
                    var norms = Math.Sqrt(_dot[i, i]) * Math.Sqrt(_dot[j, j]);
                    pairs.Add(new TaskVectorPair(names[i], names[j], norms > 0 ? _dot[i, j] / norms : 0,
                        _bothNonZero[i, j] > 0 ? (double)_opposite[i, j] / _bothNonZero[i, j] : 0, _elements));
                }
            }
            return pairs;
        }

        public LayerInterference ToLayer(int? layer, IReadOnlyList<string> names)
        {
            var pairs = Pairs(names);
            return new LayerInterference(layer, _elements, pairs.Count > 0 ? pairs.Average(p => p.Cosine) : null, pairs.Count > 0 ? ConflictRate : null);
        }
    }
}

/// <summary>Two task vectors compared over the sampled entries.</summary>
public sealed record TaskVectorPair(string First, string Second, double Cosine, double SignConflictRate, long SampledElements);

/// <summary>One decoder layer (null: the tensors outside the layers): the mean pairwise cosine and the sign-conflict rate there.</summary>
public sealed record LayerInterference(int? Layer, long SampledElements, double? MeanCosine, double? SignConflictRate);
