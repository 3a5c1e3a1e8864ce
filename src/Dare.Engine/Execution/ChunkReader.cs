using Dare.Engine.Safetensors;

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
    public unsafe ChunkView ReadBFloat16(int slot, TensorInfo info, long first, long count)
    {
        var raw = Workspace.Raw(slot, count);
        using (PhaseProfile.Time(Profile, Phase.Read)) Reader.ReadElements(info, first, count, raw.Data);
        return raw;
    }

    /// <summary>Elements [first, first + count) of a stored tensor, for a kernel that reads them piece by piece (<see cref="TensorReader.OpenRange"/>).</summary>
    public StoredRange OpenRange(TensorInfo info, long first, long count)
    {
        using (PhaseProfile.Time(Profile, Phase.Read)) return Reader.OpenRange(info, first, count);
    }

    /// <summary>Elements [first, first + count) of a stored tensor, as stored, in the staging buffer (overwritten by the next staged read).</summary>
    public unsafe ChunkView Stage(TensorInfo info, long first, long count)
    {
        var raw = Workspace.Staging(count * info.DType.ElementSize());
        using (PhaseProfile.Time(Profile, Phase.Read)) Reader.ReadElements(info, first, count, raw.Data);
        return new ChunkView(raw.Data, count, info.DType);
    }

    /// <summary>
    /// Elements [first, first + count) of a stored floating-point tensor as float32, in workspace slot
    /// <paramref name="slot"/>: float32 read in place, other types staged and widened.
    /// </summary>
    public unsafe ChunkView ReadFloat32(int slot, TensorInfo info, long first, long count)
    {
        var values = Workspace.Floats(slot, count);
        if (info.DType == SafetensorsDType.F32)
        {
            using (PhaseProfile.Time(Profile, Phase.Read)) Reader.ReadElements(info, first, count, values.Data);
            return values;
        }
        var stored = Stage(info, first, count);
        using (PhaseProfile.Time(Profile, Phase.ToFloat32)) return values.CopyFrom(stored);
    }
}
