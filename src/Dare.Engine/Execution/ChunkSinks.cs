using Dare.Engine.Safetensors;
using static TorchSharp.torch;

namespace Dare.Engine.Merge;

/// <summary>
/// Receives a tensor's merged δ chunk by chunk: first says where the combine writes it, then takes the result. The
/// base chunk is float32, or bfloat16 as stored when only the fused kernels needed it.
/// </summary>
internal interface IChunkSink
{
    /// <summary>Where the combine of this chunk writes (<paramref name="firstDelta"/> is the first input's δ, overwritable).</summary>
    CombineTarget TargetFor(ChunkView baseChunk, ChunkView firstDelta);

    /// <summary>The chunk of elements [first, first + count) has been combined into the target.</summary>
    void Accept(long first, ChunkView baseChunk, ChunkView firstDelta);
}

/// <summary>Hands each merged δ chunk (float32, combined in place over the first input's δ) to a callback (first element, δ).</summary>
internal sealed class DeltaSink(Action<long, ChunkView> consume) : IChunkSink
{
    public unsafe CombineTarget TargetFor(ChunkView baseChunk, ChunkView firstDelta) => CombineTarget.InPlace(firstDelta.Floats);

    public void Accept(long first, ChunkView baseChunk, ChunkView firstDelta) => consume(first, firstDelta);
}

/// <summary>
/// Writes base + merged δ (or δ alone) in the output dtype. For bfloat16 and float32 the combine writes the output
/// bytes itself, straight into one of the workspace's reused output buffers; other types are added and converted
/// here. Each chunk's write overlaps the computation of the next ones, into the other buffers: with one buffer fewer
/// writes queued at most (<see cref="BackgroundAppender.MaxInFlight"/>), a buffer is refilled only after its last write.
/// </summary>
internal sealed class ExportSink(BackgroundAppender appender, ChunkWorkspace workspace, SafetensorsDType outputDType, bool deltaOnly, PhaseProfile? profile) : IChunkSink
{
    private ChunkView? _output;

    /// <summary>Whether the combine writes the output bytes itself (bfloat16 and float32 output).</summary>
    public bool WritesDirectly => WritesDirectlyAs(outputDType);

    /// <summary>Whether the combine writes output of this type itself.</summary>
    public static bool WritesDirectlyAs(SafetensorsDType outputDType) => outputDType is SafetensorsDType.BF16 or SafetensorsDType.F32;

    public unsafe CombineTarget TargetFor(ChunkView baseChunk, ChunkView firstDelta)
    {
        if (!WritesDirectly)
        {
            _output = null;
            return CombineTarget.InPlace(firstDelta.Floats);
        }
        if (baseChunk.DType == SafetensorsDType.BF16) return TargetOverBFloat16Base(baseChunk.BFloat16Bits, firstDelta.Count);
        return new CombineTarget(deltaOnly ? null : baseChunk.Floats, NextOutput(firstDelta.Count), outputDType == SafetensorsDType.BF16);
    }

    /// <summary>The target for a chunk whose base is still in bfloat16 (only when <see cref="WritesDirectly"/>).</summary>
    public unsafe CombineTarget TargetOverBFloat16Base(ushort* baseBits, long count) =>
        deltaOnly
            ? new CombineTarget(null, NextOutput(count), outputDType == SafetensorsDType.BF16)
            : CombineTarget.OverBFloat16Base(baseBits, NextOutput(count), outputDType == SafetensorsDType.BF16);

    private unsafe void* NextOutput(long count)
    {
        _output = workspace.NextOutput(outputDType, count, appender.NextBlockPhase);
        return _output.Data;
    }

    public void Accept(long first, ChunkView baseChunk, ChunkView firstDelta)
    {
        if (_output is null)
        {
            using (PhaseProfile.Time(profile, Phase.ToOutput))
            {
                // δ + base equals base + δ bit for bit (float addition is commutative); the first δ may be overwritten.
                var result = deltaOnly ? firstDelta : firstDelta.Add(baseChunk);
                _output = workspace.NextOutput(outputDType, firstDelta.Count, appender.NextBlockPhase).CopyFrom(result);
            }
        }
        Emit();
    }

    /// <summary>The tensor backend's output of a chunk on its device: base + merged δ (or δ alone) converted to the output dtype there.</summary>
    public Tensor OnDevice(Tensor merged, Tensor baseChunk) => (deltaOnly ? merged : merged.add(baseChunk)).to_type(outputDType.ToScalarType());

    /// <summary>Copies a chunk computed by <see cref="OnDevice"/> into the output buffer (waiting for the device) and starts its write.</summary>
    public void EmitFromDevice(Tensor result)
    {
        using (PhaseProfile.Time(profile, Phase.ToOutput))
        {
            _output = workspace.NextOutput(outputDType, result.shape[0], appender.NextBlockPhase);
            using var output = _output.AsTensor();
            output.copy_(result);
        }
        Emit();
    }

    /// <summary>Forgets the chunk now in the output buffer unwritten; the next chunk takes the same buffer.</summary>
    public void Discard()
    {
        workspace.ReturnOutput();
        _output = null;
    }

    /// <summary>Starts the background write of the chunk now in the output buffer (which its kernel found free of NaN/Inf when <paramref name="knownFinite"/>).</summary>
    public unsafe void Emit(bool knownFinite = false)
    {
        // Waits for the oldest write first when the queue is full (the time the computation is ahead of the disk).
        using (PhaseProfile.Time(profile, Phase.Write)) appender.AppendAsync((IntPtr)_output!.Data, _output.ByteLength, knownFinite);
        _output = null;
    }
}
