using Dare.Engine.Merge;
using Xunit;

namespace Dare.Engine.Tests.Merge;

/// <summary>Quickselect against Array.Sort: the k-th value, and nothing larger before it or smaller after it.</summary>
public sealed class SelectionTests
{
    public static TheoryData<string> Kinds() => new() { "random", "few values", "sorted", "reversed", "all equal", "signed zeros", "one", "organ pipe" };

    private static float[] Values(string kind)
    {
        var random = new Random(kind.Length * 31 + kind[0]);
        return kind switch
        {
            "random" => Enumerable.Range(0, 10_001).Select(_ => (float)random.NextDouble() - 0.5f).ToArray(),
            "few values" => Enumerable.Range(0, 5000).Select(_ => (float)random.Next(4)).ToArray(),
            "sorted" => Enumerable.Range(0, 3000).Select(i => (float)i).ToArray(),
            "reversed" => Enumerable.Range(0, 3000).Select(i => (float)-i).ToArray(),
            "all equal" => Enumerable.Repeat(2.5f, 777).ToArray(),
            "signed zeros" => Enumerable.Range(0, 400).Select(i => i % 3 == 0 ? -0f : i % 3 == 1 ? 0f : 1f).ToArray(),
            "one" => [7f],
            "organ pipe" => Enumerable.Range(0, 4000).Select(i => (float)Math.Min(i, 4000 - i)).ToArray(),
            _ => throw new ArgumentException(kind),
        };
    }

    [Theory]
    [MemberData(nameof(Kinds))]
    public void Selects_the_value_a_sort_puts_at_k_and_partitions_around_it(string kind)
    {
        var original = Values(kind);
        var sorted = original.Order().ToArray();
        foreach (var k in new[] { 0, original.Length / 4, original.Length / 2, original.Length - 1 }.Distinct())
        {
            foreach (var rounds in new[] { 100, 1 }) // 1: the first partition, then a sort of what is left
            {
                var values = (float[])original.Clone();
                var selected = Selection.Select(values, k, rounds);
                Assert.Equal(sorted[k], selected);
                Assert.Equal(sorted[k], values[k]);
                Assert.All(values[..k], v => Assert.True(v <= selected));
                Assert.All(values[(k + 1)..], v => Assert.True(v >= selected));
                Assert.Equal(sorted, values.Order().ToArray()); // a permutation: nothing lost or duplicated
            }
        }
    }

    [Fact]
    public void An_index_outside_the_span_is_refused()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => Selection.Select(new float[3], 3));
        Assert.Throws<ArgumentOutOfRangeException>(() => Selection.Select(new float[3], -1));
    }
}
