using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Dare.Engine.Merge;

/// <summary>
/// Sums of products of vectors for the spherical methods (their Gram matrices), in float64. Elements are summed in
/// fixed blocks of <see cref="Block"/> aligned to the tensor's element index, each block in one fixed order, and the
/// blocks added in index order: the sums, and so the merge, do not depend on the number of cores (nor on the chunk
/// size, as long as it is a multiple of the block, as the executor's default is).
/// </summary>
internal static unsafe class GramKernels
{
    public const long Block = 1 << 16;

    /// <summary>
    /// The vectors: vₖ[j] = (withBase[k] ? b[j] : 0) + (deltas[k] is not null ? deltas[k][j] : 0), in float32 as the
    /// combine sees them. Rows: element j of the tensor belongs to row <paramref name="rowOf"/>(j).
    /// </summary>
    public readonly struct Vectors(float* @base, IntPtr[] deltas, bool[] withBase)
    {
        private float* Base { get; } = @base;
        private IntPtr[] Deltas { get; } = deltas;
        private bool[] WithBase { get; } = withBase;

        public int Count => Deltas.Length;
        public int Pairs => Count * (Count + 1) / 2;

        public float Value(int k, long j) =>
            (WithBase[k] ? Base[j] : 0f) + (Deltas[k] != IntPtr.Zero ? ((float*)Deltas[k])[j] : 0f);

        public Vector256<float> Value(int k, long j, bool vector) =>
            (WithBase[k] ? Vector256.Load(Base + j) : Vector256<float>.Zero) + (Deltas[k] != IntPtr.Zero ? Vector256.Load((float*)Deltas[k] + j) : Vector256<float>.Zero);
    }

    /// <summary>
    /// Adds the pair sums of chunk elements [0, count) (tensor elements first + j) into <paramref name="gram"/>
    /// (row r's pairs at r·pairs, k ≤ l in order). <paramref name="contiguousRows"/>: rows are runs of
    /// <paramref name="rowLength"/> elements (or one row for the whole tensor when it equals the element count);
    /// otherwise element i is in row i mod <paramref name="rows"/>.
    /// </summary>
    public static void Accumulate(Vectors vectors, long first, long count, bool contiguousRows, long rowLength, long rows, double[] gram)
    {
        var pairs = vectors.Pairs;
        var firstBlock = first / Block;
        var lastBlock = (first + count - 1) / Block;
        var wave = Math.Max(1, Environment.ProcessorCount);
        for (var start = firstBlock; start <= lastBlock; start += wave)
        {
            var blocks = (int)Math.Min(wave, lastBlock - start + 1);
            var sums = new (long Row, double[] Values)[blocks];
            Parallel.For(0, blocks, b =>
            {
                var low = Math.Max(first, (start + b) * Block);
                var high = Math.Min(first + count, (start + b + 1) * Block);
                sums[b] = contiguousRows ? RowRuns(vectors, first, low, high, rowLength, pairs) : Strided(vectors, first, low, high, rows, pairs);
            });
            // In block order, whatever ran in parallel.
            foreach (var (row, values) in sums)
            {
                if (contiguousRows)
                {
                    for (var i = 0; i < values.Length; i++) gram[row * pairs + i] += values[i];
                }
                else
                {
                    for (var i = 0; i < values.Length; i++) gram[(row * pairs + i) % (rows * pairs)] += values[i];
                }
            }
        }
    }

    /// <summary>Tensor elements [low, high) whose rows are runs: the sums of the rows they touch, from the first touched row.</summary>
    private static (long, double[]) RowRuns(Vectors vectors, long first, long low, long high, long rowLength, int pairs)
    {
        var firstRow = low / rowLength;
        var values = new double[((high - 1) / rowLength - firstRow + 1) * pairs];
        for (var start = low; start < high;)
        {
            var row = start / rowLength;
            var end = Math.Min(high, (row + 1) * rowLength);
            Segment(vectors, start - first, end - first, values, (int)(row - firstRow) * pairs);
            start = end;
        }
        return (firstRow, values);
    }

    /// <summary>Tensor elements [low, high) whose row is the index mod rows: the sums of the rows they touch, from low's row.</summary>
    private static (long, double[]) Strided(Vectors vectors, long first, long low, long high, long rows, int pairs)
    {
        var firstRow = low % rows;
        var values = new double[Math.Min(rows, high - low) * pairs];
        for (var i = low; i < high; i++)
        {
            var p = (int)((i - low) % rows) * pairs;
            for (var k = 0; k < vectors.Count; k++)
            {
                var vk = (double)vectors.Value(k, i - first);
                for (var l = k; l < vectors.Count; l++) values[p++] += vk * vectors.Value(l, i - first);
            }
        }
        return (firstRow, values);
    }

    /// <summary>The pair sums of chunk elements [start, end), one row, added at values[offset..]: 4 lanes of float64, then the tail.</summary>
    private static void Segment(Vectors vectors, long start, long end, double[] values, int offset)
    {
        var n = vectors.Count;
        var accumulators = stackalloc Vector256<double>[vectors.Pairs];
        var low = stackalloc Vector256<double>[n];
        var high = stackalloc Vector256<double>[n];
        new Span<Vector256<double>>(accumulators, vectors.Pairs).Clear();
        var sums = VectorDriver.Run(new PairSums(vectors, accumulators, low, high, values, offset), start, end);
        sums.FoldLanes();
    }

    /// <summary>
    /// Adds Σ vₖ[j]·vₗ[j] (k ≤ l) to values[offset..]. The vector body sums eight elements a step into per-lane
    /// accumulators (the caller's scratch, as are <paramref name="low"/> and <paramref name="high"/>), which are folded
    /// into the values once, before the first tail element is added (or after the run when there is no tail); the tail
    /// adds element by element. So the sums depend on where the tail starts, which the driver fixes for a given range,
    /// and the blocks are aligned to the tensor's element index: the result is the same on every run.
    /// </summary>
    private struct PairSums(Vectors vectors, Vector256<double>* accumulators, Vector256<double>* low, Vector256<double>* high, double[] values, int offset)
        : IElementOperator
    {
        private bool _lanesUsed;

        public static int Lanes => 8;
        public static bool IsVectorized => true;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Vector(long j)
        {
            // Locals, so the pair loop keeps the pointers in registers (the operator itself lives on the stack).
            var n = vectors.Count;
            var lowLanes = low;
            var highLanes = high;
            var sums = accumulators;
            for (var k = 0; k < n; k++) (lowLanes[k], highLanes[k]) = Vector256.Widen(vectors.Value(k, j, vector: true));
            var p = 0;
            for (var k = 0; k < n; k++)
            {
                for (var l = k; l < n; l++) sums[p++] += lowLanes[k] * lowLanes[l] + highLanes[k] * highLanes[l];
            }
            _lanesUsed = true;
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Scalar(long j)
        {
            FoldLanes();
            var p = offset;
            for (var k = 0; k < vectors.Count; k++)
            {
                var vk = (double)vectors.Value(k, j);
                for (var l = k; l < vectors.Count; l++) values[p++] += vk * vectors.Value(l, j);
            }
        }

        /// <summary>Adds the lanes' sums to the values, once, if the vector body ran.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)] // a call would take the operator's address and keep its fields out of registers
        public void FoldLanes()
        {
            if (!_lanesUsed) return;
            _lanesUsed = false;
            for (var p = 0; p < vectors.Pairs; p++) values[offset + p] += Vector256.Sum(accumulators[p]);
        }
    }
}
