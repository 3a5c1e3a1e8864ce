using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Dare.Engine.Merge;
using Xunit;

namespace Dare.Engine.Tests.Methods;

/// <summary>The one vector driver: every element of a range is handled exactly once, by the vector body or the tail, and a stateful operator comes back as the loop left it.</summary>
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

    /// <summary>A reduction: counts the elements above a limit into a field the caller reads from the returned operator.</summary>
    private struct AboveCounter(float* data, float limit) : IElementOperator
    {
        public long Count { get; private set; }

        public static int Lanes => 8;
        public static bool IsVectorized => true;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Vector(long j) =>
            Count += BitOperations.PopCount(Vector256.GreaterThan(Vector256.Load(data + j), Vector256.Create(limit)).ExtractMostSignificantBits());

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Scalar(long j)
        {
            if (data[j] > limit) Count++;
        }
    }

    /// <summary>
    /// Order-dependent state: keeps the first <c>budget</c> elements equal to <c>value</c> and zeroes later ones, a
    /// whole vector at once where the budget covers it or is spent, element by element where it runs out.
    /// </summary>
    private struct FirstEqualKeeper(float* data, float value, long budget) : IElementOperator
    {
        public long Budget { get; private set; } = budget;

        public static int Lanes => 8;
        public static bool IsVectorized => true;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Vector(long j)
        {
            var values = Vector256.Load(data + j);
            var equal = Vector256.Equals(values, Vector256.Create(value));
            var count = BitOperations.PopCount(equal.ExtractMostSignificantBits());
            if (count <= Budget) Budget -= count;
            else if (Budget == 0) Vector256.ConditionalSelect(equal, Vector256<float>.Zero, values).Store(data + j);
            else
            {
                for (var k = 0; k < 8; k++) Scalar(j + k);
            }
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Scalar(long j)
        {
            if (data[j] != value) return;
            if (Budget > 0) Budget--;
            else data[j] = 0f;
        }
    }

    /// <summary>0, 1 or 2 in a fixed pseudo-random pattern (plenty of equal values for the keeper).</summary>
    private static float[] Pattern(int length) => Enumerable.Range(0, length).Select(j => (float)(j * 7919 % 13 % 3)).ToArray();

    [Fact]
    public void A_reducing_operator_returns_the_count_a_plain_loop_gets_for_every_range()
    {
        var data = Pattern(48);
        fixed (float* d = data)
        {
            for (var start = 0; start <= 8; start++)
            {
                for (var length = 0; length <= 40; length++)
                {
                    var expected = 0L;
                    for (var j = start; j < start + length; j++) expected += data[j] > 1f ? 1 : 0;
                    Assert.Equal(expected, VectorDriver.Run(new AboveCounter(d, 1f), start, start + length).Count);
                }
            }
        }
    }

    [Fact]
    public void Order_dependent_state_gives_the_element_order_result_wherever_the_tail_starts()
    {
        for (var start = 0; start <= 8; start++)
        {
            for (var length = 0; length <= 40; length++)
            {
                for (var budget = 0L; budget <= 12; budget += 3)
                {
                    var expected = Pattern(48);
                    var expectedLeft = budget;
                    for (var j = start; j < start + length; j++)
                    {
                        if (expected[j] != 2f) continue;
                        if (expectedLeft > 0) expectedLeft--;
                        else expected[j] = 0f;
                    }

                    var actual = Pattern(48);
                    long left;
                    fixed (float* a = actual) left = VectorDriver.Run(new FirstEqualKeeper(a, 2f, budget), start, start + length).Budget;

                    Assert.Equal(expectedLeft, left);
                    Assert.Equal(expected, actual);
                }
            }
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
