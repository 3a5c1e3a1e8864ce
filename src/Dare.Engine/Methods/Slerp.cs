namespace Dare.Engine.Merge;

/// <summary>
/// SLERP (mergekit's slerp): spherical interpolation from the base (t = 0) to the one other model (t = 1) over each
/// whole tensor. As mergekit computes it: each vector divided by its norm when the norm exceeds 1e-8, the cosine of
/// the angle between them, a plain lerp (1 − t)·b + t·m when |cos| &gt; 0.9995 (DOT_THRESHOLD), else
/// sin((1 − t)θ)/sin θ · b + sin(tθ)/sin θ · m of the vectors as they are. t may vary by tensor.
/// </summary>
internal sealed class SlerpMethod : MergeMethod
{
    /// <summary>mergekit's DOT_THRESHOLD: nearer to colinear than this, the interpolation is linear.</summary>
    internal const double ColinearCosine = 0.9995;

    /// <summary>mergekit's eps: a vector whose norm is at most this is left unnormalized.</summary>
    internal const double NormFloor = 1e-8;

    public static ParameterSpec T { get; } = new("t", ParameterKind.Number, ParameterScope.Merge,
        "Interpolation factor: 0 gives the base, 1 the other model, between them the point on the arc.")
    { CmdletName = "T", VariesByTensor = true, Range = new NumberRange(0, true, 1, true) };

    public override string Name => "slerp";
    public override string DisplayName => "Slerp";
    public override IReadOnlyList<ParameterSpec> Parameters { get; } = new[] { T };
    public override bool TakesTransforms => false;

    public override IReadOnlyList<RecipeForm> RecipeForms { get; } = new[]
    {
        new RecipeForm("slerp", "Spherical interpolation from the base to one other model") { HasLambda = false },
    };

    internal override void Validate(MergeOptions options, int inputCount)
    {
        if (inputCount != 1)
        {
            throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument,
                $"slerp interpolates between the base and exactly one other model, not {inputCount}.");
        }
        T.Check(options.Setting(T.Key) ?? throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument, "slerp needs t (-T)."), "t");
    }

    internal override string Step(MergeOptions options) => $"MergeSlerp(t={options.Setting(T.Key)})";

    internal override IDeviceMerge CreateDeviceMerge(MergeOptions? options, TensorMergeSetup setup) => DeviceGramMerge.Of(CreateTensorMerge(options, setup), setup);

    internal override ITensorMerge CreateTensorMerge(MergeOptions? options, TensorMergeSetup setup) =>
        new TensorMerge(setup, options!.Setting(T.Key)!.Resolve(setup.Position));

    private sealed class TensorMerge(TensorMergeSetup setup, double t)
        : GramTensorMerge(setup, new[] { VectorSource.Base, VectorSource.Model(0) }, VectorLayout.Whole)
    {
        protected override double[] Coefficients(double[,] gram) => Interpolate(t, gram[0, 0], gram[1, 1], gram[0, 1]);
    }

    /// <summary>The coefficients (on v₀, v₁) of mergekit's slerp, from |v₀|², |v₁|² and v₀·v₁.</summary>
    internal static double[] Interpolate(double t, double squared0, double squared1, double dot)
    {
        var norm0 = Math.Sqrt(squared0);
        var norm1 = Math.Sqrt(squared1);
        var cosine = dot / ((norm0 > NormFloor ? norm0 : 1) * (norm1 > NormFloor ? norm1 : 1));
        if (Math.Abs(cosine) > ColinearCosine) return new[] { 1 - t, t };
        var theta = Math.Acos(cosine);
        var sine = Math.Sin(theta);
        return new[] { Math.Sin(theta - theta * t) / sine, Math.Sin(theta * t) / sine };
    }
}
