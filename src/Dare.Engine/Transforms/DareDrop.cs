namespace Dare.Engine.Merge;

/// <summary>
/// DARE's drop and rescale applied to one input's δ for one tensor (the transform <c>Invoke-DareDrop</c> adds). The
/// mask is a pure function of (seed, stream, tensor name, element index), so every pass over a chunk drops the same
/// entries. InverseKeep and None rescale element by element, so the fused kernels apply them while computing δ; L1
/// needs the tensor's norm before and after the drop, which only a whole pass knows.
/// </summary>
internal sealed unsafe class DareDrop
{
    private readonly L1Accumulator? _before, _after;

    private DareDrop(DareOptions options, TensorPosition position, long elementCount)
    {
        var rate = options.DropRate.Resolve(position);
        Key = DareMask.Key(options.Seed, options.Stream, position.Name);
        Threshold = DareMask.Threshold(rate);
        Scale = options.Rescale switch
        {
            DareRescale.InverseKeep => (float)(1.0 / (1.0 - rate)),
            DareRescale.Q => (float)(1.0 / options.Q),
            _ => 1f,
        };
        if (options.Rescale == DareRescale.L1)
        {
            _before = new L1Accumulator();
            _after = new L1Accumulator();
        }
        TargetDropped = rate * elementCount;
    }

    /// <summary>The transform for one tensor, or null when the input has no DARE step.</summary>
    public static DareDrop? For(DareOptions? options, TensorPosition position, long elementCount) =>
        options is null ? null : new DareDrop(options, position, elementCount);

    public ulong Key { get; }
    public uint Threshold { get; }

    /// <summary>The survivors' factor applied with the mask (1 for L1 and None).</summary>
    public float Scale { get; }

    /// <summary>Expected number of dropped entries (rate × elements).</summary>
    public double TargetDropped { get; }

    /// <summary>Entries dropped (counted on the first pass).</summary>
    public long Dropped { get; private set; }

    /// <summary>Whether the fused kernels can apply it while computing δ (not for L1, which needs the whole tensor first).</summary>
    public bool FusesIntoRead => _before is null;

    /// <summary>Whether the combine needs a whole pass over the tensor first (for the L1 norms).</summary>
    public bool NeedsWholeTensorFirst => _before is not null;

    /// <summary>The L1 rescale found by the first pass (Σ|δ| before / after the drop), 1 for the other rescales.</summary>
    public double Rescale => _after is { Total: > 0 } after ? _before!.Total / after.Total : 1.0;

    /// <summary>The L1 rescale's norms before and after the drop (null for the other rescales), for the device backend to fill.</summary>
    internal (L1Accumulator Before, L1Accumulator After)? L1Norms => _before is null ? null : (_before, _after!);

    /// <summary>Records what a fused kernel dropped in the first pass.</summary>
    public void CountFused(long dropped) => Dropped += dropped;

    /// <summary>Drops (and rescales) the float32 δ of elements [first, first + count) of the tensor in place.</summary>
    public void Apply(float* data, long first, long count, bool firstPass)
    {
        if (_before is not null && firstPass) _before.Add(data, count);
        var ranges = Partition.Ranges(count);
        var dropped = new long[ranges.Length];
        var (key, threshold, scale) = (Key, Threshold, Scale);
        Partition.Run(count, (r, start, end) => dropped[r] = DareMask.Apply(data + start, first + start, end - start, key, threshold, scale));
        if (!firstPass) return;
        Dropped += dropped.Sum();
        _after?.Add(data, count);
    }
}
