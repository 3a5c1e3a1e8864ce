using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Dare.Engine.Merge;

/// <summary>
/// NearSwap (mergekit's nearswap): takes the other model's value where it is near the base's and keeps the base's
/// where they differ much. Per entry w = clamp(t / max(|δ|, 1e-6), 0, 1) and the result is base + w·δ, which is
/// mergekit's w·θ + (1 − w)·θ_base up to float32 rounding. One model besides the base; t may vary by tensor.
/// </summary>
internal sealed class NearswapMethod : MergeMethod
{
    public static ParameterSpec T { get; } = new("t", ParameterKind.Number, ParameterScope.Merge,
        "Similarity threshold: entries whose |δ| is at most t take the model's value, larger ones move by t toward it.")
    { CmdletName = "Threshold", VariesByTensor = true, Range = NumberRange.NonNegative };

    public override string Name => "nearswap";
    public override string DisplayName => "Nearswap";
    public override IReadOnlyList<ParameterSpec> Parameters { get; } = new[] { T };
    public override IReadOnlyList<RecipeForm> RecipeForms { get; } = new[] { new RecipeForm("nearswap", "Swap in the model's entries near the base's") { HasLambda = false } };

    internal override void Validate(MergeOptions options, int inputCount)
    {
        if (inputCount != 1)
        {
            throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument, $"nearswap merges exactly one model into the base, not {inputCount}.");
        }
        T.Check(options.Setting(T.Key) ?? throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument, "nearswap needs t (-Threshold)."));
    }

    internal override string Step(MergeOptions options) => $"MergeNearswap(t={options.Setting(T.Key)})";

    internal override ITensorMerge CreateTensorMerge(MergeOptions? options, TensorMergeSetup setup) =>
        new TensorMerge((float)options!.Setting(T.Key)!.Resolve(setup.Position));

    internal override IDeviceMerge CreateDeviceMerge(MergeOptions? options, TensorMergeSetup setup) =>
        new DeviceMerge((float)options!.Setting(T.Key)!.Resolve(setup.Position));

    /// <summary>The same combine on the tensor backend: the operator's float32 operations, in its order.</summary>
    private sealed class DeviceMerge(float t) : IDeviceMerge
    {
        public void RunPasses(IDeviceChunkPasses passes) { }

        public TorchSharp.torch.Tensor Combine(long first, TorchSharp.torch.Tensor[] deltas)
        {
            var d = deltas[0];
            using var w = TorchSharp.torch.full_like(d, t).div_(d.abs().clamp_min_(Operator.Floor)).clamp_(0f, 1f);
            return w.mul(d);
        }
    }

    private sealed class TensorMerge(float t) : ITensorMerge
    {
        public MagnitudeSelection? SampleWhileReading(int input) => null;
        public void RunPasses(IChunkPasses passes) { }
        public void PrepareChunk(long first, ChunkView[] deltas) { }
        public IBFloat16SinglePass? SinglePass => null;

        public unsafe void Combine(ChunkView[] deltas, CombineTarget target) =>
            VectorDriver.RunParallel(new Operator(deltas[0].Floats, t, target), deltas[0].Count);
    }

    /// <summary>w·δ with w = clamp(t / max(|δ|, 1e-6), 0, 1); the vector body does the scalar body's IEEE operations.</summary>
    private readonly unsafe struct Operator(float* delta, float t, CombineTarget target) : IElementOperator
    {
        public const float Floor = 1e-6f;
        public static int Lanes => 8;
        public static bool IsVectorized => true;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Vector(long j)
        {
            var d = Vector256.Load(delta + j);
            var w = Vector256.Create(t) / Vector256.Max(Vector256.Abs(d), Vector256.Create(Floor));
            w = Vector256.Min(Vector256.Max(w, Vector256<float>.Zero), Vector256.Create(1f));
            target.Store(w * d, j);
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Scalar(long j)
        {
            var d = delta[j];
            var w = Math.Clamp(t / Math.Max(Math.Abs(d), Floor), 0f, 1f);
            target.Store(w * d, j);
        }
    }
}
