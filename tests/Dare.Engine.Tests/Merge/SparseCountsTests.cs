using Dare.Engine.Merge;
using Xunit;

namespace Dare.Engine.Tests.Merge;

/// <summary>SparseCounts against a plain array of counts: the same totals, every counted entry visited from the top, and arrays that go back to the pool clean.</summary>
public sealed class SparseCountsTests
{
    [Fact]
    public void Descending_visits_every_counted_entry_from_the_highest_and_the_counts_equal_a_plain_array()
    {
        const int width = 5 << 16;
        var random = new Random(5);
        var plain = new long[width];
        var counts = new SparseCounts(width);
        // Entries at both ends of the range and of blocks, some added twice, and zero counts (which mark nothing).
        var entries = new[] { 0u, 63u, 64u, 4095u, 4096u, width - 1u, width - 64u }.Concat(Enumerable.Range(0, 500).Select(_ => (uint)random.Next(width)));
        foreach (var entry in entries.Concat(entries.Take(3)))
        {
            var count = random.Next(0, 4);
            plain[entry] += count;
            counts.Add(entry, count);
        }

        Assert.Equal(plain.Sum(), counts.Total);
        var visited = counts.Descending().ToList();
        Assert.Equal(visited.OrderByDescending(e => e), visited);
        Assert.Equal(Enumerable.Range(0, width).Where(e => plain[e] != 0).Select(e => (uint)e).OrderByDescending(e => e), visited.Where(e => counts[e] != 0));
        Assert.All(Enumerable.Range(0, width), e => Assert.Equal(plain[e], counts[(uint)e]));
        counts.Release();
        Assert.Throws<ObjectDisposedException>(() => counts[0]);

        // The pool's arrays come back all zeros, whichever array the next instance gets.
        for (var i = 0; i < 4; i++)
        {
            var next = new SparseCounts(width);
            Assert.All(Enumerable.Range(0, width), e => Assert.Equal(0, next[(uint)e]));
            Assert.Empty(next.Descending());
            next.Add((uint)random.Next(width), 7);
            next.Release();
        }
    }
}
