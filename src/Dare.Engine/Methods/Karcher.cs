namespace Dare.Engine.Merge;

/// <summary>
/// Karcher mean (mergekit's karcher): the Riemannian mean of the models' unit directions, found by up to max_iter
/// steps of gradient descent on the sphere (stopping when the step's norm is below tol), scaled by the mean of the
/// norms. Every model weighs 1/N; directions with norm at most tol are left out of the mean but count in the scale.
/// It always reads whole weights; mergekit adds the base_model to the models, and so does a recipe here.
/// </summary>
internal sealed class KarcherMethod : MergeMethod
{
    public static ParameterSpec MaxIterations { get; } = new("max_iter", ParameterKind.Integer, ParameterScope.Merge,
        "The most descent steps.")
    { CmdletName = "MaxIterations", Default = 10L, Range = new NumberRange(0, true, 100000, true) };

    public static ParameterSpec Tolerance { get; } = new("tol", ParameterKind.Number, ParameterScope.Merge,
        "Stops when a step is shorter than this; also the smallest norm and angle that count.")
    { CmdletName = "Tolerance", Default = 1e-5, Range = NumberRange.NonNegative };

    public override string Name => "karcher";
    public override string DisplayName => "Karcher";
    public override IReadOnlyList<ParameterSpec> Parameters { get; } = new[] { MaxIterations, Tolerance };
    public override bool TakesTransforms => false;

    public override IReadOnlyList<RecipeForm> RecipeForms { get; } = new[]
    {
        new RecipeForm("karcher", "Riemannian (Karcher) mean of the models on the sphere") { HasLambda = false, NeedsBase = false, BaseJoinsModels = true },
    };

    internal override void Validate(MergeOptions options, int inputCount)
    {
        MaxIterations.Check(options.Setting(MaxIterations.Key) ?? 10.0, "max_iter");
        Tolerance.Check(options.Setting(Tolerance.Key) ?? 1e-5, "tol");
    }

    internal override string Step(MergeOptions options) =>
        $"MergeKarcher(max_iter={options.Setting(MaxIterations.Key) ?? 10.0}, tol={options.Setting(Tolerance.Key) ?? 1e-5})";

    internal override IDeviceMerge CreateDeviceMerge(MergeOptions? options, TensorMergeSetup setup) => DeviceGramMerge.Of(CreateTensorMerge(options, setup), setup);

    internal override ITensorMerge CreateTensorMerge(MergeOptions? options, TensorMergeSetup setup)
    {
        var iterations = (int)(options!.Setting(MaxIterations.Key)?.Resolve(setup.Position) ?? 10);
        var tolerance = options.Setting(Tolerance.Key)?.Resolve(setup.Position) ?? 1e-5;
        return new TensorMerge(setup, VectorSource.Inputs(options.Weights.Count, wholeWeights: true), iterations, tolerance);
    }

    private sealed class TensorMerge(TensorMergeSetup setup, VectorSource[] vectors, int iterations, double tolerance)
        : GramTensorMerge(setup, vectors, VectorLayout.Whole)
    {
        protected override double[] Coefficients(double[,] gram) => Mean(gram, iterations, tolerance);
    }

    /// <summary>mergekit's karcher_merge_tensors with equal weights, on coefficients of the vectors (vₖ·vₗ = gram[k, l]).</summary>
    internal static double[] Mean(double[,] gram, int iterations, double tolerance)
    {
        var n = gram.GetLength(0);
        if (n == 1) return new[] { 1.0 };
        var norms = Enumerable.Range(0, n).Select(i => Math.Sqrt(gram[i, i])).ToArray();
        var valid = Enumerable.Range(0, n).Where(i => norms[i] > tolerance).ToArray();
        if (valid.Length == 0) return new double[n];
        var alpha = 1.0 / valid.Length;
        // Unit vector i as coefficients: vᵢ/|vᵢ|.
        double[] Unit(int i)
        {
            var unit = new double[n];
            unit[i] = 1 / norms[i];
            return unit;
        }
        double Dot(double[] a, double[] b) => MultiSlerpMethod.Quadratic(gram, a, b);
        double Norm(double[] a) => Math.Sqrt(Math.Max(0, Dot(a, a)));

        var u = new double[n];
        foreach (var i in valid) u[i] += alpha / norms[i];
        var normU = Norm(u);
        u = normU < tolerance ? Unit(valid[0]) : u.Select(c => c / normU).ToArray();
        for (var step = 0; step < iterations; step++)
        {
            var tangent = new double[n];
            foreach (var i in valid)
            {
                var unit = Unit(i);
                var dot = Math.Clamp(Dot(u, unit), -1, 1);
                var theta = Math.Acos(dot);
                if (theta < tolerance) continue;
                var factor = alpha * theta / Math.Sin(theta);
                for (var k = 0; k < n; k++) tangent[k] += factor * (unit[k] - dot * u[k]);
            }
            var normT = Norm(tangent);
            if (normT < tolerance) break;
            u = u.Select((c, k) => Math.Cos(normT) * c + Math.Sin(normT) * (tangent[k] / normT)).ToArray();
            var length = Norm(u);
            if (length > tolerance) u = u.Select(c => c / length).ToArray();
        }
        // The scale: mean of all norms (zero vectors included), weight 1/N each.
        var scale = norms.Sum() / n;
        return u.Select(c => c * scale).ToArray();
    }
}
