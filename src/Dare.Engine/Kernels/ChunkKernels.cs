using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Dare.Engine.Safetensors;

namespace Dare.Engine.Merge;

/// <summary>One input of a fused kernel: its bfloat16 fine-tuned values for the chunk and its DARE mask parameters.</summary>
internal readonly struct DeltaSource(StoredRange tuned, bool dare, ulong key, uint threshold, float scale)
{
    public StoredRange Tuned { get; } = tuned;
    public bool Dare { get; } = dare;
    public ulong Key { get; } = key;
    public uint Threshold { get; } = threshold;
    public float Scale { get; } = scale;
}

/// <summary>
/// Vectorised loops over one chunk of raw tensor data, used in place of several torch passes (each of which would
/// allocate its result and walk the whole chunk). Every operation is exact or a single IEEE float32 operation per
/// element, so results are bit-identical to the torch ops they replace: bfloat16 → float32 is the 16-bit pattern
/// shifted into the upper half of the float, and δ = tuned − base is one float32 subtraction.
/// </summary>
internal static unsafe partial class ChunkKernels
{
    /// <summary>Elements per block of the fused loops: small enough that a block stays in L1/L2 between its steps.</summary>
    private const int Block = 8192;

    /// <summary>destination[i] = (float)source[i] for bfloat16 source bits.</summary>
    public static void WidenBFloat16(ushort* source, float* destination, long count)
    {
        VectorDriver.RunParallel(new WidenSubtractOperator(source, null, destination), count);
    }

    /// <summary>
    /// δ[i] = (float)tuned[i] − base[i] for bfloat16 <paramref name="tuned"/> (read piece by piece on each thread, see
    /// <see cref="StoredRange.Piece"/>), and, when <paramref name="dare"/> is set, DARE's drop and rescale applied to
    /// each block right after it is computed (elements [first, first + count) of the tensor); when
    /// <paramref name="sample"/> is given, the final δ is also added to its sample while the block is still in cache
    /// (<see cref="MagnitudeSelection.AddSample"/>), or counted against its bracket when one is planned
    /// (<see cref="MagnitudeSelection.CountsBracketWhileReading"/>: as <see cref="MagnitudeSelection.AddBracket"/> of
    /// the chunk would, the same parallel ranges). Returns how many elements DARE dropped.
    /// </summary>
    public static long WidenSubtractMask(StoredRange tuned, float* baseValues, float* delta, long first, long count, bool dare, ulong key, uint threshold, float scale,
        MagnitudeSelection? sample = null) =>
        WidenSubtractMask(tuned, baseValues, null, delta, first, count, dare, key, threshold, scale, sample);

    /// <summary><see cref="WidenSubtractMask(StoredRange, float*, float*, long, long, bool, ulong, uint, float, MagnitudeSelection?)"/> with the base still in bfloat16 (widened as it is read; the same values).</summary>
    public static long WidenSubtractMask(StoredRange tuned, ushort* baseBits, float* delta, long first, long count, bool dare, ulong key, uint threshold, float scale,
        MagnitudeSelection? sample = null) =>
        WidenSubtractMask(tuned, null, baseBits, delta, first, count, dare, key, threshold, scale, sample);

    private static long WidenSubtractMask(StoredRange tuned, float* baseValues, ushort* baseBits, float* delta, long first, long count, bool dare, ulong key, uint threshold,
        float scale, MagnitudeSelection? sample)
    {
        if (sample is not null && count > MagnitudeSelection.MaxSpan) throw new ArgumentOutOfRangeException(nameof(count), "Too many elements to sample in one pass.");
        var ranges = Partition.Ranges(count);
        var dropped = new long[ranges.Length];
        var bracket = sample is { CountsBracketWhileReading: true } ? sample : null;
        var recorded = bracket?.BeginBracketCall(ranges.Length);
        Partition.Run(count, (r, start, end) =>
        {
            var table = bracket is not null ? bracket.RentBracketTable() : sample is not null ? MagnitudeSelection.RentSampleTable() : null;
            var scratch = KernelScratch.Rent(Piece * sizeof(ushort));
            var buffer = scratch.Pointer;
            long nonZero = 0, above = 0, zeros = 0;
            try
            {
                for (var piece = start; piece < end; piece += Piece)
                {
                    var pieceLength = Math.Min(Piece, end - piece);
                    // Rebased so that element j of the chunk is tunedBits[j].
                    var tunedBits = (ushort*)tuned.Piece(piece, pieceLength, buffer) - piece;
                    for (var block = piece; block < piece + pieceLength; block += Block)
                    {
                        var length = Math.Min(Block, piece + pieceLength - block);
                        if (baseValues is not null) WidenSubtract(tunedBits + block, baseValues + block, delta + block, length);
                        else WidenSubtractBFloat16(tunedBits + block, baseBits + block, delta + block, length);
                        if (dare) dropped[r] += DareMask.Apply(delta + block, first + block, length, key, threshold, scale);
                        if (bracket is not null) bracket.CountBracket(table!, delta + block, length, ref above, ref zeros);
                        else if (table is not null) nonZero += MagnitudeSelection.CountSample(table, (uint*)(delta + block), first + block, length);
                    }
                }
            }
            finally
            {
                scratch.Dispose();
            }
            if (bracket is not null) bracket.AddBracketCounts(table!, above, zeros, recorded, r);
            else if (table is not null) sample!.AddSampleCounts(table, nonZero);
        });
        bracket?.EndBracketCall(recorded);
        return dropped.Sum();
    }

