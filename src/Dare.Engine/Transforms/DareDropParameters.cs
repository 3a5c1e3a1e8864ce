namespace Dare.Engine.Merge;

/// <summary>The parameters of the DARE transform (Invoke-DareDrop; drop_rate and friends in recipes), declared once.</summary>
public static class DareDropParameters
{
    public static ParameterSpec DropRate { get; } = new("drop_rate", ParameterKind.Number, ParameterScope.Either,
        "DARE's probability p of dropping each delta entry (Dare extension; the dare_* methods also take density = 1 − p).")
    { Label = "drop rate", CmdletName = "DropRate", VariesByTensor = true, Range = NumberRange.Probability, Default = 0.0 };

    public static ParameterSpec Rescale { get; } = new("rescale", ParameterKind.Choice, ParameterScope.Either,
        "true (× 1/(1 − p), the DARE paper's rescale), l1 (keep the L1 norm, as current mergekit does), q (DAREx-q: × 1/q, q from rescale_q) or false.")
    { CmdletName = "Rescale", Default = DareRescale.InverseKeep };

    public static ParameterSpec RescaleQ { get; } = new("rescale_q", ParameterKind.Number, ParameterScope.Either,
        "DAREx-q's q with rescale: q: survivors × 1/q instead of 1/(1 − p); q > 1 − p tempers the rescale at high drop rates (Dare extension).")
    { CmdletName = "RescaleQ", Range = NumberRange.Fraction };

    public static ParameterSpec RandomSeed { get; } = new("random_seed", ParameterKind.Integer, ParameterScope.Model,
        "This model's DARE seed (Dare extension; also a top-level key for every model).")
    { CmdletName = "Seed" };

    public static ParameterSpec MaskStream { get; } = new("mask_stream", ParameterKind.Integer, ParameterScope.Model,
        "This model's DARE mask stream (Dare extension; default: its index among the merged models).")
    { Range = new NumberRange(0, true, int.MaxValue, true) };

    /// <summary>density under the dare_* names: DARE's keep fraction, drop rate = 1 − density.</summary>
    public static ParameterSpec KeepFraction { get; } = new("density", ParameterKind.Number, ParameterScope.Either,
        "DARE's keep fraction (drop rate = 1 − density).")
    { VariesByTensor = true, Range = NumberRange.Fraction, Default = 1.0 };

    public static IReadOnlyList<ParameterSpec> All { get; } = new[] { DropRate, Rescale, RescaleQ, RandomSeed, MaskStream };

    /// <summary>rescale q needs its q, and a q needs rescale q.</summary>
    public static void CheckRescale(DareRescale rescale, double q)
    {
        if (rescale == DareRescale.Q && q == 0)
        {
            throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument, "The Q rescale (DAREx-q) needs its q: give -RescaleQ (rescale_q in recipes), 0 < q <= 1.");
        }
        if (rescale == DareRescale.Q) RescaleQ.Check(q, "RescaleQ");
        else if (q != 0)
        {
            throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument, $"A q ({q.ToString("R", System.Globalization.CultureInfo.InvariantCulture)}) is given but the rescale is {rescale}; use the Q rescale (rescale: q) with it, or drop the q.");
        }
    }

    /// <summary>The rescale as plan steps show it: InverseKeep, L1, None, or Q(0.2).</summary>
    public static string RescaleText(DareRescale rescale, double q) =>
        rescale == DareRescale.Q ? $"Q({q.ToString("R", System.Globalization.CultureInfo.InvariantCulture)})" : rescale.ToString();
}
