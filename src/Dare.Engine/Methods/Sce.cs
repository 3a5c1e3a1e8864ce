using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Dare.Engine.Merge;

/// <summary>
/// SCE (mergekit's sce; Wan et al. 2024, FuseChat): Select the select_topk fraction of positions (of those where the task
/// vectors are not all equal) with the highest variance across the task vectors, Calculate each vector's weight as its
/// mean δ² over the tensor (normalised to sum 1; uniform when that sum is below 1e-6), Erase the entries whose sign
/// disagrees with the sign of Σ δᵢ, and take the weighted mean of the rest: Σ wᵢ·δᵢ / max(Σ wᵢ, 1e-6) over the agreeing.
/// No weights, normalize or λ (as in mergekit).
/// </summary>
internal sealed class SceMethod : MergeMethod
{
    public static ParameterSpec SelectTopK { get; } = new("select_topk", ParameterKind.Number, ParameterScope.Merge,
        "Fraction of the positions where the task vectors differ that are kept: those of highest variance across them; 1 keeps all.")
    { CmdletName = "SelectTopK", VariesByTensor = true, Range = new NumberRange(0, true, 1, true), Default = 1.0 };

    public override string Name => "sce";
    public override string DisplayName => "Sce";
    public override IReadOnlyList<ParameterSpec> Parameters { get; } = new[] { SelectTopK };

    public override IReadOnlyList<RecipeForm> RecipeForms { get; } = new[]
    {
        new RecipeForm("sce", "Keep the highest-variance positions, weight each model by its mean δ², erase minority signs") { HasLambda = false },
    };

    internal override void Validate(MergeOptions options, int inputCount) =>
        SelectTopK.Check(options.Setting(SelectTopK.Key) ?? throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument, "sce needs select_topk (-SelectTopK)."), "SelectTopK");

    internal override string Step(MergeOptions options) => $"MergeSce(select_topk={options.Setting(SelectTopK.Key)})";

    internal override ITensorMerge CreateTensorMerge(MergeOptions? options, TensorMergeSetup setup) =>
        new SceTensorMerge(options!.Setting(SelectTopK.Key)!.Resolve(setup.Position), setup);

    internal override IDeviceMerge CreateDeviceMerge(MergeOptions? options, TensorMergeSetup setup) =>
        new DeviceSceMerge(options!.Setting(SelectTopK.Key)!.Resolve(setup.Position), setup);
}

/// <summary>
/// SCE for one tensor, in passes over the chunks: (1) count the positions of non-zero variance, (2, 3) the exact
/// threshold of the top-k variances (<see cref="MagnitudeSelection"/>'s coarse and fine histograms over the variances
/// as float32), (4) each input's Σ δ² over the kept positions; then the combine. Equal variances at the threshold are
/// kept in element order, so every pass and every chunking selects the same positions.
/// </summary>
internal sealed unsafe class SceTensorMerge(double selectTopK, TensorMergeSetup setup) : ITensorMerge
{
    internal const float WeightFloor = 1e-6f;
    private MagnitudeSelection? _selection;
    private bool _keepNone;
    private long _tiesLeft;
    private double[] _weights = Array.Empty<double>();
    private float[]? _variances;
    private bool[]? _keep;

    public MagnitudeSelection? SampleWhileReading(int input) => null;
    public IBFloat16SinglePass? SinglePass => null;

    public void RunPasses(IChunkPasses passes)
    {
        var n = setup.ElementCount;
        if (selectTopK <= 0) _keepNone = true;
        else if (selectTopK < 1)
        {
            long nonZero = 0;
            passes.ForEachChunk((_, deltas) =>
            {
                // The buffer is as long as the largest chunk; only this chunk's part counts.
                var count = (int)deltas[0].Count;
                nonZero += count - CountZeros(Variances(deltas), count);
            });
            // mergekit: k = int(count_nonzero(var) · select_topk); k = 0 keeps nothing.
            var k = (long)Math.Floor(nonZero * selectTopK);
            if (k == 0) _keepNone = true;
            else
            {
                _selection = new MagnitudeSelection(k, n);
                if (_selection.NeedsPasses)
                {
                    passes.ForEachChunk((_, deltas) => { fixed (float* v = Variances(deltas)) _selection.AddCoarse(v, deltas[0].Count); });
                    _selection.FinishCoarse();
                    passes.ForEachChunk((_, deltas) => { fixed (float* v = Variances(deltas)) _selection.AddFine(v, deltas[0].Count); });
                    _selection.FinishFine();
                }
            }
        }

        // Each input's weight: the mean of its masked δ² over the tensor, normalised to sum 1.
        var squares = new double[setup.Inputs.Count];
        passes.ForEachChunk((first, deltas) =>
        {
            var keep = Mask(first, deltas);
            var count = deltas[0].Count;
            // Each input's sum is one chain in element order (its bits depend on that order): the inputs run side by side.
            Parallel.For(0, deltas.Length, m =>
            {
                var d = deltas[m].Floats;
                var sum = squares[m];
                for (var j = 0; j < count; j++)
                {
                    if (keep[j]) sum += (double)d[j] * d[j];
                }
                squares[m] = sum;
            });
        });
        _weights = Weights(squares, n);
    }