    /// <summary>How many presample runs a tensor of <paramref name="count"/> elements has.</summary>
    public static long PresampleRuns(long count) => (count + PresampleSpacing - 1) / PresampleSpacing;

    /// <summary>
    /// The presample runs of a tensor of <paramref name="count"/> elements split between the cores: <paramref name="body"/>(first
    /// run, runs) on each, in parallel. Split by run rather than by input, so that three inputs on two cores keep both busy.
    /// </summary>
    public static void ForPresampleParts(long count, Action<long, long> body)
    {
        var runs = PresampleRuns(count);
        var parts = (int)Math.Min(Environment.ProcessorCount, runs);
        Partition.Each(parts, p => body(runs * p / parts, runs * (p + 1) / parts - runs * p / parts));
    }

    /// <summary>
    /// A presample for a TIES threshold from a tensor's stored bfloat16 base and fine-tuned values: runs of
    /// <see cref="PresampleRun"/> elements every <see cref="PresampleSpacing"/>, δ as <see cref="WidenSubtractMask"/>
    /// computes it (DARE's drop and rescale included), counted for <see cref="MagnitudeSelection.AddPresample"/>. One
    /// element in 64 from all over the tensor, in runs long enough for the processor to stream: runs of 16 every 1,031
    /// elements took 10–16 ms for a 45M-element tensor here (a cache and TLB miss per run), runs of 256 every 16,411 2–6 ms.
    /// This gives the coarse-bin counts of runs [<paramref name="firstRun"/>, firstRun + <paramref name="runs"/>) of a
    /// tensor of <paramref name="count"/> elements (the calling thread's sample table, see <see cref="MagnitudeSelection.RentSampleTable"/>):
    /// run firstRun + r at r × <paramref name="runStride"/> elements of the two arrays, so the arrays are either the
    /// tensor from run firstRun's first element on (stride <see cref="PresampleSpacing"/>) or the runs one after the
    /// other, as <see cref="Safetensors.TensorReader.ReadRuns"/> reads them from a file (stride <see cref="PresampleRun"/>).
    /// </summary>
    internal static uint[] PresampleTable(ushort* baseBits, ushort* tunedBits, long count, long runStride, long firstRun, long runs, bool dare, ulong key, uint threshold,
        float scale)
    {
        var table = MagnitudeSelection.RentSampleTable();
        var delta = stackalloc float[PresampleRun];
        fixed (uint* t = table)
        {
            for (var r = 0L; r < runs; r++)
            {
                var start = (firstRun + r) * PresampleSpacing;
                var length = Math.Min(PresampleRun, count - start);
                if (length <= 0) break;
                WidenSubtractBFloat16(tunedBits + r * runStride, baseBits + r * runStride, delta, length);
                if (dare) DareMask.Apply(delta, start, length, key, threshold, scale);
                for (var j = 0; j < length; j++) MagnitudeSelection.CountSampleBin(t, BitConverter.SingleToUInt32Bits(delta[j]));
            }
        }
        return table;
    }

    /// <summary>Elements between the starts of two presample runs: a prime, so the runs do not line up with rows.</summary>
    internal const int PresampleSpacing = 16411;

