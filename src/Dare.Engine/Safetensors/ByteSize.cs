using System.Globalization;
using System.Text.RegularExpressions;

namespace Dare.Engine.Safetensors;

/// <summary>Parses sizes such as "5GB", "500MB", "1.5GiB" or a plain byte count (KB/MB/GB decimal, KiB/MiB/GiB binary, as Hugging Face does).</summary>
public static partial class ByteSize
{
    [GeneratedRegex(@"^\s*(?<n>\d+(\.\d+)?)\s*(?<unit>[KMGT]i?B|B)?\s*$", RegexOptions.IgnoreCase)]
    private static partial Regex Pattern();

    public static long Parse(string text)
    {
        var match = Pattern().Match(text ?? "");
        if (!match.Success)
        {
            throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument,
                $"'{text}' is not a size. Use a byte count or a number with KB, MB, GB (decimal) or KiB, MiB, GiB (binary), e.g. 5GB.");
        }
        var number = double.Parse(match.Groups["n"].Value, CultureInfo.InvariantCulture);
        var multiplier = match.Groups["unit"].Value.ToUpperInvariant() switch
        {
            "" or "B" => 1d,
            "KB" => 1e3, "MB" => 1e6, "GB" => 1e9, "TB" => 1e12,
            "KIB" => 1024d, "MIB" => 1024d * 1024, "GIB" => 1024d * 1024 * 1024, "TIB" => 1024d * 1024 * 1024 * 1024,
            _ => throw new InvalidOperationException(),
        };
        var bytes = number * multiplier;
        if (bytes < 1 || bytes > long.MaxValue / 2)
        {
            throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument, $"Size '{text}' is out of range.");
        }
        return (long)bytes;
    }

    public static string Format(long bytes) => bytes switch
    {
        >= 1_000_000_000 => $"{bytes / 1e9:0.##} GB",
        >= 1_000_000 => $"{bytes / 1e6:0.##} MB",
        >= 1_000 => $"{bytes / 1e3:0.##} KB",
        _ => $"{bytes} B",
    };
}
