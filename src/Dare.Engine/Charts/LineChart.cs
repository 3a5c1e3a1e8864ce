using ScottPlot;

namespace Dare.Engine.Charts;

/// <summary>One line of a chart: its legend label and its points (x ascending is not required; points are drawn in order).</summary>
public sealed record ChartSeries(string Label, IReadOnlyList<double> X, IReadOnlyList<double> Y)
{
    /// <summary>Drawn against the right-hand axis (a quantity of another scale than the left axis's).</summary>
    public bool RightAxis { get; init; }
}

/// <summary>A line chart with markers, written as PNG or SVG by the file's extension (ScottPlot, drawn with SkiaSharp).</summary>
public sealed record LineChart(string Title, string XLabel, string YLabel, IReadOnlyList<ChartSeries> Series)
{
    /// <summary>Ticks on the x axis only at whole numbers (layers).</summary>
    public bool IntegerX { get; init; }

    /// <summary>The right-hand axis's label, shown when a series uses it.</summary>
    public string? RightLabel { get; init; }

    public const int DefaultWidth = 800;
    public const int DefaultHeight = 500;

    /// <summary>Extensions <see cref="Save"/> writes.</summary>
    public static readonly IReadOnlyList<string> Extensions = new[] { ".png", ".svg" };

    /// <summary>
    /// Throws ChartPathInvalid unless <paramref name="path"/> ends in .png or .svg and its folder exists; call before any
    /// long work so a typo fails at once.
    /// </summary>
    public static void CheckPath(string path)
    {
        var extension = Path.GetExtension(path).ToLowerInvariant();
        if (!Extensions.Contains(extension))
        {
            throw new DareException(DareErrorId.ChartPathInvalid, DareErrorKind.InvalidArgument,
                $"The chart path '{path}' must end in .png or .svg (the format follows the extension).") { FilePath = path };
        }
        var folder = Path.GetDirectoryName(Path.GetFullPath(path));
        if (folder is null || !Directory.Exists(folder))
        {
            throw new DareException(DareErrorId.ChartPathInvalid, DareErrorKind.ObjectNotFound,
                $"The folder of the chart path '{path}' does not exist.") { FilePath = path };
        }
        if (Directory.Exists(path))
        {
            throw new DareException(DareErrorId.ChartPathInvalid, DareErrorKind.InvalidArgument, $"The chart path '{path}' is a folder; give a file name.") { FilePath = path };
        }
    }

    /// <summary>
    /// Draws the chart and writes it to <paramref name="path"/> (PNG or SVG by extension), through a temporary file
    /// beside it renamed into place, so a failure leaves no half-written image. Points with a non-finite y are left out.
    /// </summary>
    public void Save(string path, int width = DefaultWidth, int height = DefaultHeight)
    {
        CheckPath(path);
        var plot = new Plot();
        try
        {
            plot.Title(Title);
            plot.XLabel(XLabel);
            plot.YLabel(YLabel);
            var palette = new ScottPlot.Palettes.Category10();
            for (var i = 0; i < Series.Count; i++)
            {
                var series = Series[i];
                var points = series.X.Zip(series.Y).Where(p => double.IsFinite(p.First) && double.IsFinite(p.Second)).ToArray();
                var line = plot.Add.Scatter(points.Select(p => p.First).ToArray(), points.Select(p => p.Second).ToArray(), palette.GetColor(i));
                line.LegendText = series.Label;
                line.MarkerSize = 7;
                line.LineWidth = 2;
                if (series.RightAxis) line.Axes.YAxis = plot.Axes.Right;
            }
            if (IntegerX) plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericAutomatic { IntegerTicksOnly = true };
            if (Series.Any(s => s.RightAxis) && RightLabel is not null) plot.Axes.Right.Label.Text = RightLabel;
            if (Series.Count > 1) plot.ShowLegend(Alignment.UpperLeft);
            var full = Path.GetFullPath(path);
            var temporary = Path.Combine(Path.GetDirectoryName(full)!, $".{Path.GetFileName(full)}.{Environment.ProcessId}.tmp{Path.GetExtension(full)}");
            try
            {
                if (Path.GetExtension(full).Equals(".svg", StringComparison.OrdinalIgnoreCase)) plot.SaveSvg(temporary, width, height);
                else plot.SavePng(temporary, width, height);
                File.Move(temporary, full, overwrite: true);
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                throw new DareException(DareErrorId.ChartWriteFailed, DareErrorKind.WriteError, $"Could not write the chart '{full}': {ex.Message}", ex) { FilePath = full };
            }
            finally
            {
                File.Delete(temporary);
            }
        }
        finally
        {
            plot.Dispose();
        }
    }
}
