namespace Dare.Engine.Merge;

/// <summary>Parameters several methods share, declared once.</summary>
internal static class CommonParameters
{
    public static ParameterSpec Weight { get; } = new("weight", ParameterKind.Number, ParameterScope.Either,
        "Each model's weight in the combine.")
    { CmdletName = "Weight", VariesByTensor = true, CmdletDefault = 1.0 };

    public static ParameterSpec Normalize { get; } = new("normalize", ParameterKind.Boolean, ParameterScope.Merge,
        "Divide by the sum of the weights (of the agreeing models, for TIES); the default depends on the recipe name.")
    { CmdletName = "Normalize", CmdletDefault = true };

    public static ParameterSpec Lambda { get; } = new("lambda", ParameterKind.Number, ParameterScope.Merge,
        "Scale λ of the merged delta before it is added to the base.")
    { CmdletName = "Lambda", Default = 1.0 };

    /// <summary>normalize divides by Σ wᵢ at each tensor: a zero sum is an error naming the tensor, not a silent base or NaN.</summary>
    public static double WeightSum(IReadOnlyList<float> weights, TensorPosition position, bool normalize)
    {
        var total = weights.Sum(w => (double)w);
        if (normalize && total == 0)
        {
            throw new DareException(DareErrorId.WeightSumZero, DareErrorKind.InvalidArgument,
                $"The weights sum to 0 at tensor '{position.Name}', so they cannot be normalized; give a non-zero weight or use -Normalize:$false (normalize: false).")
            { TensorName = position.Name };
        }
        return total;
    }
}
