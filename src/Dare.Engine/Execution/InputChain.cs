using Dare.Engine.Safetensors;

namespace Dare.Engine.Merge;

/// <summary>
/// One input's part in merging one tensor: where its δ comes from (<see cref="IInputTensor"/>) and the transform
/// applied to it before the method combines (<see cref="DareDrop"/>). When the input is stored bfloat16 and the
/// transform can be applied element by element, δ comes from one fused kernel pass.
/// </summary>
internal sealed class InputChain(IInputTensor? tensor, DareDrop? drop, DellaDrop? della = null, BreadcrumbsPrune? breadcrumbs = null)
{
    public IInputTensor? Tensor { get; } = tensor;
    public DareDrop? Drop { get; } = drop;

    /// <summary>DELLA's MagPrune, applied to whole rows of δ after it is read (it ranks within rows, so it never fuses).</summary>
    public DellaDrop? Della { get; } = della;

    /// <summary>Breadcrumbs' pruning: its thresholds come from counting passes over raw δ; applied once they are known.</summary>
    public BreadcrumbsPrune? Breadcrumbs { get; } = breadcrumbs;

    /// <summary>Whether δ comes from <see cref="ChunkKernels.WidenSubtractMask(StoredRange, float*, float*, long, long, bool, ulong, uint, float, MagnitudeSelection?)"/> in one pass.</summary>
    public bool IsFused => Tensor?.StoredBFloat16 is not null && Della is null && Breadcrumbs is null && (Drop is null || Drop.FusesIntoRead);

    /// <summary>Whether the combine needs a whole pass over the tensor first (for an L1 rescale's norms).</summary>
    public bool NeedsWholeTensorFirst => Drop is { NeedsWholeTensorFirst: true } || Della is { NeedsWholeTensorFirst: true };

    /// <summary>Whether computing δ needs the base chunk in float32 (the fused kernels widen a bfloat16 base as they read it).</summary>
    public bool NeedsFloat32Base => Tensor is { NeedsBase: true } && !IsFused;

    public long Dropped => Drop?.Dropped ?? Della?.Dropped ?? Breadcrumbs?.Dropped ?? 0;

    /// <summary>Expected number of dropped entries, 0 without a drop step.</summary>
    public double TargetDropped => Drop?.TargetDropped ?? Della?.TargetDropped ?? Breadcrumbs?.TargetDropped ?? 0;

    /// <summary>Whether a drop step (DARE, DELLA or breadcrumbs) applies.</summary>
    public bool HasDropStep => Drop is not null || Della is not null || Breadcrumbs is not null;

    /// <summary>The L1 rescale's norms before and after the drop, for the device backend to fill; null without an L1 rescale.</summary>
    internal (L1Accumulator Before, L1Accumulator After)? L1Norms => Drop?.L1Norms ?? Della?.L1Norms;

    /// <summary>The factor the transform found for the whole tensor (the L1 rescale), applied after any trim.</summary>
    public double Rescale => Drop?.Rescale ?? Della?.Rescale ?? 1.0;

    /// <summary>
    /// δ for elements [first, first + count) with the transform applied, in workspace slot <paramref name="slot"/>.
    /// <paramref name="sample"/>, when given, is a TIES selection whose sample the fused kernel takes as it goes;
    /// <paramref name="stored"/>, when given, holds the fused input's stored elements, which the caller keeps.
    /// </summary>
    public unsafe ChunkView Delta(ChunkReader chunks, int slot, ChunkView baseChunk, long first, long count, bool firstPass, MagnitudeSelection? sample,
        StoredRange? stored = null)
    {
        if (Tensor is null) return chunks.Workspace.Floats(slot, count).Zero();
        if (IsFused)
        {
            // One pass over the chunk: widen, subtract the base, apply the DARE mask (and sample for a TIES threshold) block by block.
            using var opened = stored is null ? chunks.OpenRange(Tensor.StoredBFloat16!, first, count) : null;
            var tunedBits = stored ?? opened!;
            var delta = chunks.Workspace.Floats(slot, count);
            long dropped;
            using (PhaseProfile.Time(chunks.Profile, Phase.DeltaFused))
            {
                var (dare, key, threshold, scale) = FusedDrop;
                dropped = baseChunk.DType == SafetensorsDType.BF16
                    ? ChunkKernels.WidenSubtractMask(tunedBits, baseChunk.BFloat16Bits, delta.Floats, first, count, dare, key, threshold, scale, sample)
                    : ChunkKernels.WidenSubtractMask(tunedBits, baseChunk.Floats, delta.Floats, first, count, dare, key, threshold, scale, sample);
            }
            chunks.Reader.Complete(tunedBits);
            if (firstPass) Drop?.CountFused(dropped);
            return delta;
        }
        var values = Tensor.ReadDelta(chunks, slot, baseChunk, first, count);
        if (Drop is null && Della is null && Breadcrumbs is not { Ready: true }) return values;
        using (PhaseProfile.Time(chunks.Profile, Phase.Mask))
        {
            Drop?.Apply(values.Floats, first, count, firstPass);
            Della?.Apply(values.Floats, first, count, firstPass);
            if (Breadcrumbs is { Ready: true } breadcrumbs) breadcrumbs.Apply(values.Floats, first, count);
        }
        return values;
    }

    /// <summary>The DARE mask the fused kernels apply: whether there is one, its key, hash threshold and rescale.</summary>
    public (bool Dare, ulong Key, uint Threshold, float Scale) FusedDrop => Drop is { } d ? (true, d.Key, d.Threshold, d.Scale) : (false, 0UL, 0u, 1f);

    /// <summary>This input as a source of the single-pass bfloat16 merge (only when <see cref="IsFused"/>).</summary>
    public DeltaSource FusedSource(StoredRange stored)
    {
        var (dare, key, threshold, scale) = FusedDrop;
        return new DeltaSource(stored, dare, key, threshold, scale);
    }

    /// <summary>Records what a kernel outside the transform dropped (the single-pass merge, or the device backend's first pass).</summary>
    public void CountFused(long dropped)
    {
        Drop?.CountFused(dropped);
        Della?.CountDropped(dropped);
        Breadcrumbs?.CountDropped(dropped);
    }
}
