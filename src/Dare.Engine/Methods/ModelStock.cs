namespace Dare.Engine.Merge;

/// <summary>
/// Model Stock (mergekit's model_stock): base + t·(mean of the task vectors), with t = N·cos θ / (1 + (N − 1)·cos θ)
/// from the mean over pairs of the cosine between task vectors (each δᵢ·δⱼ / max(|δᵢ|·|δⱼ|, 1e-6), clamped to
/// [−1, 1]). filter_wise takes one cosine and t per row of the last dimension instead of one per tensor. Two or more
/// models besides the base.
/// </summary>
internal sealed class ModelStockMethod : MergeMethod
{
    public static ParameterSpec FilterWise { get; } = new("filter_wise", ParameterKind.Boolean, ParameterScope.Merge,
        "One t per row (filter) instead of one per tensor (false, the default).")
    { CmdletName = "FilterWise", Default = false };

    public override string Name => "model_stock";
    public override string DisplayName => "ModelStock";
    public override IReadOnlyList<ParameterSpec> Parameters { get; } = new[] { FilterWise };
    public override bool TakesTransforms => false;

    public override IReadOnlyList<RecipeForm> RecipeForms { get; } = new[]
    {
        new RecipeForm("model_stock", "base + t·(mean task vector), t from the task vectors' mean pairwise cosine") { HasLambda = false },
    };

    internal override void Validate(MergeOptions options, int inputCount)
    {
        if (inputCount < 2)
        {
            throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument,
                $"model_stock needs at least two models besides the base (it measures the angle between their task vectors), not {inputCount}.");
        }
    }

    internal override string Step(MergeOptions options) => $"MergeModelStock(filter_wise={options.Flag(FilterWise)})";

    internal override IDeviceMerge CreateDeviceMerge(MergeOptions? options, TensorMergeSetup setup) => DeviceGramMerge.Of(CreateTensorMerge(options, setup), setup);

    internal override ITensorMerge CreateTensorMerge(MergeOptions? options, TensorMergeSetup setup) =>
        new TensorMerge(setup, VectorSource.Inputs(options!.Weights.Count, wholeWeights: false), options.Flag(FilterWise) ? VectorLayout.LastDimension : VectorLayout.Whole);

    private sealed class TensorMerge(TensorMergeSetup setup, VectorSource[] vectors, VectorLayout layout) : GramTensorMerge(setup, vectors, layout)
    {
        protected override double[] Coefficients(double[,] gram) => Stock(gram);
    }

    /// <summary>The coefficient t/N of each task vector.</summary>
    internal static double[] Stock(double[,] gram)
    {
        var n = gram.GetLength(0);
        var cosines = new List<double>();
        for (var i = 0; i < n; i++)
        {
            for (var j = i + 1; j < n; j++)
            {
                var norms = Math.Sqrt(gram[i, i]) * Math.Sqrt(gram[j, j]);
                cosines.Add(Math.Clamp(gram[i, j] / Math.Max(norms, 1e-6), -1, 1));
            }
        }
        var cosine = cosines.Average();
        var t = n * cosine / (1 + (n - 1) * cosine);
        return Enumerable.Repeat(t / n, n).ToArray();
    }
}
