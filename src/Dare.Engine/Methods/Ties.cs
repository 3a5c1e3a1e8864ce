using static TorchSharp.torch;

namespace Dare.Engine.Merge;

/// <summary>
/// TIES: each input trimmed to its largest-magnitude fraction k (density), a sign elected per entry (of Σ wᵢtᵢ, or
/// of #positive − #negative), the agreeing entries' weighted sum (over their Σ wᵢ when normalizing), times λ.
/// Recipes name it ties and dare_ties (DARE with drop rate 1 − density first, no trim).
/// </summary>
internal sealed class TiesMethod : MergeMethod
{
    public static ParameterSpec Density { get; } = new("density", ParameterKind.Number, ParameterScope.Either,
        "Fraction k of each tensor's entries each model keeps (largest magnitudes); 1 keeps all (no trim).")
    { Label = "keep ratio (density)", CmdletName = "KeepRatio", VariesByTensor = true, Range = NumberRange.Fraction, Default = 1.0, CmdletDefault = 0.2 };

    public static ParameterSpec SignMethod { get; } = new("sign_method", ParameterKind.Choice, ParameterScope.Merge,
        "sum (the sign of Σ wᵢtᵢ, the default) or count (of #positive − #negative); a Dare extension.")
    { CmdletName = "SignMethod", Default = Merge.SignMethod.Sum };

    public override string Name => "ties";
    public override string DisplayName => "Ties";

    public override IReadOnlyList<ParameterSpec> Parameters { get; } =
        new[] { CommonParameters.Weight, Density, CommonParameters.Normalize, CommonParameters.Lambda, SignMethod };

    public override IReadOnlyList<RecipeForm> RecipeForms { get; } = new[]
    {
        new RecipeForm("ties", "Magnitude trim to density, sign election, disjoint mean") { NormalizeByDefault = true },
        new RecipeForm("dare_ties", "DARE with drop rate 1 − density, then sign election without trimming") { DensityIsDareKeep = true },
        new RecipeForm("della", "DELLA: MagPrune keeps each entry with a probability by its magnitude rank in its row, rescales, then sign election without trimming")
        { NormalizeByDefault = true, DensityIsDellaKeep = true },
        new RecipeForm("breadcrumbs_ties", "Model Breadcrumbs: drop the γ largest and the smallest magnitudes to keep density, then sign election without trimming")
        { DensityIsBreadcrumbsKeep = true },
    };

    internal override void Validate(MergeOptions options, int inputCount)
    {
        if (options.KeepRatios is null || options.KeepRatios.Count != inputCount)
        {
            throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument, "TIES needs one keep ratio (density) per task vector.");
        }
        var invalid = options.KeepRatios.SelectMany(k => k.PossibleValues).Where(k => !(k > 0 && k <= 1)).ToList();
        if (invalid.Count > 0)
        {
            throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument, $"The keep ratio (density) must satisfy 0 < k <= 1, not {invalid[0]}.");
        }
    }

    internal override string StepDetail(MergeOptions options) =>
        $"keep={string.Join("/", options.KeepRatios!.Select(k => k.ToString()))}, sign={options.SignMethod}, ";

    internal override ITensorMerge CreateTensorMerge(MergeOptions? options, TensorMergeSetup setup) => new TiesTensorMerge(options!, setup);

    internal override IDeviceMerge CreateDeviceMerge(MergeOptions? options, TensorMergeSetup setup) => new DeviceTiesMerge(options!, setup);
}
