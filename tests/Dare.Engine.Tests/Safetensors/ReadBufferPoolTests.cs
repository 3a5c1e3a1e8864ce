using Dare.Engine.Safetensors;
using Xunit;

namespace Dare.Engine.Tests.Safetensors;

/// <summary>
/// The buffered read-ahead's buffers are reused rather than mapped anew (fresh memory faults page by page): a range
/// whose page-aligned length lands in the neighbouring megabyte takes a free buffer that fits, a small range does not
/// take a buffer far larger than it needs, and every buffer's capacity is accounted while it is lent.
/// </summary>
public sealed unsafe class ReadBufferPoolTests
{
    private const long MB = 1 << 20;

    [Fact]
    public void A_free_buffer_one_megabyte_larger_serves_the_next_range_and_is_accounted_at_its_own_capacity()
    {
        using var pool = new ReadBufferPool(budget: 256 * MB);
        var larger = pool.Rent(33 * MB - 4096); // a 32 MB range that straddles a page: 33 MB
        Assert.Equal(33 * MB, pool.CapacityOf(larger));
        larger[0] = 7;
        pool.Return(larger);
        Assert.Equal(0, pool.BytesInUse);

        var reused = pool.Rent(32 * MB);
        Assert.True(reused == larger, "the free 33 MB buffer should serve the 32 MB range");
        Assert.Equal(7, reused[0]); // the same memory, not a fresh mapping
        Assert.Equal(33 * MB, pool.BytesInUse);
        pool.Return(reused);
    }

    [Fact]
    public void A_small_range_gets_its_own_buffer_rather_than_one_more_than_twice_its_size()
    {
        using var pool = new ReadBufferPool(budget: 256 * MB);
        var large = pool.Rent(33 * MB);
        pool.Return(large);

        var small = pool.Rent(MB);
        Assert.True(small != large);
        Assert.Equal(MB, pool.CapacityOf(small));
        Assert.Equal(MB, pool.BytesInUse);

        // Of two free buffers that fit, the smaller is taken.
        var middle = pool.Rent(2 * MB);
        pool.Return(small);
        pool.Return(middle);
        Assert.True(pool.Rent(MB) == small);
        pool.Return(small);
    }
}
