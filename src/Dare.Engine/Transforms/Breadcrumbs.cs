using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Dare.Engine.Merge;

/// <summary>
/// Model Breadcrumbs' pruning of one task vector (mergekit's magnitude_outliers): of a tensor's N entries the
/// ⌊γ·N⌋ largest magnitudes (outliers) and the N − ⌊density·N⌋ − ⌊γ·N⌋ smallest are dropped, no rescale.
/// </summary>
public sealed record BreadcrumbsOptions(TensorParameter Density, TensorParameter Gamma)
{
    public void Check()
    {
        BreadcrumbsParameters.Density.Check(Density, "Density");
        BreadcrumbsParameters.Gamma.Check(Gamma, "Gamma");
    }

    internal string Step => $"BreadcrumbsPrune(density={Density}, gamma={Gamma})";
}

/// <summary>The parameters of the breadcrumbs transform (Invoke-BreadcrumbsPrune; density and gamma under breadcrumbs, breadcrumbs_ties), declared once.</summary>
public static class BreadcrumbsParameters
{
    public static ParameterSpec Density { get; } = new("density", ParameterKind.Number, ParameterScope.Either,
        "Fraction of each tensor's entries kept after the outliers and the smallest magnitudes are dropped; 1 keeps all.")
    { CmdletName = "Density", VariesByTensor = true, Range = NumberRange.Fraction, Default = 1.0 };

    public static ParameterSpec Gamma { get; } = new("gamma", ParameterKind.Number, ParameterScope.Either,
        "Fraction γ of each tensor's entries dropped from the top by magnitude (outliers).")
    { CmdletName = "Gamma", VariesByTensor = true, Range = new NumberRange(0, true, 1, false), Default = 0.01 };

    /// <summary>The keys breadcrumbs adds to density.</summary>
    public static IReadOnlyList<ParameterSpec> All { get; } = new[] { Gamma };
}

/// <summary>
/// Breadcrumbs for one tensor of one input. Two exact top-k selections by magnitude (<see cref="MagnitudeSelection"/>,
/// two passes over the chunks before anything is combined) give the outliers (top ⌊γN⌋) and the kept band's lower
/// edge (top ⌊γN⌋ + ⌊density·N⌋); equal magnitudes are taken in element order, so the band is exact and replayable.
/// </summary>
internal sealed unsafe class BreadcrumbsPrune
{
    private readonly MagnitudeSelection _outliers, _band;
    private long _outlierTies, _bandTies;
    private bool _counting = true;

    private BreadcrumbsPrune(BreadcrumbsOptions options, TensorPosition position, long elementCount)
    {
        var density = options.Density.Resolve(position);
        var gamma = options.Gamma.Resolve(position);
        ElementCount = elementCount;
        // mergekit: target = ⌊density·N⌋, top = ⌊γ·N⌋, bottom = N − target − top; a negative bottom takes from the top.
        var target = (long)Math.Floor(density * elementCount);
        var top = (long)Math.Floor(gamma * elementCount);
        var bottom = elementCount - target - top;
        if (bottom < 0)
        {
            top += bottom;
            bottom = 0;
        }
        KeepsAll = density >= 1;
        _outliers = new MagnitudeSelection(KeepsAll ? 0 : top, elementCount);
        _band = new MagnitudeSelection(KeepsAll ? elementCount : elementCount - bottom, elementCount);
        TargetDropped = KeepsAll ? 0 : elementCount - target;
    }

    public static BreadcrumbsPrune? For(BreadcrumbsOptions? options, TensorPosition position, long elementCount) =>
        options is null ? null : new BreadcrumbsPrune(options, position, elementCount);

    public long ElementCount { get; }
    public bool KeepsAll { get; }
    public double TargetDropped { get; }
    public long Dropped { get; private set; }

    /// <summary>How many entries the outlier selection and the band take (top-k by magnitude): what the device backend selects.</summary>
    internal (long Outliers, long Band) KeepCounts => (_outliers.KeepCount, _band.KeepCount);

    /// <summary>Records what the device backend dropped (the first pass that prunes).</summary>
    public void CountDropped(long dropped) => Dropped += dropped;

    /// <summary>Whether the thresholds still need the counting passes.</summary>
    public bool NeedsPasses => !Ready && (_outliers.NeedsPasses || _band.NeedsPasses);

    /// <summary>Whether the thresholds are known and <see cref="Apply"/> may run.</summary>
    public bool Ready { get; private set; }

    public void AddCoarse(float* data, long count)
    {
        if (_outliers.NeedsPasses) _outliers.AddCoarse(data, count);
        if (_band.NeedsPasses) _band.AddCoarse(data, count);
    }

    public void FinishCoarse()
    {
        if (_outliers.NeedsPasses) _outliers.FinishCoarse();
        if (_band.NeedsPasses) _band.FinishCoarse();
    }

    public void AddFine(float* data, long count)
    {
        if (_outliers.NeedsPasses) _outliers.AddFine(data, count);
        if (_band.NeedsPasses) _band.AddFine(data, count);
    }

    public void FinishFine()
    {
        if (_outliers.NeedsPasses) _outliers.FinishFine();
        if (_band.NeedsPasses) _band.FinishFine();
        Ready = true;
    }

    /// <summary>Marks the thresholds known without passes (nothing or everything selected).</summary>
    public void SkipPasses() => Ready = true;

