using System.Globalization;

namespace Dare.Engine.Merge;

/// <summary>
/// DELLA's MagPrune applied to one task vector (mergekit's della_magprune): per row (the last dimension), entries are
/// ranked by |δ| and kept with probability pᵢ = density − ε + 2ε·(rankᵢ − 1)/(r − 1), smallest magnitude rank 1. The
/// random draw is DARE's counter-based hash of (Seed, Stream, tensor name, element index), so merges replay.
/// </summary>
public sealed record DellaOptions(TensorParameter Density, TensorParameter Epsilon, long Seed, int Stream, DareRescale Rescale = DareRescale.InverseKeep)
{
    /// <summary>DAREx-q's q when <see cref="Rescale"/> is <see cref="DareRescale.Q"/>.</summary>
    public double Q { get; init; }

    /// <summary>Throws when density ± ε leaves (0, 1) for a tensor whose density is below 1 (mergekit's rule), or a value is out of range.</summary>
    public void Check()
    {
        DellaDropParameters.Density.Check(Density, "Density");
        DellaDropParameters.Epsilon.Check(Epsilon, "Epsilon");
        foreach (var density in Density.PossibleValues.Where(d => d < 1))
        {
            foreach (var epsilon in Epsilon.PossibleValues)
            {
                DellaDrop.CheckBounds(density, epsilon, null);
            }
        }
        DareDropParameters.CheckRescale(Rescale, Q);
    }

    internal string Step =>
        $"DellaDrop(density={Density}, epsilon={Epsilon}, seed={Seed}, stream={Stream}, rescale={DareDropParameters.RescaleText(Rescale, Q)})";
}

/// <summary>The parameters of the DELLA transform (Invoke-DellaDrop; density and epsilon under della and della_linear), declared once.</summary>
public static class DellaDropParameters
{
    public static ParameterSpec Density { get; } = new("density", ParameterKind.Number, ParameterScope.Either,
        "DELLA's mean keep probability; 1 keeps every entry (no pruning).")
    { CmdletName = "Density", VariesByTensor = true, Range = NumberRange.Fraction, Default = 1.0 };

    public static ParameterSpec Epsilon { get; } = new("epsilon", ParameterKind.Number, ParameterScope.Either,
        "DELLA's spread ε of keep probabilities around density (density ± ε must lie inside (0, 1)).")
    { CmdletName = "Epsilon", VariesByTensor = true, Range = new NumberRange(0, true, 1, false), Default = 0.15 };

    /// <summary>The keys DELLA adds to those every transform takes (density is the recipe form's own).</summary>
    public static IReadOnlyList<ParameterSpec> All { get; } = new[] { Epsilon };
}

/// <summary>DELLA for one tensor of one input: the per-row ranking, the keep draw and the rescale, applied to whole rows of δ.</summary>
internal sealed unsafe class DellaDrop
{
    private readonly L1Accumulator? _before, _after;
    private readonly double _density;

    private DellaDrop(DellaOptions options, TensorPosition position, long elementCount, long rowLength)
    {
        _density = options.Density.Resolve(position);
        var epsilon = options.Epsilon.Resolve(position);
        if (_density < 1) CheckBounds(_density, epsilon, position.Name);
        Key = DareMask.Key(options.Seed, options.Stream, position.Name);
        RowLength = rowLength;
        if (options.Rescale == DareRescale.L1 && _density < 1)
        {
            _before = new L1Accumulator();
            _after = new L1Accumulator();
        }
        TargetDropped = _density < 1 ? (1 - _density) * elementCount : 0;
        // The drop threshold and survivor scale depend only on the rank, so every row shares one table.
        if (_density < 1) (_thresholds, _scales) = ByRank(_density, epsilon, options.Rescale, options.Q, rowLength);
    }

    private readonly uint[] _thresholds = [];
    private readonly float[] _scales = [];

    /// <summary>Per rank (index rank − 1): DARE's drop threshold for 1 − pᵢ and the survivor's scale.</summary>
    private static (uint[] Thresholds, float[] Scales) ByRank(double density, double epsilon, DareRescale rescale, double q, long rowLength)
    {
        var thresholds = new uint[rowLength];
        var scales = new float[rowLength];
        for (var rank = 1; rank <= rowLength; rank++)
        {
            var keep = KeepProbability(density, epsilon, rank, rowLength);
            thresholds[rank - 1] = DareMask.Threshold(1 - keep);
            scales[rank - 1] = Scale(rescale, keep, q);
        }
        return (thresholds, scales);
    }

    private static float Scale(DareRescale rescale, double keep, double q) => rescale switch
    {
        DareRescale.InverseKeep => (float)(1 / keep),
        DareRescale.Q => (float)(1 / q),
        _ => 1f,
    };

    /// <summary>The transform for one tensor, or null when the input has no DELLA step.</summary>
    public static DellaDrop? For(DellaOptions? options, TensorPosition position, long elementCount, long rowLength) =>
        options is null ? null : new DellaDrop(options, position, elementCount, rowLength);

