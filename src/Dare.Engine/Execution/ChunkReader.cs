using Dare.Engine.Safetensors;
using TorchSharp;
using static TorchSharp.torch;

namespace Dare.Engine.Merge;

/// <summary>
/// Reads chunks of stored tensors for one run of the executor: into the workspace's reused buffers, timed by the
/// profile. Inputs, transforms and methods read through it, so none of them needs to know about buffers or phases.
/// </summary>
internal sealed class ChunkReader(TensorReader reader, ChunkWorkspace workspace, PhaseProfile? profile)
{
    public TensorReader Reader { get; } = reader;
    public ChunkWorkspace Workspace { get; } = workspace;
    public PhaseProfile? Profile { get; } = profile;

    /// <summary>Elements [first, first + count) of a bfloat16 tensor, as stored, in raw slot <paramref name="slot"/>.</summary>
    public unsafe Tensor ReadBFloat16(int slot, TensorInfo info, long first, long count)
    {
        var raw = Workspace.Raw(slot, count);
        using (PhaseProfile.Time(Profile, Phase.Read)) Reader.ReadElements(info, first, count, TensorMemory.Pointer(raw));
        return raw;
    }

    /// <summary>Elements [first, first + count) of a stored tensor, for a kernel that reads them piece by piece (<see cref="TensorReader.OpenRange"/>).</summary>
    public StoredRange OpenRange(TensorInfo info, long first, long count)
    {
        using (PhaseProfile.Time(Profile, Phase.Read)) return Reader.OpenRange(info, first, count);
    }

    /// <summary>Elements [first, first + count) of a bfloat16 tensor, as stored, in the staging buffer (overwritten by the next staged read).</summary>
    private unsafe ushort* StageBFloat16(TensorInfo info, long first, long count)
    {
        var raw = Workspace.Staging(count * sizeof(ushort));
        using (PhaseProfile.Time(Profile, Phase.Read)) Reader.ReadElements(info, first, count, TensorMemory.Pointer(raw));
        return (ushort*)TensorMemory.Pointer(raw);
    }

    /// <summary>
    /// Elements [first, first + count) of a stored tensor as float32: bfloat16 and float32 into workspace slot
    /// <paramref name="slot"/> (bfloat16 widened by <see cref="ChunkKernels"/>), other types through torch.
    /// </summary>
    public unsafe Tensor ReadFloat32(int slot, TensorInfo info, long first, long count)
    {
        switch (info.DType)
        {
            case SafetensorsDType.F32:
            {
                var values = Workspace.Floats(slot, count);
                using (PhaseProfile.Time(Profile, Phase.Read)) Reader.ReadElements(info, first, count, TensorMemory.Pointer(values));
                return values;
            }
            case SafetensorsDType.BF16:
            {
                var raw = StageBFloat16(info, first, count);
                var values = Workspace.Floats(slot, count);
                using (PhaseProfile.Time(Profile, Phase.ToFloat32)) ChunkKernels.WidenBFloat16(raw, TensorMemory.Floats(values), count);
                return values;
            }
            default:
            {
                Tensor stored;
                using (PhaseProfile.Time(Profile, Phase.Read)) stored = Reader.ReadRange(info, first, count);
                using (PhaseProfile.Time(Profile, Phase.ToFloat32)) return stored.to_type(ScalarType.Float32);
            }
        }
    }
}
