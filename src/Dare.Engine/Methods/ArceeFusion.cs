using System.Numerics;

namespace Dare.Engine.Merge;

/// <summary>
/// Arcee Fusion (mergekit's arcee_fusion): keeps the model's change only where it matters. Per row r (the last
/// dimension), KLᵣ = Σ p·log(p/q) with p = softmax(θ_model row) + 1e-8, q = softmax(θ_base row) + 1e-8; each entry's
/// importance is |δ|·KLᵣ; entries whose importance reaches median + 1.5·IQR of the tensor's importances take the
/// model's value, the rest keep the base's. Quantiles are mergekit's: the sorted value at ⌊q·(n − 1)⌋, over every
/// entry up to 10⁶ entries and over 10⁶ sampled entries beyond (mergekit samples at random each run; Dare's sample is
/// fixed per tensor name, so runs repeat). Streams in four passes: row softmax sums, row KL, importances, combine.
/// </summary>
internal sealed class ArceeFusionMethod : MergeMethod
{
    internal const int SampleLimit = 1_000_000;

    public override string Name => "arcee_fusion";
    public override string DisplayName => "ArceeFusion";
    public override bool TakesTransforms => false;
    public override IReadOnlyList<ParameterSpec> Parameters { get; } = Array.Empty<ParameterSpec>();

    public override IReadOnlyList<RecipeForm> RecipeForms { get; } = new[]
    {
        new RecipeForm("arcee_fusion", "The model's changes where their KL-weighted importance is an outlier") { HasLambda = false },
    };

    internal override void Validate(MergeOptions options, int inputCount)
    {
        if (inputCount != 1)
        {
            throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument, $"arcee_fusion merges exactly one model into the base, not {inputCount}.");
        }
    }

    internal override string Step(MergeOptions options) => "MergeArceeFusion()";

    internal override ITensorMerge CreateTensorMerge(MergeOptions? options, TensorMergeSetup setup)
    {
        var info = setup.Inputs.Count > 0 ? setup.Position.Name : "";
        return new ArceeFusionMerge(setup.ElementCount, setup.RowLength, info);
    }

    internal override IDeviceMerge CreateDeviceMerge(MergeOptions? options, TensorMergeSetup setup) => new DeviceArceeFusionMerge(setup);
}

/// <summary>One tensor's Arcee Fusion: per-row softmax statistics and KL, the importance threshold, then the masked δ.</summary>
internal sealed class ArceeFusionMerge(long count, long rowLength, string tensorName) : ITensorMerge
{
    internal const double Epsilon = 1e-8;
    private readonly long _rows = count == 0 ? 0 : count / rowLength;
    private double[] _kl = Array.Empty<double>();
    private float _threshold = float.PositiveInfinity;
    private long _first;

    public bool NeedsBaseValues => true;
    public MagnitudeSelection? SampleWhileReading(int input) => null;
    public IBFloat16SinglePass? SinglePass => null;
    public void PrepareChunk(long first, ChunkView[] deltas) => _first = first;

    /// <summary>Rows overlapping the chunk [first, first + n), each with the chunk's element range of it.</summary>
    private IEnumerable<(long Row, long Start, long End)> RowSegments(long first, long n)
    {
        for (var row = first / rowLength; row * rowLength < first + n; row++)
        {
            yield return (row, Math.Max(row * rowLength, first) - first, Math.Min((row + 1) * rowLength, first + n) - first);
        }
    }

    public unsafe void RunPasses(IChunkPasses passes)
    {
        // The sample depends only on the tensor's size and name: it is drawn (one thread, one generator) while the
        // first two passes run.
        var sampling = count <= ArceeFusionMethod.SampleLimit ? Task.FromResult<long[]?>(null)
            : Task.Run<long[]?>(() => SamplePositions(count, ArceeFusionMethod.SampleLimit, tensorName));
        // Pass 1: per row, running max and Σ exp(x − max) of base and model (a row may span chunks).
        var maxA = Enumerable.Repeat(double.NegativeInfinity, (int)_rows).ToArray();
        var maxB = (double[])maxA.Clone();
        var sumA = new double[_rows];
        var sumB = new double[_rows];
        passes.ForEachChunk((first, baseChunk, deltas) =>
        {
            float* a = baseChunk.Floats, d = deltas[0].Floats;
            Parallel.ForEach(RowSegments(first, deltas[0].Count), segment =>
            {
                for (var j = segment.Start; j < segment.End; j++)
                {
                    Accumulate(ref maxA[segment.Row], ref sumA[segment.Row], a[j]);
                    Accumulate(ref maxB[segment.Row], ref sumB[segment.Row], a[j] + d[j]);
                }
            });
        });
        var logA = maxA.Select((m, r) => m + Math.Log(sumA[r])).ToArray();
        var logB = maxB.Select((m, r) => m + Math.Log(sumB[r])).ToArray();

        // Pass 2: KL per row.
        _kl = new double[_rows];
        passes.ForEachChunk((first, baseChunk, deltas) =>
        {
            float* a = baseChunk.Floats, d = deltas[0].Floats;
            Parallel.ForEach(RowSegments(first, deltas[0].Count), segment =>
            {
                var sum = 0.0;
                for (var j = segment.Start; j < segment.End; j++)
                {
                    var p = Math.Exp(a[j] + d[j] - logB[segment.Row]) + Epsilon;
                    var q = Math.Exp(a[j] - logA[segment.Row]) + Epsilon;
                    sum += p * Math.Log(p / q);
                }
                lock (_kl) _kl[segment.Row] += sum;
            });
        });

        // Pass 3: the importances (all, or a fixed sample), then mergekit's threshold median + 1.5·IQR.
        var positions = sampling.GetAwaiter().GetResult();
        var values = new float[positions?.Length ?? count];
        var next = 0;
        passes.ForEachChunk((first, deltas) =>
        {
            float* d = deltas[0].Floats;
            var n = deltas[0].Count;
            if (positions is null)
            {
                for (var j = 0L; j < n; j++) values[first + j] = Importance(d[j], first + j);
                return;
            }
            for (; next < positions.Length && positions[next] < first + n; next++) values[next] = Importance(d[positions[next] - first], positions[next]);
        });
        _threshold = Threshold(values);
    }

