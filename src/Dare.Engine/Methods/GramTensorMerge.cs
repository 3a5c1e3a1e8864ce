using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Dare.Engine.Merge;

/// <summary>What a vector of a spherical method is, per element: the base b, input i's δ, or input i's whole weight b + δ.</summary>
internal enum VectorKind { Base, Delta, Model }

/// <summary>One vector a method measures (norms and dot products) and combines.</summary>
internal readonly record struct VectorSource(VectorKind Kind, int Input = 0)
{
    public static VectorSource Base => new(VectorKind.Base);
    public static VectorSource Delta(int input) => new(VectorKind.Delta, input);
    public static VectorSource Model(int input) => new(VectorKind.Model, input);

    /// <summary>Task vectors with a base (δᵢ), else whole weights (b + δᵢ): mergekit's "base_model given or not".</summary>
    public static VectorSource[] Inputs(int count, bool wholeWeights) =>
        Enumerable.Range(0, count).Select(i => wholeWeights ? Model(i) : Delta(i)).ToArray();
}

/// <summary>Which elements form one vector: the whole tensor, each row of the last dimension, or each column along the first.</summary>
internal enum VectorLayout { Whole, LastDimension, FirstDimension }

/// <summary>
/// The merge of methods that interpolate whole tensors (or rows) on a sphere: SLERP, NuSLERP, Multi-SLERP, Karcher,
/// Model Stock. Each needs only the vectors' Gram matrix (norms and dot products), which one extra pass over the
/// chunks accumulates in double; the method turns it into one coefficient per vector (per row), and the combine then
/// writes Σ cₖ·vₖ chunk by chunk. Memory is the Gram matrix and coefficients per row, never the tensor.
/// </summary>
internal abstract class GramTensorMerge : ITensorMerge
{
    private readonly TensorMergeSetup _setup;
    private readonly VectorSource[] _vectors;
    private readonly long _rows;
    private readonly long _rowLength;
    private readonly VectorLayout _layout;
    private float[] _baseCoefficient = Array.Empty<float>();
    private float[] _deltaCoefficients = Array.Empty<float>();

    protected GramTensorMerge(TensorMergeSetup setup, VectorSource[] vectors, VectorLayout layout)
    {
        _setup = setup;
        _vectors = vectors;
        var n = setup.ElementCount;
        var shape = setup.Shape.Count == 0 ? new[] { n } : setup.Shape;
        // A 1-D tensor is one vector in every layout (mergekit's row of a bias, its transpose a no-op).
        _layout = shape.Count < 2 ? VectorLayout.Whole : layout;
        (_rows, _rowLength) = _layout switch
        {
            VectorLayout.LastDimension => (n / Math.Max(1, shape[^1]), shape[^1]),
            VectorLayout.FirstDimension => (n / Math.Max(1, shape[0]), shape[0]),
            _ => (1L, n),
        };
    }

    protected TensorMergeSetup Setup => _setup;

    /// <summary>The coefficient of each vector for one row, from its Gram matrix (gram[k, l] = vₖ·vₗ).</summary>
    protected abstract double[] Coefficients(double[,] gram);

    public bool NeedsBaseValues => true;
    public MagnitudeSelection? SampleWhileReading(int input) => null;
    public void PrepareChunk(long first, ChunkView[] deltas) { }
    public IBFloat16SinglePass? SinglePass => null;
    public void Combine(ChunkView[] deltas, CombineTarget target) => throw new InvalidOperationException("A spherical merge combines with the base chunk.");

    private int Pairs => _vectors.Length * (_vectors.Length + 1) / 2;

    /// <summary>The row of element <paramref name="index"/> of the tensor.</summary>
    private long RowOf(long index) => _layout switch
    {
        VectorLayout.LastDimension => index / _rowLength,
        VectorLayout.FirstDimension => index % _rows,
        _ => 0,
    };

    public void RunPasses(IChunkPasses passes)
    {
        var gram = new double[_rows * Pairs];
        passes.ForEachChunk((first, baseChunk, deltas) =>
        {
            using (PhaseProfile.Time(_setup.Profile, Phase.Select)) Accumulate(first, baseChunk, deltas, gram);
        });
        SetCoefficients(gram);
    }

    /// <summary>The vectors measured, in the order of the Gram matrix's pairs (k ≤ l).</summary>
    internal IReadOnlyList<VectorSource> Vectors => _vectors;

    /// <summary>How elements form vectors (a 1-D tensor is always one whole vector).</summary>
    internal VectorLayout Layout => _layout;

    /// <summary>How many vectors each source forms: rows, columns, or 1 for the whole tensor.</summary>
    internal long Rows => _rows;

    /// <summary>Elements per row (<see cref="VectorLayout.LastDimension"/>) or per column (<see cref="VectorLayout.FirstDimension"/>).</summary>
    internal long RowLength => _rowLength;

