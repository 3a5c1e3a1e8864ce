namespace Dare.Engine.Merge;

/// <summary>
/// Multi-SLERP (mergekit's multislerp): the weighted spherical mean of two or more models. As mergekit computes it:
/// each vector over its norm + eps, their weighted mean m projected to the unit sphere, each unit vector's tangent at m,
/// the weighted tangent mapped back by the exponential map, scaled by the weighted mean of the norms. With a base the
/// vectors are task vectors and the base is added; without one, whole weights. normalize_weights (default true)
/// divides the weights by their sum. Two antipodal vectors fall back to the weighted sum; more are an error.
/// </summary>
internal sealed class MultiSlerpMethod : MergeMethod
{
    public static ParameterSpec NormalizeWeights { get; } = new("normalize_weights", ParameterKind.Boolean, ParameterScope.Merge,
        "Divide the weights by their sum (true, the default).")
    { CmdletName = "NormalizeWeights", Default = true };

    public static ParameterSpec Epsilon { get; } = new("eps", ParameterKind.Number, ParameterScope.Merge,
        "Added to each norm before dividing, and the smallest mean norm that still has a direction.")
    { CmdletName = "Epsilon", Default = 1e-8, Range = new NumberRange(0, false, 1, false) };

    public override string Name => "multislerp";
    public override string DisplayName => "MultiSlerp";
    public override IReadOnlyList<ParameterSpec> Parameters { get; } = new[] { CommonParameters.Weight, NormalizeWeights, Epsilon };
    public override bool TakesTransforms => false;

    public override IReadOnlyList<RecipeForm> RecipeForms { get; } = new[]
    {
        new RecipeForm("multislerp", "Weighted spherical mean of the models (or of their task vectors, with a base)")
            { HasLambda = false, NeedsBase = false, BaseIsOptional = true },
    };

    internal override void Validate(MergeOptions options, int inputCount) => Epsilon.Check(options.Setting(Epsilon.Key) ?? (double)Epsilon.Default!, "eps");

    internal override string Step(MergeOptions options) =>
        $"MergeMultiSlerp(weights={string.Join("/", options.Weights)}, normalize_weights={options.Flag(NormalizeWeights)}, eps={options.Setting(Epsilon.Key)}, whole_weights={options.WholeWeights})";

    internal override IDeviceMerge CreateDeviceMerge(MergeOptions? options, TensorMergeSetup setup) => DeviceGramMerge.Of(CreateTensorMerge(options, setup), setup);

    internal override ITensorMerge CreateTensorMerge(MergeOptions? options, TensorMergeSetup setup)
    {
        var weights = options!.Weights.Select(w => w.Resolve(setup.Position)).ToArray();
        if (options.Flag(NormalizeWeights))
        {
            var total = CommonParameters.WeightSum(weights.Select(w => (float)w).ToList(), setup.Position, normalize: true);
            weights = weights.Select(w => w / total).ToArray();
        }
        var eps = options.Setting(Epsilon.Key)?.Resolve(setup.Position) ?? (double)Epsilon.Default!;
        return new TensorMerge(setup, VectorSource.Inputs(weights.Length, options.WholeWeights), weights, eps);
    }

    private sealed class TensorMerge(TensorMergeSetup setup, VectorSource[] vectors, double[] weights, double eps)
        : GramTensorMerge(setup, vectors, VectorLayout.Whole)
    {
        protected override double[] Coefficients(double[,] gram)
        {
            var n = weights.Length;
            if (n == 1) return new[] { 1.0 };
            var norms = Enumerable.Range(0, n).Select(i => Math.Sqrt(gram[i, i])).ToArray();
            // Every vector zero (a tensor no model changed): their mean is zero too. mergekit stops here; Dare does not.
            if (norms.All(m => m == 0)) return new double[n];
            // The unit vectors and their weighted mean, as coefficients on the vectors.
            var mean = Enumerable.Range(0, n).Select(i => weights[i] / (norms[i] + eps)).ToArray();
            var meanNorm = Math.Sqrt(Math.Max(0, Quadratic(gram, mean, mean)));
            if (meanNorm < eps)
            {
                if (n == 2) return new[] { weights[0], weights[1] };
                throw new DareException(DareErrorId.SphericalMeanUndefined, DareErrorKind.InvalidData,
                    $"multislerp: the weighted mean of the unit vectors is zero at tensor '{Setup.TensorName}' (antipodal models whose weights balance out); change the weights.")
                { TensorName = Setup.TensorName };
            }
            var direction = mean.Select(c => c / meanNorm).ToArray();
            // Tangent of each unit vector at the mean direction, weighted and summed: Σ wᵢ·(uᵢ − (uᵢ·m)·m).
            var tangent = new double[n];
            for (var i = 0; i < n; i++)
            {
                var unit = new double[n];
                unit[i] = 1 / (norms[i] + eps);
                var along = Quadratic(gram, unit, direction);
                for (var k = 0; k < n; k++) tangent[k] += weights[i] * (unit[k] - along * direction[k]);
            }
            var tangentNorm = Math.Sqrt(Math.Max(0, Quadratic(gram, tangent, tangent))) + eps;
            var averageNorm = Enumerable.Range(0, n).Sum(i => norms[i] * weights[i]);
            return Enumerable.Range(0, n)
                .Select(k => (direction[k] * Math.Cos(tangentNorm) + tangent[k] * (Math.Sin(tangentNorm) / tangentNorm)) * averageNorm).ToArray();
        }
    }

    /// <summary>(Σ aₖvₖ)·(Σ bₗvₗ) from the Gram matrix.</summary>
    internal static double Quadratic(double[,] gram, double[] a, double[] b)
    {
        var sum = 0.0;
        for (var k = 0; k < a.Length; k++)
        {
            for (var l = 0; l < b.Length; l++) sum += a[k] * gram[k, l] * b[l];
        }
        return sum;
    }
}
