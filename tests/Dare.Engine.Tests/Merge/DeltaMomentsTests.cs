using Dare.Engine.Merge;
using Xunit;

namespace Dare.Engine.Tests.Merge;

/// <summary>Measure-TaskVector's figures of a chunk against the same figures written out in float64 loops.</summary>
public sealed unsafe class DeltaMomentsTests
{
    private static float[] Values(int count, int seed)
    {
        var random = new Random(seed);
        return Enumerable.Range(0, count).Select(i => (i % 7) switch
        {
            0 => 0f,
            1 => -0f,
            2 => (float)(random.NextDouble() - 0.5) * 1e-30f,
            _ => (float)(random.NextDouble() - 0.5) * (random.Next(3) == 0 ? 100f : 0.01f),
        }).ToArray();
    }

    [Theory]
    [InlineData(1)]
    [InlineData(13)]
    [InlineData(65_536)]
    [InlineData(200_003)] // four blocks, the last partial, and a scalar tail
    public void Max_sum_and_sum_of_squares_are_the_plain_ones(int count)
    {
        var values = Values(count, count);
        (double Max, double Sum, double Squares) actual;
        fixed (float* data = values) actual = DeltaMoments.Of(data, count);
        Assert.Equal(values.Max(v => Math.Abs((double)v)), actual.Max);
        var sum = values.Sum(v => Math.Abs((double)v));
        var squares = values.Sum(v => (double)v * v);
        Assert.Equal(sum, actual.Sum, sum * 1e-12);
        Assert.Equal(squares, actual.Squares, squares * 1e-12);
    }

    [Fact]
    public void An_empty_chunk_has_no_figures()
    {
        Assert.Equal((0.0, 0.0, 0.0), DeltaMoments.Of(null, 0));
        Assert.Equal(0, DeltaMoments.CountBelow(null, 0, 1.0));
    }

    [Theory]
    [InlineData(0.005)]            // between floats: the first float not below it rounds up or down
    [InlineData(0.25)]             // a float itself: equal magnitudes are not below
    [InlineData(1e-40)]            // below every normal float: only zeros and the smallest subnormals
    [InlineData(3e38)]             // above every value
    [InlineData(0.0)]
    [InlineData(-1.0)]
    [InlineData(double.NaN)]
    public void Counts_the_magnitudes_below_a_float64_limit(double limit)
    {
        var values = Values(100_001, 7).Concat(new[] { 0.25f, -0.25f, 0.005f, (float)0.005, 1e-40f, 2e-45f }).ToArray();
        long actual;
        fixed (float* data = values) actual = DeltaMoments.CountBelow(data, values.Length, limit);
        Assert.Equal(values.LongCount(v => Math.Abs((double)v) < limit), actual);
    }
}