    /// <summary>mergekit's rule: density ± ε inside (0, 1).</summary>
    public static void CheckBounds(double density, double epsilon, string? tensor)
    {
        if (density - epsilon > 0 && density + epsilon < 1) return;
        var where = tensor is null ? "" : $" at tensor '{tensor}'";
        throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument,
            $"DELLA needs density ± epsilon inside (0, 1){where}: density {Format(density)} with epsilon {Format(epsilon)} gives [{Format(density - epsilon)}, {Format(density + epsilon)}]; choose a smaller epsilon.")
        { TensorName = tensor };
    }

    private static string Format(double value) => value.ToString("R", CultureInfo.InvariantCulture);

    public ulong Key { get; }

    /// <summary>Entries per row (the last dimension; a 1-D tensor is one row): chunks hold whole rows.</summary>
    public long RowLength { get; }

    public double TargetDropped { get; }
    public long Dropped { get; private set; }

    /// <summary>Whether the transform drops anything (density below 1).</summary>
    public bool Prunes => _density < 1;

    /// <summary>Per rank (index rank − 1), DARE's drop threshold and the survivor's scale: what the device backend applies.</summary>
    internal (uint[] Thresholds, float[] Scales) ByRankTables => (_thresholds, _scales);

    /// <summary>The L1 rescale's norms before and after the drop (null for the other rescales), for the device backend to fill.</summary>
    internal (L1Accumulator Before, L1Accumulator After)? L1Norms => _before is null ? null : (_before, _after!);

    /// <summary>Records what the device backend dropped (its first pass).</summary>
    public void CountDropped(long dropped) => Dropped += dropped;

    /// <summary>Whether the combine needs a whole pass over the tensor first (for the L1 norms).</summary>
    public bool NeedsWholeTensorFirst => _before is not null;

    /// <summary>The L1 rescale found by the first pass (Σ|δ| before / after the drop), 1 for the other rescales.</summary>
    public double Rescale => _after is { Total: > 0 } after ? _before!.Total / after.Total : 1.0;

    /// <summary>The keep probability of the entry of rank <paramref name="rank"/> (1 = smallest |δ|) in a row of <paramref name="rowLength"/>.</summary>
    public static double KeepProbability(double density, double epsilon, long rank, long rowLength) =>
        // One entry has no spread of ranks (mergekit divides 0 by 0 there): it keeps with probability density.
        rowLength == 1 ? density : density - epsilon + 2 * epsilon * ((double)(rank - 1) / (rowLength - 1));

    /// <summary>Drops (and rescales) the float32 δ of elements [first, first + count), whole rows, in place.</summary>
    public void Apply(float* data, long first, long count, bool firstPass)
    {
        if (_density >= 1) return;
        if (first % RowLength != 0 || count % RowLength != 0) throw new InvalidOperationException("DELLA needs chunks of whole rows.");
        if (_before is not null && firstPass) _before.Add(data, count);
        var (rowLength, key, thresholds, scales) = ((int)RowLength, Key, _thresholds, _scales);
        var counts = new long[Partition.Ranges(count).Length];
        // The element partition, rounded to whole rows: a chunk of a few long rows still uses every core.
        Partition.Run(count, (r, start, end) =>
        {
            var order = new MagnitudeOrder();
            var hashes = new uint[rowLength];
            long local = 0;
            fixed (uint* rowHashes = hashes)
            {
                for (var row = (start + rowLength - 1) / rowLength; row < (end + rowLength - 1) / rowLength; row++)
                {
                    var values = data + row * rowLength;
                    DareMask.Hashes(key, first + row * rowLength, rowLength, rowHashes);
                    var sorted = order.Sort(values, rowLength);
                    local += ApplyRow(values, rowHashes, sorted, thresholds, scales);
                }
            }
            counts[r] = local;
        });
        var dropped = counts.Sum();
        if (!firstPass) return;
        Dropped += dropped;
        _after?.Add(data, count);
    }

    /// <summary>
    /// One row, given its entries in rank order (<see cref="MagnitudeOrder"/>: ties in magnitude ranked by position) and
    /// each entry's DARE hash: the entry of rank r is dropped when its hash falls below thresholds[r − 1] (that is
    /// (1 − pᵣ)·2³²), a survivor is multiplied by scales[r − 1]. Without a branch: a drop is random, so a branch on it
    /// would be mispredicted as often as not.
    /// </summary>
    private static long ApplyRow(float* row, uint* hashes, ReadOnlySpan<ulong> sorted, uint[] thresholds, float[] scales)
    {
        long dropped = 0;
        for (var r = 0; r < sorted.Length; r++)
        {
            var i = (int)(uint)sorted[r];
            var drop = ((long)hashes[i] - thresholds[r]) >> 63; // all ones when dropped
            row[i] = BitConverter.UInt32BitsToSingle(BitConverter.SingleToUInt32Bits(row[i] * scales[r]) & ~(uint)drop);
            dropped -= drop;
        }
        return dropped;
    }
}
