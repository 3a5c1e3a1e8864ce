using Dare.Engine.Merge;
using Xunit;

namespace Dare.Engine.Tests.Merge;

/// <summary>
/// Plain re-implementations of the merge spec (loops over arrays, nothing from the engine), used as the
/// independent expected values of the tests.
/// </summary>
public static class Reference
{
    public static float[] Delta(float[] @base, float[] tuned)
    {
        var delta = new float[@base.Length];
        for (var i = 0; i < delta.Length; i++) delta[i] = tuned[i] - @base[i];
        return delta;
    }

    /// <summary>⌈k·n⌉ in exact decimal arithmetic.</summary>
    public static int KeepCount(double keepRatio, int n) => (int)Math.Ceiling((decimal)keepRatio * n);

    /// <summary>The kept positions: sort by (|x| descending, index ascending) and take the first <paramref name="keep"/>.</summary>
    public static bool[] TopMagnitude(float[] x, int keep)
    {
        var order = Enumerable.Range(0, x.Length).ToArray();
        Array.Sort(order, (a, b) =>
        {
            var byMagnitude = Math.Abs(x[b]).CompareTo(Math.Abs(x[a]));
            return byMagnitude != 0 ? byMagnitude : a.CompareTo(b);
        });
        var kept = new bool[x.Length];
        for (var i = 0; i < Math.Min(keep, x.Length); i++) kept[order[i]] = true;
        return kept;
    }

    public static float[] Trim(float[] x, double keepRatio)
    {
        var kept = TopMagnitude(x, KeepCount(keepRatio, x.Length));
        var result = new float[x.Length];
        for (var i = 0; i < x.Length; i++) result[i] = kept[i] ? x[i] : 0f;
        return result;
    }

    public static double[] Linear(float[][] deltas, double[] weights, bool normalize, double lambda)
    {
        var n = deltas[0].Length;
        var totalWeight = weights.Sum();
        var result = new double[n];
        for (var j = 0; j < n; j++)
        {
            double sum = 0;
            for (var i = 0; i < deltas.Length; i++) sum += weights[i] * deltas[i][j];
            result[j] = (normalize ? sum / totalWeight : sum) * lambda;
        }
        return result;
    }

    public static double[] Ties(float[][] deltas, double[] weights, double[] keepRatios, bool normalize, double lambda, SignMethod signMethod = SignMethod.Sum)
    {
        var trimmed = deltas.Select((d, i) => Trim(d, keepRatios[i])).ToArray();
        var n = deltas[0].Length;
        var result = new double[n];
        for (var j = 0; j < n; j++)
        {
            double election = 0;
            for (var i = 0; i < trimmed.Length; i++)
            {
                var t = trimmed[i][j];
                if (signMethod == SignMethod.Count) election += t > 0 ? 1 : t < 0 ? -1 : 0;
                else election += weights[i] * t;
            }
            var elected = election >= 0 ? 1 : -1;
            double numerator = 0, denominator = 0;
            for (var i = 0; i < trimmed.Length; i++)
            {
                var t = trimmed[i][j];
                if (t != 0 && Math.Sign(t) == elected)
                {
                    numerator += weights[i] * t;
                    denominator += weights[i];
                }
            }
            var merged = normalize ? (denominator != 0 ? numerator / denominator : 0) : numerator;
            result[j] = merged * lambda;
        }
        return result;
    }

    /// <summary>θ = base + merged, in float32.</summary>
    public static float[] Apply(float[] @base, double[] merged)
    {
        var result = new float[@base.Length];
        for (var i = 0; i < result.Length; i++) result[i] = @base[i] + (float)merged[i];
        return result;
    }

    public static float[] ToFloats(double[] values) => values.Select(v => (float)v).ToArray();

    /// <summary>Element-wise comparison with a small absolute + relative tolerance (float32 vs double evaluation order).</summary>
    public static void AssertClose(IReadOnlyList<float> expected, IReadOnlyList<float> actual, double tolerance = 1e-6, string? what = null)
    {
        Assert.Equal(expected.Count, actual.Count);
        for (var i = 0; i < expected.Count; i++)
        {
            var allowed = tolerance * Math.Max(1.0, Math.Abs(expected[i]));
            if (!(Math.Abs(expected[i] - actual[i]) <= allowed))
            {
                Assert.Fail($"{what ?? "value"}[{i}]: expected {expected[i]:R}, got {actual[i]:R} (tolerance {allowed:G3})");
            }
        }
    }

    public static void AssertBitEqual(IReadOnlyList<float> expected, IReadOnlyList<float> actual, string? what = null)
    {
        Assert.Equal(expected.Count, actual.Count);
        for (var i = 0; i < expected.Count; i++)
        {
            if (BitConverter.SingleToUInt32Bits(expected[i]) != BitConverter.SingleToUInt32Bits(actual[i]))
            {
                Assert.Fail($"{what ?? "value"}[{i}]: expected {expected[i]:R}, got {actual[i]:R}");
            }
        }
    }
}