    /// <summary>
    /// Keeps only the band of elements [first, first + count) of the tensor, in place. Chunks come in element order in
    /// each pass (the tie counts restart at element 0); drops are counted in the first pass that applies it.
    /// </summary>
    public void Apply(float* data, long first, long count)
    {
        if (KeepsAll) return;
        if (first == 0)
        {
            _outlierTies = Ties(_outliers);
            _bandTies = Ties(_band);
        }
        var (outlierBits, bandBits) = (_outliers.KeepBits, _band.KeepBits);
        var ranges = Partition.Ranges(count);
        // Equal magnitudes are taken in element order, so each range starts with the ties the ranges before it leave.
        // Only a budget that may run out inside this chunk needs them counted first.
        var starts = new (long Outlier, long Band)[ranges.Length];
        var partial = ranges.Length > 1 && (RunsOutWithin(_outlierTies, count) || RunsOutWithin(_bandTies, count));
        var equal = new (long Outlier, long Band)[ranges.Length];
        if (partial) Partition.Run(count, (r, start, end) => equal[r] = CountEqual(data, start, end, outlierBits, bandBits));
        var (outlierLeft, bandLeft) = (_outlierTies, _bandTies);
        for (var r = 0; r < ranges.Length; r++)
        {
            starts[r] = (outlierLeft, bandLeft);
            if (partial) (outlierLeft, bandLeft) = (Math.Max(0, outlierLeft - equal[r].Outlier), Math.Max(0, bandLeft - equal[r].Band));
        }
        var dropped = new long[ranges.Length];
        Partition.Run(count, (r, start, end) =>
        {
            var (outlierTies, bandTies) = starts[r];
            dropped[r] = ApplyRange(data, start, end, outlierBits, ref outlierTies, bandBits, ref bandTies, out var seen);
            equal[r] = seen;
        });
        (_outlierTies, _bandTies) = (Math.Max(0, _outlierTies - equal.Sum(e => e.Outlier)), Math.Max(0, _bandTies - equal.Sum(e => e.Band)));
        if (!_counting) return;
        Dropped += dropped.Sum();
        if (first + count >= ElementCount) _counting = false;
    }

    private static bool RunsOutWithin(long ties, long count) => ties > 0 && ties < count;

    /// <summary>A selection's ties as a budget: all of them when it keeps all (its threshold is 0), none when it keeps none.</summary>
    private static long Ties(MagnitudeSelection selection) => selection.KeepAll ? long.MaxValue / 4 : selection.KeepNone ? 0 : selection.TiesToKeep;

    /// <summary>Elements of [start, end) whose magnitude equals each threshold.</summary>
    private static (long Outlier, long Band) CountEqual(float* data, long start, long end, uint outlierBits, uint bandBits)
    {
        var bits = (uint*)data;
        long outliers = 0, band = 0;
        for (var i = start; i < end; i++)
        {
            var magnitude = bits[i] & 0x7FFFFFFF;
            outliers += magnitude == outlierBits ? 1 : 0;
            band += magnitude == bandBits ? 1 : 0;
        }
        return (outliers, band);
    }

    /// <summary>
    /// Zeroes the elements of [start, end) outside the band, 8 at a time; 8 with a magnitude equal to a threshold go
    /// one by one, taking ties while they last. Returns how many it zeroed, and in <paramref name="equal"/> how many
    /// equalled each threshold.
    /// </summary>
    private static long ApplyRange(float* data, long start, long end, uint outlierBits, ref long outlierTies, uint bandBits, ref long bandTies, out (long Outlier, long Band) equal)
    {
        var bits = (uint*)data;
        long dropped = 0;
        equal = (0, 0);
        var (outlierVector, bandVector, magnitudeMask) = (Vector256.Create(outlierBits), Vector256.Create(bandBits), Vector256.Create(0x7FFFFFFFu));
        var i = start;
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i <= end - 8; i += 8)
            {
                var magnitude = Vector256.Load(bits + i) & magnitudeMask;
                if ((Vector256.Equals(magnitude, outlierVector) | Vector256.Equals(magnitude, bandVector)) != Vector256<uint>.Zero)
                {
                    for (var j = i; j < i + 8; j++) dropped += ApplyOne(bits, j, outlierBits, ref outlierTies, bandBits, ref bandTies, ref equal);
                    continue;
                }
                var keep = Vector256.GreaterThan(magnitude, bandVector) & ~Vector256.GreaterThan(magnitude, outlierVector);
                (Vector256.Load(bits + i) & keep).Store(bits + i);
                dropped += 8 - BitOperations.PopCount(keep.ExtractMostSignificantBits());
            }
        }
        for (; i < end; i++) dropped += ApplyOne(bits, i, outlierBits, ref outlierTies, bandBits, ref bandTies, ref equal);
        return dropped;
    }

    /// <summary>One element: kept when the band takes it and the outliers do not (each above its threshold, or equal while its ties last).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int ApplyOne(uint* bits, long i, uint outlierBits, ref long outlierTies, uint bandBits, ref long bandTies, ref (long Outlier, long Band) equal)
    {
        var magnitude = bits[i] & 0x7FFFFFFF;
        if (magnitude == outlierBits) equal.Outlier++;
        if (magnitude == bandBits) equal.Band++;
        // Both selections see every element, so each one's ties are counted in element order.
        var outlier = Selected(magnitude, outlierBits, ref outlierTies);
        var inBand = Selected(magnitude, bandBits, ref bandTies);
        if (inBand && !outlier) return 0;
        bits[i] = 0;
        return 1;
    }

    /// <summary>Whether a top-k selection takes an element: above its threshold, or equal to it while its ties last.</summary>
    private static bool Selected(uint magnitude, uint keepBits, ref long ties)
    {
        if (magnitude > keepBits) return true;
        if (magnitude < keepBits || ties <= 0) return false;
        ties--;
        return true;
    }
}
