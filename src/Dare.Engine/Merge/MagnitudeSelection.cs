namespace Dare.Engine.Merge;

/// <summary>
/// Exact top-k selection by magnitude without sorting or index tensors: a coarse histogram of the upper 16 bits
/// of |x|'s IEEE bit pattern (monotonic in |x|) finds the bin holding the k-th largest magnitude, a fine histogram
/// of the lower 16 bits inside that bin finds the exact value. Memory is two 64K-entry histograms whatever the
/// tensor size; the data may arrive in chunks (each pass sees every chunk in element order).
/// Keep rule: every |x| above the threshold, plus the first <see cref="TiesToKeep"/> equal to it, in element order.
/// </summary>
public sealed class MagnitudeSelection
{
    private const uint MagnitudeMask = 0x7FFFFFFF;
    private readonly long[] _coarse = new long[1 << 16];
    private readonly long[] _fine = new long[1 << 16];
    private readonly long _keep;
    private long _needInBin;
    private uint _bin;

    /// <param name="keep">How many elements to keep (0 &lt;= keep).</param>
    /// <param name="elementCount">How many elements the tensor has.</param>
    public MagnitudeSelection(long keep, long elementCount)
    {
        _keep = keep;
        KeepAll = keep >= elementCount;
        KeepNone = keep <= 0;
    }

    public bool KeepAll { get; }
    public bool KeepNone { get; }

    /// <summary>Whether the passes are needed at all.</summary>
    public bool NeedsPasses => !KeepAll && !KeepNone;

    public uint ThresholdBits { get; private set; }
    public long TiesToKeep { get; private set; }

    /// <summary>The threshold magnitude itself.</summary>
    public float Threshold => BitConverter.UInt32BitsToSingle(ThresholdBits);

    public unsafe void AddCoarse(float* data, long count) => Histogram(data, count, _coarse, fineBin: null);

    public void FinishCoarse()
    {
        long above = 0;
        for (var b = _coarse.Length - 1; b >= 0; b--)
        {
            if (above + _coarse[b] >= _keep)
            {
                _bin = (uint)b;
                _needInBin = _keep - above;
                return;
            }
            above += _coarse[b];
        }
        throw new InvalidOperationException("The coarse pass saw fewer elements than the tensor has.");
    }

    public unsafe void AddFine(float* data, long count)
    {
        Histogram(data, count, _fine, fineBin: _bin);
    }

    public void FinishFine()
    {
        long above = 0;
        for (var f = _fine.Length - 1; f >= 0; f--)
        {
            if (above + _fine[f] >= _needInBin)
            {
                ThresholdBits = (_bin << 16) | (uint)f;
                TiesToKeep = _needInBin - above;
                return;
            }
            above += _fine[f];
        }
        throw new InvalidOperationException("The fine pass saw fewer elements than the coarse pass.");
    }

    /// <summary>
    /// Zeroes what the selection drops in one chunk. <paramref name="tiesLeft"/> starts at <see cref="TiesToKeep"/>
    /// and carries across chunks in element order.
    /// </summary>
    public unsafe void Trim(float* data, long count, ref long tiesLeft)
    {
        if (KeepAll) return;
        if (KeepNone)
        {
            for (long i = 0; i < count; i++) data[i] = 0f;
            return;
        }
        var threshold = ThresholdBits;
        var ranges = Ranges(count);
        var ties = new long[ranges.Length];
        Parallel.For(0, ranges.Length, r =>
        {
            var (start, end) = ranges[r];
            var uints = (uint*)data;
            long equal = 0;
            for (var i = start; i < end; i++)
            {
                var m = uints[i] & MagnitudeMask;
                if (m < threshold) data[i] = 0f;
                else if (m == threshold) equal++;
            }
            ties[r] = equal;
        });
        for (var r = 0; r < ranges.Length; r++)
        {
            if (tiesLeft >= ties[r])
            {
                tiesLeft -= ties[r];
                continue;
            }
            var (start, end) = ranges[r];
            var uints = (uint*)data;
            for (var i = start; i < end; i++)
            {
                if ((uints[i] & MagnitudeMask) != threshold) continue;
                if (tiesLeft > 0) tiesLeft--;
                else data[i] = 0f;
            }
        }
    }

    /// <summary>Coarse (fineBin null): counts by the upper 16 bits. Fine: counts by the lower 16 bits within one coarse bin.</summary>
    private static unsafe void Histogram(float* data, long count, long[] histogram, uint? fineBin)
    {
        var ranges = Ranges(count);
        var locals = new long[ranges.Length][];
        Parallel.For(0, ranges.Length, r =>
        {
            var local = new long[histogram.Length];
            var (start, end) = ranges[r];
            var uints = (uint*)data;
            if (fineBin is not { } bin)
            {
                for (var i = start; i < end; i++) local[(uints[i] & MagnitudeMask) >> 16]++;
            }
            else
            {
                for (var i = start; i < end; i++)
                {
                    var m = uints[i] & MagnitudeMask;
                    if (m >> 16 == bin) local[m & 0xFFFF]++;
                }
            }
            locals[r] = local;
        });
        foreach (var local in locals)
        {
            for (var b = 0; b < histogram.Length; b++) histogram[b] += local[b];
        }
    }

    /// <summary>Splits [0, count) into one contiguous range per core (few enough that order-dependent work stays cheap).</summary>
    internal static (long Start, long End)[] Ranges(long count)
    {
        var parts = (int)Math.Clamp(count / (1 << 16), 1, Environment.ProcessorCount);
        var ranges = new (long, long)[parts];
        for (var p = 0; p < parts; p++) ranges[p] = (count * p / parts, count * (p + 1) / parts);
        return ranges;
    }
}
