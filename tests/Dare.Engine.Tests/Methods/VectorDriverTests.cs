using System.Runtime.CompilerServices;
using Dare.Engine.Merge;
using Xunit;

namespace Dare.Engine.Tests.Methods;

/// <summary>The one vector driver: every element of a range is handled exactly once, by the vector body or the tail.</summary>
public sealed unsafe class VectorDriverTests
{
    /// <summary>Adds 1 to each element it touches, and 100 more where the vector body did.</summary>
    private readonly struct CountingOperator(int* counts) : IElementOperator
    {
        public static int Lanes => 8;
        public static bool IsVectorized => true;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Vector(long j)
        {
            for (var k = 0; k < 8; k++) counts[j + k] += 101;
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Scalar(long j) => counts[j] += 1;
    }

    [Theory]
    [InlineData(0, 0)]
    [InlineData(0, 7)]
    [InlineData(0, 8)]
    [InlineData(3, 20)]
    [InlineData(5, 5)]
    [InlineData(1, 1000)]
    public void Each_element_of_the_range_is_visited_once(int start, int end)
    {
        var counts = new int[end + 8];
        fixed (int* c = counts)
        {
            var op = new CountingOperator(c);
            VectorDriver.Run(op, start, end);
        }
        var whole = (end - start) / 8 * 8;
        for (var j = 0; j < counts.Length; j++)
        {
            var expected = j < start || j >= end ? 0 : System.Runtime.Intrinsics.Vector256.IsHardwareAccelerated && j < start + whole ? 101 : 1;
            Assert.Equal(expected, counts[j]);
        }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(65_536)]
    [InlineData(1_000_003)]
    public void The_partition_covers_the_range_in_order_without_gaps(long count)
    {
        var ranges = Partition.Ranges(count);
        Assert.Equal(0, ranges[0].Start);
        Assert.Equal(count, ranges[^1].End);
        for (var r = 1; r < ranges.Length; r++) Assert.Equal(ranges[r - 1].End, ranges[r].Start);
        Assert.InRange(ranges.Length, 1, Environment.ProcessorCount);
    }
}
