using Dare.Engine.Safetensors;
using Xunit;

namespace Dare.Engine.Tests.Safetensors;

/// <summary>ByteSize.Parse: KB/MB/GB/TB are decimal, KiB/MiB/GiB/TiB binary, as Hugging Face's max_shard_size.</summary>
public sealed class ByteSizeTests
{
    [Theory]
    [InlineData("5GB", 5_000_000_000L)]
    [InlineData("500MB", 500_000_000L)]
    [InlineData("1GiB", 1L << 30)]
    [InlineData("123", 123L)]
    [InlineData("123B", 123L)]
    [InlineData("10KB", 10_000L)]
    [InlineData("2KiB", 2048L)]
    [InlineData("3MiB", 3L << 20)]
    [InlineData("2TB", 2_000_000_000_000L)]
    [InlineData("1TiB", 1L << 40)]
    [InlineData("1.5GiB", 3L << 29)]
    [InlineData("0.5GB", 500_000_000L)]
    [InlineData("5gb", 5_000_000_000L)]
    [InlineData("  5 GB  ", 5_000_000_000L)]
    [InlineData("1", 1L)]
    public void Parse_reads_decimal_and_binary_units(string text, long expected)
    {
        Assert.Equal(expected, ByteSize.Parse(text));
    }

    [Theory]
    [InlineData("")]
    [InlineData("   ")]
    [InlineData("abc")]
    [InlineData("GB")]
    [InlineData("5XB")]
    [InlineData("5 GBs")]
    [InlineData("-5GB")]
    [InlineData("+5GB")]
    [InlineData("1e9")]
    [InlineData("5,5GB")]
    [InlineData("5.GB")]
    [InlineData("0")]
    [InlineData("0GB")]
    [InlineData("0.1")]
    [InlineData("99999999999TB")]
    [InlineData("5 G B")]
    public void Parse_refuses_anything_else_as_InvalidParameter(string text)
    {
        var ex = Assert.Throws<DareException>(() => ByteSize.Parse(text));
        Assert.Equal(DareErrorId.InvalidParameter, ex.ErrorId);
        Assert.Equal(DareErrorKind.InvalidArgument, ex.Kind);
    }

    [Fact]
    public void Parse_of_null_is_InvalidParameter()
    {
        Assert.Equal(DareErrorId.InvalidParameter, Assert.Throws<DareException>(() => ByteSize.Parse(null!)).ErrorId);
    }

    [Theory]
    [InlineData(999L, "999 B")]
    [InlineData(2_000L, "2 KB")]
    [InlineData(500_000_000L, "500 MB")]
    [InlineData(5_000_000_000L, "5 GB")]
    public void Format_prints_decimal_units(long bytes, string expected)
    {
        Assert.Equal(expected, ByteSize.Format(bytes));
    }
}