    /// <summary>Each input's weight from its Σ δ² over the kept positions: the mean over the tensor's n elements, normalised to sum 1 (uniform when that sum is below 1e-6).</summary>
    internal static double[] Weights(double[] squares, long n)
    {
        var means = squares.Select(s => n == 0 ? 0 : s / n).ToArray();
        var total = means.Sum();
        return Math.Abs(total) < 1e-6 ? means.Select(_ => 1.0 / means.Length).ToArray() : means.Select(w => w / total).ToArray();
    }

    private static int CountZeros(float[] values, int count)
    {
        var zeros = 0;
        for (var j = 0; j < count; j++)
        {
            if (values[j] == 0f) zeros++;
        }
        return zeros;
    }

    /// <summary>
    /// The kept positions of elements [first, first + count) in the first count entries of a reused buffer: the
    /// selection applied in element order.
    /// </summary>
    private bool[] Mask(long first, ChunkView[] deltas)
    {
        var count = (int)deltas[0].Count;
        var keep = _keep ??= new bool[setup.ChunkElements];
        if (_keepNone || _selection is null || !_selection.NeedsPasses)
        {
            Array.Fill(keep, !_keepNone && _selection is not { KeepNone: true }, 0, count);
            return keep;
        }
        if (first == 0) _tiesLeft = _selection.TiesToKeep;
        var threshold = _selection.ThresholdBits;
        var variances = Variances(deltas);
        for (var j = 0; j < count; j++)
        {
            var bits = BitConverter.SingleToUInt32Bits(variances[j]);
            keep[j] = bits > threshold || (bits == threshold && _tiesLeft-- > 0);
        }
        return keep;
    }

    /// <summary>The population variance across the inputs of each element of the chunk, in float32 (reused buffer).</summary>
    private float[] Variances(ChunkView[] deltas)
    {
        _variances ??= new float[setup.ChunkElements];
        fixed (float* variances = _variances) Variances(ChunkView.FloatPointers(deltas), variances, deltas[0].Count);
        return _variances;
    }

    /// <summary>Elements [0, count) of the float32 <paramref name="inputs"/>: their variances into <paramref name="variances"/>, on every core.</summary>
    internal static void Variances(IntPtr[] inputs, float* variances, long count) =>
        VectorDriver.RunParallel(new VarianceOperator(inputs, variances), count);

