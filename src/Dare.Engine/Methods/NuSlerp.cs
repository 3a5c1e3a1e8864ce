namespace Dare.Engine.Merge;

/// <summary>
/// NuSLERP (mergekit's nuslerp): SLERP of two models at t = w₂/(w₁ + w₂) (0.5 when |w₁ + w₂| &lt; 1e-6). With a
/// base it interpolates the task vectors and adds the base; without one, the whole weights. nuslerp_flatten (default
/// true) treats each tensor as one vector; otherwise each row of the last dimension is one, or with nuslerp_row_wise
/// each column along the first. Norms are clamped to at least 1e-7, and |sin θ| &lt; 1e-8 falls back to a lerp.
/// </summary>
internal sealed class NuSlerpMethod : MergeMethod
{
    public static ParameterSpec Flatten { get; } = new("nuslerp_flatten", ParameterKind.Boolean, ParameterScope.Merge,
        "Treat each tensor as one vector (true, the default); false interpolates row by row.")
    { CmdletName = "Flatten", Default = true };

    public static ParameterSpec RowWise { get; } = new("nuslerp_row_wise", ParameterKind.Boolean, ParameterScope.Merge,
        "Without flatten: interpolate the columns along the first dimension (true) instead of the rows of the last (false, the default).")
    { CmdletName = "RowWise", Default = false };

    public override string Name => "nuslerp";
    public override string DisplayName => "NuSlerp";
    public override IReadOnlyList<ParameterSpec> Parameters { get; } = new[] { CommonParameters.Weight, Flatten, RowWise };
    public override bool TakesTransforms => false;

    public override IReadOnlyList<RecipeForm> RecipeForms { get; } = new[]
    {
        new RecipeForm("nuslerp", "SLERP of two models (or of their task vectors, with a base) at t = w₂/(w₁ + w₂)")
            { HasLambda = false, NeedsBase = false, BaseIsOptional = true },
    };

    internal override void Validate(MergeOptions options, int inputCount)
    {
        if (inputCount != 2)
        {
            throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument,
                $"nuslerp interpolates exactly two models{(options.WholeWeights ? "" : " besides the base")}, not {inputCount}.");
        }
    }

    internal override string Step(MergeOptions options) =>
        $"MergeNuSlerp(weights={string.Join("/", options.Weights)}, flatten={options.Flag(Flatten)}, row_wise={options.Flag(RowWise)}, whole_weights={options.WholeWeights})";

    internal override IDeviceMerge CreateDeviceMerge(MergeOptions? options, TensorMergeSetup setup) => DeviceGramMerge.Of(CreateTensorMerge(options, setup), setup);

    internal override ITensorMerge CreateTensorMerge(MergeOptions? options, TensorMergeSetup setup)
    {
        var weights = options!.Weights.Select(w => w.Resolve(setup.Position)).ToArray();
        var sum = weights[0] + weights[1];
        var t = Math.Abs(sum) < 1e-6 ? 0.5 : weights[1] / sum;
        var layout = options.Flag(Flatten) ? VectorLayout.Whole : options.Flag(RowWise) ? VectorLayout.FirstDimension : VectorLayout.LastDimension;
        return new TensorMerge(setup, VectorSource.Inputs(2, options.WholeWeights), layout, t);
    }

    private sealed class TensorMerge(TensorMergeSetup setup, VectorSource[] vectors, VectorLayout layout, double t) : GramTensorMerge(setup, vectors, layout)
    {
        protected override double[] Coefficients(double[,] gram)
        {
            var cosine = gram[0, 1] / (Math.Max(Math.Sqrt(gram[0, 0]), 1e-7) * Math.Max(Math.Sqrt(gram[1, 1]), 1e-7));
            var theta = Math.Acos(Math.Clamp(cosine, -1, 1));
            var sine = Math.Sin(theta);
            if (Math.Abs(sine) < 1e-8) return new[] { 1 - t, t };
            return new[] { Math.Sin((1 - t) * theta) / sine, Math.Sin(t * theta) / sine };
        }
    }
}