    /// <summary>Consecutive elements a presample run takes (512 bytes of each model's stored bfloat16).</summary>
    internal const int PresampleRun = 256;

    /// <summary>Elements per piece a fused kernel reads of each stored range at a time: a few pieces fit in a core's L2 cache.</summary>
    private const int Piece = 1 << 16;

    /// <summary>A method's combine of elements [start, end) of a block's δs (element j of the chunk at deltas[i][j]), on the calling thread.</summary>
    public delegate void BlockCombine(IntPtr[] deltas, CombineTarget target, long start, long end);

    /// <summary>
    /// The whole merge of a chunk stored in bfloat16, one block at a time: widen the base, then for each input
    /// δ = tuned − base with its DARE mask, then the method's <paramref name="combine"/>, which adds the base and
    /// converts to the output through <paramref name="target"/> (whose base, if it adds one, comes from
    /// <paramref name="baseBits"/>). The results are those of <see cref="WidenSubtractMask"/> followed by the combine
    /// over the whole chunk. Returns each input's drop count and whether the output is all finite.
    /// </summary>
    public static MergedChunk MergeFromBFloat16(StoredRange baseBits, DeltaSource[] sources, BlockCombine combine, CombineTarget target, long first, long count)
    {
        var n = sources.Length;
        // Per thread: a float32 block for the base and each δ.
        return MergePieces(baseBits, sources, target, first, count, scratchFloats: (n + 1) * Block, (baseValues, tuned, pieceTarget, start, end, dropped, floats) =>
        {
            var baseBlock = floats;
            var deltas = new IntPtr[n];
            for (var block = start; block < end; block += Block)
            {
                var length = Math.Min(Block, end - block);
                WidenSubtract(baseValues + block, (float*)null, baseBlock, length);
                for (var i = 0; i < n; i++)
                {
                    var delta = floats + (i + 1) * Block;
                    var source = sources[i];
                    WidenSubtract((ushort*)tuned[i] + block, baseBlock, delta, length);
                    if (source.Dare) dropped[i] += DareMask.Apply(delta, first + block, length, source.Key, source.Threshold, source.Scale);
                    deltas[i] = (IntPtr)(delta - block);
                }
                combine(deltas, pieceTarget, block, block + length);
            }
        });
    }

    /// <summary>A single pass's chunk: each input's drop count, and whether every output value written is finite (scanned as it was written).</summary>
    public readonly record struct MergedChunk(long[] Dropped, bool OutputFinite);

    /// <summary>
    /// A fused kernel's merge of chunk elements [start, end): the base's and each input's stored bfloat16 values
    /// (element j of the chunk at pointer[j]), the target over that base, the thread's drop counts (one per input) to
    /// add to, and its <c>scratchFloats</c> floats of scratch.
    /// </summary>
    public delegate void PieceMerge(ushort* baseValues, IntPtr[] tuned, CombineTarget target, long start, long end, long[] dropped, float* scratch);

    /// <summary>
    /// Runs a fused kernel over a chunk stored in bfloat16, split over the cores. Each thread reads its part of the
    /// stored ranges a piece at a time right before it uses it (<see cref="StoredRange.Piece"/>), so nothing but the
    /// output leaves the core's caches, and scans each piece of output for NaN/Inf while it is still in them (the
    /// writer's own scan of the chunk took ~25% of its time in a medium DARE-linear export). Returns each input's
    /// drop count and whether the output is all finite.
    /// </summary>
    public static MergedChunk MergePieces(StoredRange baseBits, DeltaSource[] sources, CombineTarget target, long first, long count, int scratchFloats, PieceMerge merge)
    {
        var n = sources.Length;
        var dropped = new long[n];
        var nonFinite = 0;
        Partition.Run(count, (_, start, end) =>
        {
            // Per thread: the scratch, then a bfloat16 piece of each stored range.
            var scratch = KernelScratch.Rent(scratchFloats * sizeof(float) + (n + 1) * Piece * sizeof(ushort));
            var memory = scratch.Pointer;
            var pieces = memory + scratchFloats * sizeof(float);
            var rangeDropped = new long[n];
            try
            {
                var tuned = new IntPtr[n];
                for (var piece = start; piece < end; piece += Piece)
                {
                    var pieceLength = Math.Min(Piece, end - piece);
                    var baseValues = ReadPiece(baseBits, sources, piece, pieceLength, pieces, tuned);
                    merge(baseValues, tuned, target.WithBFloat16Base(baseValues), piece, piece + pieceLength, rangeDropped, (float*)memory);
                    if (Volatile.Read(ref nonFinite) == 0 && target.AnyNonFinite(piece, pieceLength)) Volatile.Write(ref nonFinite, 1);
                }
            }
            finally
            {
                scratch.Dispose();
            }
            lock (dropped)
            {
                for (var i = 0; i < n; i++) dropped[i] += rangeDropped[i];
            }
        });
        return new MergedChunk(dropped, OutputFinite: nonFinite == 0);
    }

