using System.Xml.Linq;
using Dare.Engine.Charts;
using SkiaSharp;
using Xunit;

namespace Dare.Engine.Tests.Charts;

/// <summary>Charts are real images: a PNG that decodes to the asked size, an SVG that parses and holds the lines.</summary>
public sealed class LineChartTests : IDisposable
{
    private readonly string _folder = Directory.CreateTempSubdirectory("dare-chart-tests").FullName;

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    private static LineChart Chart() => new("perplexity by drop rate", "drop rate p", "perplexity", new[]
    {
        new ChartSeries("keep ratio 0.5", new[] { 0.8, 0.9, 0.95 }, new[] { 12.0, 11.5, 13.0 }),
        new ChartSeries("keep ratio 1", new[] { 0.8, 0.9, 0.95 }, new[] { 12.5, 12.0, double.NaN }),
    });

    [Fact]
    public void Png_by_extension_decodes_to_the_requested_size()
    {
        var path = Path.Combine(_folder, "chart.png");
        Chart().Save(path, 640, 400);
        var bytes = File.ReadAllBytes(path);
        Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A }, bytes[..8]);
        Assert.True(bytes.Length > 5000, $"{bytes.Length} bytes");
        using var bitmap = SKBitmap.Decode(path);
        Assert.Equal(640, bitmap.Width);
        Assert.Equal(400, bitmap.Height);
        // Not a blank canvas: many distinct colours (lines, markers, text).
        var colours = new HashSet<uint>();
        for (var y = 0; y < bitmap.Height; y += 3) for (var x = 0; x < bitmap.Width; x += 3) colours.Add((uint)bitmap.GetPixel(x, y));
        Assert.True(colours.Count > 10, $"{colours.Count} colours");
    }

    [Fact]
    public void Svg_by_extension_is_xml_with_the_title_and_the_legend()
    {
        var path = Path.Combine(_folder, "chart.svg");
        Chart().Save(path);
        var document = XDocument.Load(path);
        Assert.Equal("svg", document.Root!.Name.LocalName);
        var text = File.ReadAllText(path);
        Assert.True(text.Length > 2000, $"{text.Length} characters");
        Assert.Contains("keep ratio 0.5", text);
        Assert.Contains("perplexity by drop rate", text);
        Assert.DoesNotContain(Directory.EnumerateFiles(_folder), f => f.EndsWith(".tmp.svg", StringComparison.Ordinal));
    }

    [Theory]
    [InlineData("chart.jpg")]
    [InlineData("missing-folder/chart.png")]
    public void Other_extensions_and_missing_folders_are_refused(string name)
    {
        var error = Assert.Throws<DareException>(() => Chart().Save(Path.Combine(_folder, name)));
        Assert.Equal(DareErrorId.ChartPathInvalid, error.ErrorId);
        Assert.Contains(name.Split('/')[^1], error.Message);
        Assert.Empty(Directory.EnumerateFileSystemEntries(_folder));
    }
}
