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
            _outlierTies = _outliers.TiesToKeep;
            _bandTies = _band.TiesToKeep;
        }
        var bits = (uint*)data;
        var (outlierBits, bandBits) = (_outliers.KeepBits, _band.KeepBits);
        long dropped = 0;
        for (long i = 0; i < count; i++)
        {
            var magnitude = bits[i] & 0x7FFFFFFF;
            // Both selections see every element, so each one's ties are counted in element order.
            var outlier = Selected(magnitude, outlierBits, _outliers.NeedsPasses, ref _outlierTies);
            var inBand = Selected(magnitude, bandBits, _band.NeedsPasses, ref _bandTies);
            if (inBand && !outlier) continue;
            data[i] = 0f;
            dropped++;
        }
        if (!_counting) return;
        Dropped += dropped;
        if (first + count >= ElementCount) _counting = false;
    }

    /// <summary>Whether a top-k selection takes an element: above its threshold, or equal to it while its ties last.</summary>
    private static bool Selected(uint magnitude, uint keepBits, bool counted, ref long ties)
    {
        if (!counted) return keepBits == 0; // KeepAll selects everything, KeepNone nothing
        if (magnitude > keepBits) return true;
        if (magnitude < keepBits || ties <= 0) return false;
        ties--;
        return true;
    }
}
