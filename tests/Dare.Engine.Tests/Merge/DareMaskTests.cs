using Dare.Engine.Merge;
using Xunit;

namespace Dare.Engine.Tests.Merge;

/// <summary>The vectorised mask against the scalar reference definition.</summary>
public sealed class DareMaskTests
{
    [Theory]
    [InlineData(1L, 1000, 0.5)]
    [InlineData(3L, 5, 0.5)]
    [InlineData(13L, 11, 0.9)]
    [InlineData(1_000_003L, 4099, 0.1)]
    [InlineData((1L << 32) - 5, 300, 0.5)] // crosses the 2^32-element block boundary, where the per-block key changes
    [InlineData((1L << 33) + 7, 100, 0.99)]
    [InlineData(7L, 257, 0.0)]
    public void Vectorised_apply_agrees_with_the_scalar_definition_at_unaligned_offsets(long first, int count, double p)
    {
        // 8 and 16 lanes (the latter emulated where there is no AVX-512), whichever this machine runs.
        AppliesAsDefined(first, count, p, wide: false);
        AppliesAsDefined(first, count, p, wide: true);
    }

    [Theory]
    [InlineData(0L, 2048)]
    [InlineData(3L, 13)]
    [InlineData((1L << 32) - 11, 40)] // crosses the 2^32-element block boundary
    [InlineData((1L << 33) + 5, 7)]   // the scalar tail only
    public unsafe void Hashes_of_a_range_are_each_element_s_hash(long first, int count)
    {
        var key = DareMask.Key(42, 1, "model.layers.0.mlp.up_proj.weight");
        var hashes = new uint[count];
        fixed (uint* destination = hashes) DareMask.Hashes(key, first, count, destination);
        Assert.Equal(Enumerable.Range(0, count).Select(i => DareMask.Hash(key, first + i)), hashes);
    }

    [Theory]
    [InlineData(0u)]
    [InlineData(12345u)]
    [InlineData(0xFFFFFFF0u)] // the last full vector of a 2^32-element block
    [InlineData(0xFFFFFFFFu)] // and past it: the lanes wrap modulo 2^32 as each lane's own product does
    public void Golden_products_of_a_vector_are_each_counter_times_the_constant(uint first)
    {
        var wide = DareMask.GoldenProducts16(first);
        var narrow = DareMask.GoldenProducts8(first);
        for (var lane = 0u; lane < 16; lane++)
        {
            var expected = unchecked((first + lane) * 0x9E3779B1u);
            Assert.Equal(expected, wide[(int)lane]);
            if (lane < 8) Assert.Equal(expected, narrow[(int)lane]);
        }
    }

    private static unsafe void AppliesAsDefined(long first, int count, double p, bool wide)
    {
        var random = new Random((int)(first % 10007) + count);
        var data = TestModels.RandomFloats(random, count);
        var original = (float[])data.Clone();
        var key = DareMask.Key(123, 4, "model.layers.3.mlp.down_proj.weight");
        var threshold = DareMask.Threshold(p);
        var scale = (float)(1.0 / (1.0 - p));
        long dropped;
        fixed (float* pointer = data) dropped = DareMask.Apply(pointer, first, count, key, threshold, scale, wide);
        var expectedDropped = 0;
        for (var i = 0; i < count; i++)
        {
            var drop = DareMask.IsDropped(key, first + i, threshold);
            if (drop) expectedDropped++;
            var expected = drop ? 0f : original[i] * scale;
            if (BitConverter.SingleToUInt32Bits(expected) != BitConverter.SingleToUInt32Bits(data[i]))
            {
                Assert.Fail($"element {first + i} ({(wide ? 16 : 8)} lanes): expected {expected:R}, got {data[i]:R}");
            }
        }
        Assert.Equal(expectedDropped, dropped);
    }

    [Fact]
    public unsafe void Applying_in_pieces_gives_the_same_result_as_one_call()
    {
        var random = new Random(5);
        var whole = TestModels.RandomFloats(random, 1000);
        var pieces = (float[])whole.Clone();
        var key = DareMask.Key(1, 0, "w");
        var threshold = DareMask.Threshold(0.5);
        fixed (float* p = whole) DareMask.Apply(p, 100, 1000, key, threshold, 2f);
        fixed (float* p = pieces)
        {
            var at = 0;
            foreach (var length in new[] { 1, 7, 3, 200, 9, 780 })
            {
                DareMask.Apply(p + at, 100 + at, length, key, threshold, 2f);
                at += length;
            }
            Assert.Equal(1000, at);
        }
        Assert.Equal(whole, pieces);
    }

    [Fact]
    public void Threshold_maps_the_drop_rate_onto_the_32_bit_hash_range()
    {
        Assert.Equal(0u, DareMask.Threshold(0));
        Assert.Equal(1u << 31, DareMask.Threshold(0.5));
        Assert.Equal(1u << 30, DareMask.Threshold(0.25));
        var error = Assert.Throws<DareException>(() => DareMask.Threshold(1));
        Assert.Equal(DareErrorId.InvalidParameter, error.ErrorId);
    }

    [Fact]
    public void Hashes_of_consecutive_indices_are_uniform()
    {
        // 16 equal buckets of the 32-bit range over 160k indices: each within 5 sigma of 10k.
        var key = DareMask.Key(99, 0, "w");
        var buckets = new int[16];
        for (var i = 0L; i < 160_000; i++) buckets[DareMask.Hash(key, i) >> 28]++;
        var sigma = Math.Sqrt(160_000 * (1.0 / 16) * (15.0 / 16));
        Assert.All(buckets, b => Assert.InRange(b, 10_000 - 5 * sigma, 10_000 + 5 * sigma));
    }

    [Fact]
    public void Key_depends_on_seed_stream_and_tensor_name()
    {
        var keys = new[]
        {
            DareMask.Key(1, 0, "a"), DareMask.Key(2, 0, "a"), DareMask.Key(1, 1, "a"), DareMask.Key(1, 0, "b"), DareMask.Key(0, 0, ""),
        };
        Assert.Equal(keys.Length, keys.Distinct().Count());
        Assert.Equal(DareMask.Key(1, 0, "a"), DareMask.Key(1, 0, "a"));
    }
}
