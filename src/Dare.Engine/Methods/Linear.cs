using Dare.Engine.Safetensors;
using static TorchSharp.torch;

namespace Dare.Engine.Merge;

/// <summary>
/// Linear: λ · Σ wᵢ·δᵢ, divided by Σ wᵢ when normalizing. Recipes name it linear (the weighted mean of the models),
/// task_arithmetic (base + λ·Σ wᵢ·δᵢ) and dare_linear (DARE first). It offers the single-pass bfloat16 route.
/// </summary>
internal sealed class LinearMethod : MergeMethod
{
    public override string Name => "linear";
    public override string DisplayName => "Linear";

    public override IReadOnlyList<ParameterSpec> Parameters { get; } = new[] { CommonParameters.Weight, CommonParameters.Normalize, CommonParameters.Lambda };

    public override IReadOnlyList<RecipeForm> RecipeForms { get; } = new[]
    {
        new RecipeForm("linear", "Weighted average of the models") { NormalizeByDefault = true, NeedsBase = false, HasLambda = false },
        new RecipeForm("task_arithmetic", "base + λ·Σ wᵢ·δᵢ"),
        new RecipeForm("dare_linear", "DARE with drop rate 1 − density, then a weighted sum") { DensityIsDareKeep = true },
        new RecipeForm("della_linear", "DELLA: MagPrune by magnitude rank per row, rescale, then a weighted sum") { DensityIsDellaKeep = true },
        new RecipeForm("breadcrumbs", "Model Breadcrumbs: drop the γ largest and the smallest magnitudes to keep density, then a weighted sum") { DensityIsBreadcrumbsKeep = true },
    };

    internal override string RecipeName(MergeOptions options) => options is { Normalize: true, Lambda: 1.0 } ? "linear" : "task_arithmetic";

    internal override ITensorMerge CreateTensorMerge(MergeOptions? options, TensorMergeSetup setup)
    {
        if (options is null) return new TensorMerge(new[] { 1f }, null);
        var weights = options.Weights.Select(w => (float)w.Resolve(setup.Position)).ToArray();
        var total = CommonParameters.WeightSum(weights, setup.Position, options.Normalize);
        var scale = options.Normalize ? options.Lambda / total : options.Lambda;
        return new TensorMerge(weights, scale == 1.0 ? null : (float)scale);
    }

    internal override IDeviceMerge CreateDeviceMerge(MergeOptions? options, TensorMergeSetup setup)
    {
        if (options is null) return new DeviceMerge(new[] { 1f }, null);
        var weights = options.Weights.Select(w => (float)w.Resolve(setup.Position)).ToArray();
        var total = CommonParameters.WeightSum(weights, setup.Position, options.Normalize);
        var scale = options.Normalize ? options.Lambda / total : options.Lambda;
        return new DeviceMerge(weights, scale == 1.0 ? null : (float)scale);
    }

    /// <summary>The same combine on the tensor backend (<see cref="DeviceKernels.Linear"/>).</summary>
    private sealed class DeviceMerge(float[] weights, float? scale) : IDeviceMerge
    {
        public void RunPasses(IDeviceChunkPasses passes) { }
        public Tensor Combine(long first, Tensor[] deltas) => DeviceKernels.Linear(deltas, weights, scale);
    }

    /// <summary>The combine for one tensor: weights and the scale (λ, over Σ wᵢ when normalizing; null for 1).</summary>
    private sealed class TensorMerge(float[] weights, float? scale) : ITensorMerge, IBFloat16SinglePass
    {
        public MagnitudeSelection? SampleWhileReading(int input) => null;
        public void RunPasses(IChunkPasses passes) { }
        public void PrepareChunk(long first, ChunkView[] deltas) { }

        public unsafe void Combine(ChunkView[] deltas, CombineTarget target) =>
            CombineKernels.Linear(ChunkView.FloatPointers(deltas), weights, scale, target, deltas[0].Count);

        public IBFloat16SinglePass SinglePass => this;

        public ChunkKernels.MergedChunk MergeChunk(StoredRange baseBits, DeltaSource[] sources, CombineTarget target, long first, long count) =>
            DareLinearKernel.Preferred ? DareLinearKernel.MergeChunk(baseBits, sources, weights, scale, target, first, count) : ChunkKernels.MergeFromBFloat16(baseBits, sources, (deltas, blockTarget, start, end) => CombineKernels.LinearRange(deltas, weights, scale, blockTarget, start, end),
                target, first, count);
    }
}