    /// <summary>mergekit's outlier threshold over the importances: median + 1.5·IQR (reorders <paramref name="importances"/>).</summary>
    internal static float Threshold(float[] importances)
    {
        var (lower, median, upper) = Quartiles(importances);
        return median + 1.5f * (upper - lower);
    }

    /// <summary>
    /// The values a sort would put at ⌊q·(n − 1)⌋ for q = ¼, ½, ¾ (mergekit's quantiles), found by selection, which
    /// reorders <paramref name="values"/>: a million importances per tensor took 80 ms to sort and take 10 ms to select.
    /// </summary>
    internal static (float Lower, float Median, float Upper) Quartiles(float[] values)
    {
        if (values.Length == 0) return (0, 0, 0);
        var (k1, k2, k3) = ((int)(0.25f * (values.Length - 1)), (int)(0.5f * (values.Length - 1)), (int)(0.75f * (values.Length - 1)));
        if (Array.Exists(values, float.IsNaN))
        {
            Array.Sort(values); // NaN has no place in selection's order; Array.Sort puts it first, as it always has here
            return (values[k1], values[k2], values[k3]);
        }
        var span = values.AsSpan();
        // After selecting k2, everything before it is no larger and everything after no smaller.
        var median = Selection.Select(span, k2);
        return (k1 == k2 ? median : Selection.Select(span[..k2], k1), median, k3 == k2 ? median : Selection.Select(span[(k2 + 1)..], k3 - k2 - 1));
    }

    private static void Accumulate(ref double max, ref double sum, double x)
    {
        if (x <= max)
        {
            sum += Math.Exp(x - max);
            return;
        }
        sum = sum * Math.Exp(max - x) + 1;
        max = x;
    }

    private float Importance(float delta, long element) => Math.Abs(delta) * (float)_kl[element / rowLength];

    /// <summary>Tensors up to this many elements mark their sample in a bitmap (at most 32 MB); larger ones in a hash set.</summary>
    internal const long BitmapLimit = 1L << 28;

    /// <summary>
    /// <paramref name="m"/> distinct positions of [0, n), sorted, drawn by Floyd's algorithm from a generator seeded by
    /// the tensor's name (FNV-1a), so the same tensor always gets the same sample. Which positions are drawn depends
    /// only on the generator; the bitmap (read in order, so no sort) replaces a hash set and its sort, which took a
    /// third of a merge's time.
    /// </summary>
    internal static long[] SamplePositions(long n, int m, string name, long bitmapLimit = BitmapLimit)
    {
        var hash = 14695981039346656037UL;
        foreach (var c in name) hash = (hash ^ c) * 1099511628211UL;
        var random = new Random(unchecked((int)(hash ^ (hash >> 32))));
        if (n > bitmapLimit)
        {
            var chosen = new HashSet<long>(m);
            for (var j = n - m; j < n; j++)
            {
                var t = random.NextInt64(j + 1);
                chosen.Add(chosen.Contains(t) ? j : t);
            }
            var sorted = chosen.ToArray();
            Array.Sort(sorted);
            return sorted;
        }
        var marked = new ulong[(n + 63) / 64];
        for (var j = n - m; j < n; j++)
        {
            var t = random.NextInt64(j + 1);
            // j itself is never marked yet: every earlier pick is at most j − 1.
            if ((marked[t >> 6] & (1UL << (int)(t & 63))) != 0) t = j;
            marked[t >> 6] |= 1UL << (int)(t & 63);
        }
        var positions = new long[m];
        var next = 0;
        for (var word = 0; word < marked.Length; word++)
        {
            for (var bits = marked[word]; bits != 0; bits &= bits - 1) positions[next++] = word * 64L + BitOperations.TrailingZeroCount(bits);
        }
        return positions;
    }

    public unsafe void Combine(ChunkView[] deltas, CombineTarget target)
    {
        float* d = deltas[0].Floats;
        var first = _first;
        var threshold = _threshold;
        Partition.Run(deltas[0].Count, (_, start, end) =>
        {
            for (var j = start; j < end; j++) target.Store(Importance(d[j], first + j) >= threshold ? d[j] : 0f, j);
        });
    }
}
