using Dare.Engine.Safetensors;

namespace Dare.Engine.Merge;

/// <summary>
/// One input of a merge: per base tensor, its values as a delta against the base, chunk by chunk in element order.
/// A fine-tuned checkpoint (<see cref="FineTunedDelta"/>) is one kind; a computed delta (a LoRA adapter's s·B·A) or
/// an input whose rows are aligned to the base's vocabulary are others: whatever it reads, an input hands back δ in
/// the base tensor's shape, so the executor needs no change for a new kind.
/// </summary>
internal interface ITaskInput
{
    /// <summary>The name messages use.</summary>
    string Name { get; }

    /// <summary>The checkpoint the input reads, when it is a stored model (for recipes, summaries and warnings); null for a computed input.</summary>
    Checkpoint? Model { get; }

    /// <summary>Base tensors the input has nothing for; they contribute a zero delta.</summary>
    IReadOnlyList<string> MissingTensors { get; }

    /// <summary>Warnings about how the input was read (e.g. a fine-tune that unties the base's tied head).</summary>
    IReadOnlyList<string> Notes => Array.Empty<string>();

    /// <summary>This input's part of one base tensor, or null when it has none (a zero delta).</summary>
    IInputTensor? Open(TensorInfo baseTensor);
}

/// <summary>An input's part of one tensor.</summary>
internal interface IInputTensor
{
    /// <summary>
    /// The stored bfloat16 tensor when δ is exactly (stored − base): the fused kernels then read it directly and compute
    /// δ (with a DARE mask, a TIES sample, or the whole linear merge) in one pass. Null for any other input.
    /// </summary>
    TensorInfo? StoredBFloat16 { get; }

    /// <summary>Whether <see cref="ReadDelta"/> needs the base chunk in float32.</summary>
    bool NeedsBase { get; }

    /// <summary>
    /// δ for elements [first, first + count) as float32, in workspace slot <paramref name="slot"/> (the caller may
    /// overwrite it). <paramref name="baseChunk"/> is float32
    /// when <see cref="NeedsBase"/>.
    /// </summary>
    ChunkView ReadDelta(ChunkReader chunks, int slot, ChunkView baseChunk, long first, long count);

    /// <summary>
    /// Starts the OS reading what <see cref="ReadDelta"/> will read for [first, first + count); <paramref name="readOnce"/>
    /// as <see cref="TensorReader.Prefetch"/> takes it.
    /// </summary>
    void Prefetch(TensorReader reader, long first, long count, bool readOnce);
}
