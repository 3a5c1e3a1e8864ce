namespace Dare.Engine.Merge;

/// <summary>The parameters of the DARE transform (Invoke-DareDrop; drop_rate and friends in recipes), declared once.</summary>
public static class DareDropParameters
{
    public static ParameterSpec DropRate { get; } = new("drop_rate", ParameterKind.Number, ParameterScope.Either,
        "DARE's probability p of dropping each delta entry (Dare extension; the dare_* methods also take density = 1 − p).")
    { Label = "drop rate", CmdletName = "DropRate", VariesByTensor = true, Range = NumberRange.Probability, Default = 0.0 };

    public static ParameterSpec Rescale { get; } = new("rescale", ParameterKind.Choice, ParameterScope.Either,
        "true (× 1/(1 − p), the DARE paper's rescale), l1 (keep the L1 norm, as current mergekit does) or false.")
    { CmdletName = "Rescale", Default = DareRescale.InverseKeep };

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

    public static IReadOnlyList<ParameterSpec> All { get; } = new[] { DropRate, Rescale, RandomSeed, MaskStream };
}
