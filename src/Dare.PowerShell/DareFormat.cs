using System.Globalization;

namespace Dare.PowerShell;

/// <summary>Short human-readable renderings used by the table views in Dare.Format.ps1xml.</summary>
public static class DareFormat
{
    /// <summary>A count in K/M/B with three significant digits: 6.74B, 160M, 12.3K, 950.</summary>
    public static string Count(long value)
    {
        var magnitude = Math.Abs((double)value);
        var (scaled, suffix) = magnitude switch
        {
            >= 1e12 => (value / 1e12, "T"),
            >= 1e9 => (value / 1e9, "B"),
            >= 1e6 => (value / 1e6, "M"),
            >= 1e3 => (value / 1e3, "K"),
            _ => (value, ""),
        };
        return suffix.Length == 0 ? value.ToString(CultureInfo.CurrentCulture) : ThreeDigits(scaled) + suffix;
    }

    /// <summary>A byte count in decimal units with three significant digits: 13.5 GB, 246 KB, 512 B.</summary>
    public static string Bytes(long value)
    {
        var (scaled, unit) = Math.Abs((double)value) switch
        {
            >= 1e12 => (value / 1e12, "TB"),
            >= 1e9 => (value / 1e9, "GB"),
            >= 1e6 => (value / 1e6, "MB"),
            >= 1e3 => (value / 1e3, "KB"),
            _ => (value, "B"),
        };
        return (unit == "B" ? value.ToString(CultureInfo.CurrentCulture) : ThreeDigits(scaled)) + " " + unit;
    }

    /// <summary>A fraction as a percentage with one decimal (90.0%); empty for null.</summary>
    public static string Percent(double? fraction) =>
        fraction is { } f ? (f * 100).ToString("0.0", CultureInfo.CurrentCulture) + "%" : "";

    /// <summary>A small magnitude in short scientific form: 1.23e-3 (0 stays 0).</summary>
    public static string Scientific(double value) =>
        value == 0 ? "0" : double.IsFinite(value) ? value.ToString("0.00e+0", CultureInfo.CurrentCulture) : value.ToString(CultureInfo.CurrentCulture);

    private static string ThreeDigits(double value)
    {
        var magnitude = Math.Abs(value);
        var format = magnitude >= 99.95 ? "0" : magnitude >= 9.995 ? "0.#" : "0.##";
        return value.ToString(format, CultureInfo.CurrentCulture);
    }
}
