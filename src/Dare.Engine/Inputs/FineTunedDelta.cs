using Dare.Engine.Safetensors;
using static TorchSharp.torch;

namespace Dare.Engine.Merge;

/// <summary>δ = fine-tuned − base, read from a fine-tuned checkpoint.</summary>
internal sealed class FineTunedDelta(Checkpoint model, IReadOnlyList<string> missingTensors) : ITaskInput
{
    public string Name => model.Name;
    public Checkpoint? Model => model;
    public IReadOnlyList<string> MissingTensors => missingTensors;

    public IInputTensor? Open(TensorInfo baseTensor) => model.Find(baseTensor.Name) is { } tuned ? new StoredMinusBase(tuned) : null;
}

/// <summary>δ = a stored tensor − the base tensor of the same shape (a fine-tuned model's, or an adapter's full replacement).</summary>
internal sealed class StoredMinusBase(TensorInfo stored) : IInputTensor
{
    public TensorInfo? StoredBFloat16 => stored.DType == SafetensorsDType.BF16 ? stored : null;
    public bool NeedsBase => true;

    public Tensor ReadDelta(ChunkReader chunks, int slot, Tensor baseChunk, long first, long count)
    {
        var values = chunks.ReadFloat32(slot, stored, first, count);
        using (PhaseProfile.Time(chunks.Profile, Phase.Delta)) return values.sub_(baseChunk);
    }

    public void Prefetch(TensorReader reader, long first, long count) => reader.Prefetch(stored, first, count);
}
