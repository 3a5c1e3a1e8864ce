using Dare.Engine.Merge;
using Xunit;

namespace Dare.Engine.Tests.Merge;

public sealed class L1AccumulatorTests
{
    private static unsafe double Sum(float[] data, params int[] pieces)
    {
        var accumulator = new L1Accumulator();
        fixed (float* p = data)
        {
            var at = 0;
            foreach (var length in pieces.Length == 0 ? new[] { data.Length } : pieces)
            {
                accumulator.Add(p + at, length);
                at += length;
            }
            Assert.Equal(data.Length, at);
        }
        return accumulator.Total;
    }

    [Fact]
    public void L1_sum_is_accurate_and_independent_of_how_the_data_is_split()
    {
        var random = new Random(3);
        var data = new float[300_001];
        for (var i = 0; i < data.Length; i++)
        {
            data[i] = (i % 10) switch
            {
                0 => 0f,
                1 => -1e-40f * random.Next(1, 100), // denormals
                2 => (float)(random.NextDouble() * 1e6),
                _ => (float)((random.NextDouble() * 2 - 1) * Math.Pow(10, random.Next(-8, 3))),
            };
        }
        // Reference: the magnitudes summed in double, smallest first.
        var expected = data.Select(x => Math.Abs((double)x)).Order().Aggregate(0.0, (a, b) => a + b);
        var whole = Sum(data);
        Assert.True(Math.Abs(whole - expected) <= 1e-12 * expected, $"{whole:R} vs {expected:R}");
        Assert.Equal(whole, Sum(data, 7, 100_000, 3, 199_990, 1));
        Assert.Equal(whole, Sum(data, 150_000, 150_001));
    }

    [Fact]
    public void L1_sum_of_nothing_is_zero_and_infinity_propagates()
    {
        Assert.Equal(0.0, Sum(Array.Empty<float>()));
        Assert.Equal(double.PositiveInfinity, Sum(new[] { 1f, float.NegativeInfinity, 2f }));
    }
}
