using System.Diagnostics;
using System.Globalization;

namespace Dare.Engine.Merge;

/// <summary>The steps of <see cref="MergeExecutor.Export"/> that <see cref="PhaseProfile"/> times.</summary>
internal enum Phase
{
    /// <summary>Positioned reads of tensor data into memory (allocation included).</summary>
    Read,
    /// <summary>Stored dtype (bf16/f16) → float32.</summary>
    ToFloat32,
    /// <summary>fine-tuned − base (torch, for inputs the fused path does not take).</summary>
    Delta,
    /// <summary>bfloat16 fine-tuned → float32, − base and the DARE mask, fused in one pass (for linear merges, the whole merge).</summary>
    DeltaFused,
    /// <summary>DARE drop and rescale (and the L1 sums).</summary>
    Mask,
    /// <summary>TIES thresholds: sampling δ (outside the fused pass), the bracket pass, or the exact coarse and fine passes.</summary>
    Select,
    /// <summary>TIES: dropping the ties beyond the threshold's count (a full trim for L1-rescaled inputs); the rest is in Combine.</summary>
    Trim,
    /// <summary>Linear sum or TIES trim, sign election and disjoint mean; for bfloat16 and float32 output also base + δ and the conversion.</summary>
    Combine,
    /// <summary>base + δ and the conversion to other output dtypes (torch).</summary>
    ToOutput,
    /// <summary>Waiting for the background write of the previous chunk (and synchronous appends); see BackgroundAppender.</summary>
    Write,
    /// <summary>Commit: last fsync, index, side files, move into place.</summary>
    Commit,
}

/// <summary>
/// Opt-in stopwatch breakdown of an export (environment variable DARE_PROFILE=1): wall time per phase on the
/// calling thread (a parallel phase counts its elapsed time, not its CPU time). Reported through the observer's
/// Verbose channel, one "profile:" line per phase, so a missed speed target can be explained.
/// </summary>
internal sealed class PhaseProfile
{
    private static readonly Phase[] Phases = Enum.GetValues<Phase>();
    private readonly long[] _ticks = new long[Phases.Length];
    private readonly long[] _calls = new long[Phases.Length];
    private readonly SortedDictionary<string, int> _selectionRoutes = new(StringComparer.Ordinal);

    /// <summary>A profile when DARE_PROFILE is 1 or true, else null (and every timing is a no-op).</summary>
    public static PhaseProfile? FromEnvironment() =>
        Environment.GetEnvironmentVariable("DARE_PROFILE") is { } value && (value == "1" || value.Equals("true", StringComparison.OrdinalIgnoreCase))
            ? new PhaseProfile()
            : null;

    /// <summary>Times the enclosing block: <c>using (PhaseProfile.Time(profile, Phase.Read)) { ... }</c>.</summary>
    public static Timing Time(PhaseProfile? profile, Phase phase) => new(profile, phase);

    public readonly struct Timing : IDisposable
    {
        private readonly PhaseProfile? _profile;
        private readonly Phase _phase;
        private readonly long _start;

        public Timing(PhaseProfile? profile, Phase phase)
        {
            _profile = profile;
            _phase = phase;
            _start = profile is null ? 0 : Stopwatch.GetTimestamp();
        }

        public void Dispose()
        {
            if (_profile is null) return;
            _profile._ticks[(int)_phase] += Stopwatch.GetTimestamp() - _start;
            _profile._calls[(int)_phase]++;
        }
    }

    /// <summary>Counts how one TIES threshold was found (e.g. "sample", "bracket", "exact").</summary>
    public static void CountSelection(PhaseProfile? profile, string route)
    {
        if (profile is null) return;
        profile._selectionRoutes[route] = profile._selectionRoutes.GetValueOrDefault(route) + 1;
    }

    /// <summary>One line per phase, then "other" (the rest of <paramref name="total"/>), the total, and how TIES thresholds were found.</summary>
    public IEnumerable<string> Report(TimeSpan total)
    {
        var culture = CultureInfo.InvariantCulture;
        var totalSeconds = Math.Max(total.TotalSeconds, 1e-9);
        double timed = 0;
        foreach (var phase in Phases)
        {
            var seconds = _ticks[(int)phase] / (double)Stopwatch.Frequency;
            timed += seconds;
            yield return string.Format(culture, "profile: {0,-10} {1,8:0.000} s {2,5:0.0}% ({3} calls)", phase, seconds, 100 * seconds / totalSeconds, _calls[(int)phase]);
        }
        var other = Math.Max(0, totalSeconds - timed);
        yield return string.Format(culture, "profile: {0,-10} {1,8:0.000} s {2,5:0.0}% (planning, scopes and frees, progress)", "Other", other, 100 * other / totalSeconds);
        yield return string.Format(culture, "profile: {0,-10} {1,8:0.000} s", "Total", totalSeconds);
        if (_selectionRoutes.Count > 0)
        {
            yield return "profile: thresholds " + string.Join(", ", _selectionRoutes.Select(r => $"{r.Value} by {r.Key}"));
        }
    }
}