    /// <summary>
    /// Reads chunk elements [piece, piece + length) of the base and of each source into <paramref name="pieces"/> (or
    /// points at them where they are in memory already): returns the base's and sets <paramref name="tuned"/>, each
    /// rebased so that element j of the chunk is at pointer[j], as the kernels index them.
    /// </summary>
    private static ushort* ReadPiece(StoredRange baseBits, DeltaSource[] sources, long piece, long length, byte* pieces, IntPtr[] tuned)
    {
        for (var i = 0; i < sources.Length; i++) tuned[i] = (IntPtr)((ushort*)sources[i].Tuned.Piece(piece, length, pieces + (i + 1) * Piece * sizeof(ushort)) - piece);
        return (ushort*)baseBits.Piece(piece, length, pieces) - piece;
    }

    /// <summary>destination[i] = (float)source[i] − (float)subtrahend[i] for bfloat16 both, on the calling thread.</summary>
    private static void WidenSubtractBFloat16(ushort* source, ushort* subtrahend, float* destination, long count)
    {
        var op = new WidenSubtractBFloat16Operator(source, subtrahend, destination);
        VectorDriver.Run(op, 0, count);
    }

    /// <summary>destination[i] = (float)source[i] − (subtrahend is null ? 0 : subtrahend[i]), on the calling thread.</summary>
    private static void WidenSubtract(ushort* source, float* subtrahend, float* destination, long count)
    {
        var op = new WidenSubtractOperator(source, subtrahend, destination);
        VectorDriver.Run(op, 0, count);
    }
}

/// <summary>destination = (float)bfloat16 source − subtrahend (float32, or nothing when null): the bfloat16 bits shifted into a float's upper half.</summary>
internal readonly unsafe struct WidenSubtractOperator(ushort* source, float* subtrahend, float* destination) : IElementOperator
{
    public static int Lanes => 16;
    public static bool IsVectorized => true;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Vector(long i)
    {
        var (low, high) = Vector256.Widen(Vector256.Load(source + i));
        var lowFloats = Vector256.ShiftLeft(low, 16).AsSingle();
        var highFloats = Vector256.ShiftLeft(high, 16).AsSingle();
        if (subtrahend is not null)
        {
            lowFloats -= Vector256.Load(subtrahend + i);
            highFloats -= Vector256.Load(subtrahend + i + 8);
        }
        lowFloats.Store(destination + i);
        highFloats.Store(destination + i + 8);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Scalar(long i)
    {
        var value = BitConverter.UInt32BitsToSingle((uint)source[i] << 16);
        destination[i] = subtrahend is null ? value : value - subtrahend[i];
    }
}

/// <summary>destination = (float)source − (float)subtrahend, both bfloat16.</summary>
internal readonly unsafe struct WidenSubtractBFloat16Operator(ushort* source, ushort* subtrahend, float* destination) : IElementOperator
{
    public static int Lanes => 16;
    public static bool IsVectorized => true;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Vector(long i)
    {
        var (low, high) = Vector256.Widen(Vector256.Load(source + i));
        var (baseLow, baseHigh) = Vector256.Widen(Vector256.Load(subtrahend + i));
        (Vector256.ShiftLeft(low, 16).AsSingle() - Vector256.ShiftLeft(baseLow, 16).AsSingle()).Store(destination + i);
        (Vector256.ShiftLeft(high, 16).AsSingle() - Vector256.ShiftLeft(baseHigh, 16).AsSingle()).Store(destination + i + 8);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Scalar(long i) => destination[i] = Difference(source[i], subtrahend[i]);

    /// <summary>(float)a − (float)b for bfloat16 bits: one element of the operator.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Difference(ushort a, ushort b) => BitConverter.UInt32BitsToSingle((uint)a << 16) - BitConverter.UInt32BitsToSingle((uint)b << 16);
}
