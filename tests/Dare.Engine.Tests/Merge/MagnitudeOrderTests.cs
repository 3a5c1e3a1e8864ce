using Dare.Engine.Merge;
using Xunit;

namespace Dare.Engine.Tests.Merge;

/// <summary>
/// DELLA's ranking (<see cref="MagnitudeOrder"/>, a radix sort that skips bytes every entry shares) against LINQ's
/// stable OrderBy on |value|: positions by magnitude, equal magnitudes (+0 and −0 among them) by position.
/// </summary>
public sealed unsafe class MagnitudeOrderTests
{
    private static int[] Expected(float[] row) =>
        Enumerable.Range(0, row.Length).OrderBy(i => MathF.Abs(row[i])).ToArray();

    private static int[] Sorted(MagnitudeOrder order, float[] row)
    {
        fixed (float* values = row)
        {
            var sorted = order.Sort(values, row.Length);
            var positions = new int[sorted.Length];
            for (var r = 0; r < sorted.Length; r++)
            {
                positions[r] = (int)(uint)sorted[r];
                // The high half is the magnitude's bits, which DELLA does not read but the order is built from.
                Assert.Equal(BitConverter.SingleToUInt32Bits(row[positions[r]]) & 0x7FFFFFFF, (uint)(sorted[r] >> 32));
            }
            return positions;
        }
    }

    private static float BFloat16(float value) => BitConverter.UInt32BitsToSingle(BitConverter.SingleToUInt32Bits(value) & 0xFFFF0000);

    public static TheoryData<string> Rows() => new() { "random", "bfloat16 delta", "all equal", "signed zeros", "few values", "one entry", "top byte only", "one odd low byte", "long" };

    private static float[] Row(string kind)
    {
        var random = new Random(kind.GetHashCode(StringComparison.Ordinal) & 0xFFFF);
        float Normal() => (float)(Math.Sqrt(-2 * Math.Log(1 - random.NextDouble())) * Math.Cos(2 * Math.PI * random.NextDouble()));
        return kind switch
        {
            "random" => Enumerable.Range(0, 2048).Select(_ => Normal()).ToArray(),
            // δ of two bfloat16 values, as a fine-tune stores them: the low bytes are zero in most entries, not in all.
            "bfloat16 delta" => Enumerable.Range(0, 5632).Select(_ =>
            {
                var @base = BFloat16(Normal() * 0.02f);
                return BFloat16(@base + Normal() * 0.001f) - @base;
            }).ToArray(),
            "all equal" => Enumerable.Repeat(-0.5f, 1000).ToArray(),
            "signed zeros" => Enumerable.Range(0, 300).Select(i => i % 3 == 0 ? 0f : i % 3 == 1 ? -0f : (i % 2 == 0 ? 1e-30f : -1e-30f)).ToArray(),
            "few values" => Enumerable.Range(0, 4096).Select(_ => (random.Next(7) - 3) * 0.125f).ToArray(),
            "one entry" => [-3.25f],
            // Only bits 24–30 differ: three passes are skipped, the last one sorts.
            "top byte only" => Enumerable.Range(0, 777).Select(_ => BitConverter.UInt32BitsToSingle((uint)random.Next(1, 127) << 24)).ToArray(),
            // One entry differs from the rest in the low byte: that pass must run (its byte is not shared by every entry).
            "one odd low byte" => Enumerable.Range(0, 512).Select(i => BitConverter.UInt32BitsToSingle(0x3F000000u | (i == 200 ? 1u : 0u) | ((uint)(i % 5) << 16))).ToArray(),
            "long" => Enumerable.Range(0, 100_003).Select(_ => BFloat16(Normal())).ToArray(),
            _ => throw new ArgumentException(kind),
        };
    }

    [Theory]
    [MemberData(nameof(Rows))]
    public void Positions_come_in_order_of_magnitude_then_position(string kind)
    {
        var row = Row(kind);
        Assert.Equal(Expected(row), Sorted(new MagnitudeOrder(), row));
    }

    [Fact]
    public void One_instance_sorts_rows_of_different_lengths_in_turn()
    {
        // The buffers grow for the long row and are reused (in either role) for the short ones after it.
        var order = new MagnitudeOrder();
        foreach (var kind in new[] { "one entry", "random", "long", "few values", "bfloat16 delta", "all equal", "random" })
        {
            var row = Row(kind);
            Assert.Equal(Expected(row), Sorted(order, row));
        }
    }

    [Fact]
    public void An_empty_row_has_no_positions()
    {
        Assert.Empty(Sorted(new MagnitudeOrder(), []));
    }
}