    /// <summary>Per row, the coefficient a on the base in a·b + Σ dᵢ·δᵢ (set by <see cref="SetCoefficients"/>).</summary>
    internal float[] BaseCoefficients => _baseCoefficient;

    /// <summary>Per row r and input i, the coefficient dᵢ at r·inputs + i.</summary>
    internal float[] DeltaCoefficients => _deltaCoefficients;

    /// <summary>
    /// Turns the summed Gram matrices (row r's pairs at r·pairs, k ≤ l in order) into each row's combine coefficients:
    /// the tensor backend sums them on the device and hands them here, so both backends share this step.
    /// </summary>
    internal void SetCoefficients(double[] sums)
    {
        var pairs = Pairs;
        var inputs = _setup.Inputs.Count;
        _baseCoefficient = new float[_rows];
        _deltaCoefficients = new float[_rows * inputs];
        var gram = new double[_vectors.Length, _vectors.Length];
        for (long row = 0; row < _rows; row++)
        {
            var p = row * pairs;
            for (var k = 0; k < _vectors.Length; k++)
            {
                for (var l = k; l < _vectors.Length; l++) gram[k, l] = gram[l, k] = sums[p++];
            }
            var c = Coefficients(gram);
            // Σ cₖ·vₖ as a·b + Σ dᵢ·δᵢ, less b where the vectors are whole weights (the target adds b back).
            double onBase = _vectors.Any(v => v.Kind != VectorKind.Delta) ? -1 : 0;
            var onDelta = new double[inputs];
            for (var k = 0; k < _vectors.Length; k++)
            {
                if (_vectors[k].Kind != VectorKind.Delta) onBase += c[k];
                if (_vectors[k].Kind != VectorKind.Base) onDelta[_vectors[k].Input] += c[k];
            }
            _baseCoefficient[row] = (float)onBase;
            for (var i = 0; i < inputs; i++) _deltaCoefficients[row * inputs + i] = (float)onDelta[i];
        }
    }

    private unsafe void Accumulate(long first, ChunkView baseChunk, ChunkView[] deltas, double[] gram)
    {
        var vectors = new GramKernels.Vectors(baseChunk.Floats,
            _vectors.Select(v => v.Kind == VectorKind.Base ? IntPtr.Zero : (IntPtr)deltas[v.Input].Floats).ToArray(),
            _vectors.Select(v => v.Kind != VectorKind.Delta).ToArray());
        GramKernels.Accumulate(vectors, first, baseChunk.Count, _layout != VectorLayout.FirstDimension, _rowLength, _rows, gram);
    }

    public unsafe void Combine(long first, ChunkView baseChunk, ChunkView[] deltas, CombineTarget target)
    {
        var count = baseChunk.Count;
        var basePointer = baseChunk.Floats;
        var deltaPointers = ChunkView.FloatPointers(deltas);
        Partition.Run(count, (_, start, end) =>
        {
            if (_layout == VectorLayout.FirstDimension)
            {
                for (var j = start; j < end; j++) Store(RowOf(first + j), j, j + 1);
                return;
            }
            // Runs of one row share their coefficients.
            for (var j = start; j < end;)
            {
                var row = RowOf(first + j);
                var runEnd = _layout == VectorLayout.Whole ? end : Math.Min(end, (row + 1) * _rowLength - first);
                Store(row, j, runEnd);
                j = runEnd;
            }
        });

        // a·b + Σ dᵢ·δᵢ for elements [start, end) of one row.
        void Store(long row, long start, long end)
        {
            var op = new CoefficientCombineOperator(basePointer, deltaPointers, _baseCoefficient[row], _deltaCoefficients, (int)row * deltaPointers.Length, target);
            VectorDriver.Run(op, start, end);
        }
    }
}

/// <summary>
/// One row's combine: a·b + Σ dᵢ·δᵢ, a multiplication and an addition per input (no fused multiply-add), with the
/// row's coefficients dᵢ at <paramref name="coefficients"/>[offset + i].
/// </summary>
internal readonly unsafe struct CoefficientCombineOperator(float* baseValues, IntPtr[] deltas, float a, float[] coefficients, int offset, CombineTarget target)
    : IElementOperator
{
    public static int Lanes => 8;
    public static bool IsVectorized => true;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Vector(long j)
    {
        var merged = a * Vector256.Load(baseValues + j);
        for (var i = 0; i < deltas.Length; i++) merged += coefficients[offset + i] * Vector256.Load((float*)deltas[i] + j);
        target.Store(merged, j);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Scalar(long j)
    {
        var merged = a * baseValues[j];
        for (var i = 0; i < deltas.Length; i++) merged += coefficients[offset + i] * ((float*)deltas[i])[j];
        target.Store(merged, j);
    }
}