    /// <summary>
    /// Per element, in float64: mean = Σ δᵢ / m, variance = Σ (δᵢ − mean)² / m, rounded to float32. The vector body does
    /// the same operations in the same order for 8 elements at once (4 float64 lanes twice), so the bits are the same.
    /// </summary>
    private readonly struct VarianceOperator(IntPtr[] inputs, float* variances) : IElementOperator
    {
        public static int Lanes => 8;
        public static bool IsVectorized => true;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Vector(long j)
        {
            var m = inputs.Length;
            Vector256<double> sumLow = Vector256<double>.Zero, sumHigh = Vector256<double>.Zero;
            for (var i = 0; i < m; i++)
            {
                var (low, high) = Vector256.Widen(Vector256.Load((float*)inputs[i] + j));
                (sumLow, sumHigh) = (sumLow + low, sumHigh + high);
            }
            var count = Vector256.Create((double)m);
            var (meanLow, meanHigh) = (sumLow / count, sumHigh / count);
            Vector256<double> squaresLow = Vector256<double>.Zero, squaresHigh = Vector256<double>.Zero;
            for (var i = 0; i < m; i++)
            {
                var (low, high) = Vector256.Widen(Vector256.Load((float*)inputs[i] + j));
                var (dLow, dHigh) = (low - meanLow, high - meanHigh);
                (squaresLow, squaresHigh) = (squaresLow + dLow * dLow, squaresHigh + dHigh * dHigh);
            }
            Vector256.Narrow(squaresLow / count, squaresHigh / count).Store(variances + j);
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Scalar(long j)
        {
            var m = inputs.Length;
            double sum = 0;
            for (var i = 0; i < m; i++) sum += ((float*)inputs[i])[j];
            var mean = sum / m;
            double squares = 0;
            for (var i = 0; i < m; i++)
            {
                var d = ((float*)inputs[i])[j] - mean;
                squares += d * d;
            }
            variances[j] = (float)(squares / m);
        }
    }

    public void PrepareChunk(long first, ChunkView[] deltas)
    {
        // The combine sees only the kept positions (the erase and the weights then ignore the others).
        var keep = Mask(first, deltas);
        foreach (var delta in deltas)
        {
            var d = delta.Floats;
            for (var j = 0; j < delta.Count; j++)
            {
                if (!keep[j]) d[j] = 0f;
            }
        }
    }

    public void Combine(ChunkView[] deltas, CombineTarget target) =>
        VectorDriver.RunParallel(new CombineOperator(ChunkView.FloatPointers(deltas), _weights, target), deltas[0].Count);

    /// <summary>
    /// Per element, in float64: the sign of Σ δᵢ (≥ 0 is +), then Σ wᵢ·δᵢ / max(Σ wᵢ, 1e-6) over the δᵢ of that sign
    /// (zeros never agree: mergekit compares sign() with ±1). The vector body adds wᵢ·δᵢ and wᵢ where δᵢ agrees and +0
    /// where not, which leaves the sums as the scalar body's (neither sum is ever −0), so the bits are the same.
    /// </summary>
    private readonly struct CombineOperator(IntPtr[] inputs, double[] weights, CombineTarget target) : IElementOperator
    {
        public static int Lanes => 8;
        public static bool IsVectorized => true;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Vector(long j)
        {
            Vector256<double> sumLow = Vector256<double>.Zero, sumHigh = Vector256<double>.Zero;
            foreach (var input in inputs)
            {
                var (low, high) = Vector256.Widen(Vector256.Load((float*)input + j));
                (sumLow, sumHigh) = (sumLow + low, sumHigh + high);
            }
            var (positiveLow, positiveHigh) = (Vector256.GreaterThanOrEqual(sumLow, Vector256<double>.Zero), Vector256.GreaterThanOrEqual(sumHigh, Vector256<double>.Zero));
            Vector256<double> mergedLow = Vector256<double>.Zero, mergedHigh = Vector256<double>.Zero;
            Vector256<double> weightLow = Vector256<double>.Zero, weightHigh = Vector256<double>.Zero;
            for (var i = 0; i < inputs.Length; i++)
            {
                var w = Vector256.Create(weights[i]);
                var (low, high) = Vector256.Widen(Vector256.Load((float*)inputs[i] + j));
                var agreeLow = Agrees(low, positiveLow);
                var agreeHigh = Agrees(high, positiveHigh);
                mergedLow += (w * low) & agreeLow;
                mergedHigh += (w * high) & agreeHigh;
                weightLow += w & agreeLow;
                weightHigh += w & agreeHigh;
            }
            var floor = Vector256.Create((double)WeightFloor);
            target.Store(Vector256.Narrow(mergedLow / Vector256.Max(weightLow, floor), mergedHigh / Vector256.Max(weightHigh, floor)), j);
        }

        private static Vector256<double> Agrees(Vector256<double> delta, Vector256<double> positive) =>
            Vector256.ConditionalSelect(positive, Vector256.GreaterThan(delta, Vector256<double>.Zero), Vector256.LessThan(delta, Vector256<double>.Zero));

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Scalar(long j)
        {
            double sum = 0;
            foreach (var input in inputs) sum += ((float*)input)[j];
            var sign = sum >= 0 ? 1 : -1;
            double merged = 0, weight = 0;
            for (var i = 0; i < inputs.Length; i++)
            {
                var d = ((float*)inputs[i])[j];
                if (Math.Sign(d) != sign) continue;
                merged += weights[i] * d;
                weight += weights[i];
            }
            target.Store((float)(merged / Math.Max(weight, WeightFloor)), j);
        }
    }
}
