using Dare.Engine.Safetensors;

namespace Dare.Engine.Merge;

/// <summary>
/// Passthrough (mergekit's passthrough): the output is one model's tensors as they are, or times <c>scale</c>. With
/// recipe <c>slices</c> that model is a stack of layer ranges of several models (<see cref="Checkpoint.Stack"/>), so a
/// frankenmerge is a passthrough of a stack. The plan is the model as its own base with one input,
/// <see cref="BaseScale"/>, whose δ is (scale − 1)·θ, so the output is θ + (scale − 1)·θ = scale·θ (up to float32
/// rounding; exactly θ where no scale is given, as that input then reads nothing).
/// </summary>
internal sealed class PassthroughMethod : MergeMethod
{
    public static ParameterSpec Scale { get; } = new("scale", ParameterKind.Number, ParameterScope.Either,
        "Multiplies the model's (or the slice's) tensors; none given copies them unchanged.")
    { CmdletName = "Scale", VariesByTensor = true };

    public override string Name => "passthrough";
    public override string DisplayName => "Passthrough";
    public override bool TakesTransforms => false;
    public override IReadOnlyList<ParameterSpec> Parameters { get; } = new[] { Scale };

    public override IReadOnlyList<RecipeForm> RecipeForms { get; } = new[]
    {
        new RecipeForm("passthrough", "One model copied (or layer slices stacked), optionally scaled") { NeedsBase = false, HasLambda = false },
    };

    /// <summary>The plan for a passthrough of <paramref name="model"/> (a checkpoint or a stack), scaled by <paramref name="scale"/> where given.</summary>
    public static TaskVector Plan(Checkpoint model, TensorParameter? scale, string? name = null)
    {
        var options = new MergeOptions(MergeMethods.Get<PassthroughMethod>(), new TensorParameter[] { 1.0 }, Normalize: false)
        {
            Settings = scale is null ? new Dictionary<string, TensorParameter>() : new Dictionary<string, TensorParameter> { [Scale.Key] = scale },
        };
        return TaskVector.Combine(new[] { TaskVector.FromInput(model, new BaseScale(model, scale)) }, options, name ?? model.Name);
    }

    internal override void Validate(MergeOptions options, int inputCount)
    {
        if (inputCount != 1)
        {
            throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument, $"passthrough copies exactly one model (or one stack of slices), not {inputCount}.");
        }
        if (options.Setting(Scale.Key) is { } scale) Scale.Check(scale);
    }

    internal override string Step(MergeOptions options) => $"Passthrough(scale={options.Setting(Scale.Key)?.ToString() ?? "none"})";

    internal override unsafe ITensorMerge CreateTensorMerge(MergeOptions? options, TensorMergeSetup setup) => new TensorMerge();

    /// <summary>On the tensor backend, linear's combine with weight 1: the one input's δ as it is, as the CPU combine takes it.</summary>
    internal override IDeviceMerge CreateDeviceMerge(MergeOptions? options, TensorMergeSetup setup) => Linear.CreateDeviceMerge(null, setup);

    private sealed class TensorMerge : ITensorMerge
    {
        public MagnitudeSelection? SampleWhileReading(int input) => null;
        public void RunPasses(IChunkPasses passes) { }
        public void PrepareChunk(long first, ChunkView[] deltas) { }
        public IBFloat16SinglePass? SinglePass => null;

        public unsafe void Combine(ChunkView[] deltas, CombineTarget target) =>
            CombineKernels.Linear(new[] { (IntPtr)deltas[0].Floats }, new[] { 1f }, null, target, deltas[0].Count);
    }
}

/// <summary>δ = (scale − 1)·θ_base: the input that turns a model, as its own base, into scale·θ. Nothing is read where scale is 1 or not given.</summary>
internal sealed class BaseScale(Checkpoint model, TensorParameter? scale) : ITaskInput
{
    public TensorParameter? Scale => scale;
    public string Name => model.Name;
    public Checkpoint? Model => null;
    public IReadOnlyList<string> MissingTensors => SummarisedList.Joined(Array.Empty<string>());

    public IInputTensor? Open(TensorInfo baseTensor)
    {
        if (scale is null) return null;
        var factor = scale.Resolve(TensorPosition.Of(baseTensor.Name, TensorPosition.LayerCountOf(model)));
        return factor == 1.0 ? null : new Part((float)(factor - 1.0));
    }

    private sealed class Part(float factorMinusOne) : IInputTensor
    {
        public TensorInfo? StoredBFloat16 => null;
        public bool NeedsBase => true;

        public ChunkView ReadDelta(ChunkReader chunks, int slot, ChunkView baseChunk, long first, long count) =>
            chunks.Workspace.Floats(slot, count).CopyFrom(baseChunk).Scale(factorMinusOne);

        public void Prefetch(TensorReader reader, long first, long count, bool readOnce) { }
    }
}
