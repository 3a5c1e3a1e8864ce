using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Dare.Engine.Safetensors;

namespace Dare.Engine.Merge;

internal static unsafe partial class ChunkKernels
{
    /// <summary>
    /// One counting pass over a chunk stored in bfloat16 (elements [first, first + count) of the tensor): each input's
    /// δ, its DARE mask applied, computed a block at a time in cache as <see cref="WidenSubtractMask"/> computes it and
    /// added to <paramref name="selections"/>[i]'s sample, or counted against its planned bracket
    /// (<see cref="MagnitudeSelection.CountsBracketWhileReading"/>), in the parallel ranges of
    /// <see cref="MagnitudeSelection.AddBracket"/> of the chunk; null counts nothing for that input. The base and the
    /// inputs are read piece by piece, each once, and no δ is stored: a selection pass costs a read of the stored
    /// bytes instead of a write and a read of float32 δ.
    /// </summary>
    public static void CountFromBFloat16(StoredRange baseBits, DeltaSource[] sources, MagnitudeSelection?[] selections, long first, long count)
    {
        if (count > MagnitudeSelection.MaxSpan) throw new ArgumentOutOfRangeException(nameof(count), "Too many elements to count in one pass.");
        var n = sources.Length;
        var ranges = Partition.Ranges(count).Length;
        var brackets = selections.Select(s => s is { CountsBracketWhileReading: true }).ToArray();
        var recorded = selections.Select((s, i) => brackets[i] ? s!.BeginBracketCall(ranges) : null).ToArray();
        Partition.Run(count, (r, start, end) => CountRange(baseBits, sources, selections, brackets, recorded, first, r, start, end));
        for (var i = 0; i < n; i++)
        {
            if (brackets[i]) selections[i]!.EndBracketCall(recorded[i]);
        }
    }

    /// <summary>
    /// <see cref="CountFromBFloat16"/>'s range <paramref name="r"/>, [start, end) of the chunk, on the calling thread.
    /// Compiled optimised at once: its loop runs for seconds in a large merge, and would start in tier 0.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void CountRange(StoredRange baseBits, DeltaSource[] sources, MagnitudeSelection?[] selections, bool[] brackets,
        (uint Entry, uint Count)[][]?[] recorded, long first, int r, long start, long end)
    {
        var n = sources.Length;
        // A float32 block for δ, then a bfloat16 piece of each stored range; a table per input.
        var scratch = KernelScratch.Rent(Block * sizeof(float) + (n + 1) * Piece * sizeof(ushort));
        var memory = scratch.Pointer;
        var delta = (float*)memory;
        var tables = selections.Select((s, i) => s is null ? null : brackets[i] ? s.RentBracketTable() : MagnitudeSelection.RentSampleTable()).ToArray();
        var (nonZero, above, zeros) = (new long[n], new long[n], new long[n]);
        var fused = BracketDeltaCounter.IsVectorized;
        var noWeights = new float[n];
        try
        {
            var tuned = new IntPtr[n];
            for (var piece = start; piece < end; piece += Piece)
            {
                var pieceLength = Math.Min(Piece, end - piece);
                var baseValues = ReadPiece(baseBits, sources, piece, pieceLength, memory + Block * sizeof(float), tuned);
                // A bracket with 16-lane vectors: δ counted in registers as it is computed.
                if (fused)
                {
                    foreach (var (blockStart, blockEnd) in FusedInput.KeyBlocks(first, piece, piece + pieceLength))
                    {
                        var fusedInputs = FusedInput.For(sources, tuned, noWeights, first + blockStart);
                        for (var i = 0; i < n; i++)
                        {
                            if (tables[i] is not { } table || !brackets[i]) continue;
                            var (low, high) = selections[i]!.BracketBits;
                            fixed (uint* t = table)
                            {
                                var counter = CountBracket(new BracketDeltaCounter(baseValues, fusedInputs[i], (uint)first, t, low, high), blockStart, blockEnd);
                                (above[i], zeros[i]) = (above[i] + counter.Above, zeros[i] + counter.Zeros);
                            }
                        }
                    }
                }
                for (var block = piece; block < piece + pieceLength; block += Block)
                {
                    var length = Math.Min(Block, piece + pieceLength - block);
                    for (var i = 0; i < n; i++)
                    {
                        if (tables[i] is not { } table || (fused && brackets[i])) continue;
                        var source = sources[i];
                        WidenSubtractBFloat16((ushort*)tuned[i] + block, baseValues + block, delta, length);
                        if (source.Dare) DareMask.Apply(delta, first + block, length, source.Key, source.Threshold, source.Scale);
                        if (brackets[i]) selections[i]!.CountBracket(table, delta, length, ref above[i], ref zeros[i]);
                        else nonZero[i] += MagnitudeSelection.CountSample(table, (uint*)delta, first + block, length);
                    }
                }
            }
        }
        finally
        {
            scratch.Dispose();
        }
        for (var i = 0; i < n; i++)
        {
            if (tables[i] is not { } table) continue;
            if (brackets[i]) selections[i]!.AddBracketCounts(table, above[i], zeros[i], recorded[i], r);
            else selections[i]!.AddSampleCounts(table, nonZero[i]);
        }
    }

    /// <summary>The bracket counter's loop, a method of its own so that the JIT's inlining budget is the loop's alone.</summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static BracketDeltaCounter CountBracket(BracketDeltaCounter counter, long start, long end) => VectorDriver.Run(counter, start, end);
}

/// <summary>
/// Counts one input's masked δ (<see cref="FusedInput"/>, computed 16 elements at a time in registers) against a TIES
/// bracket of magnitudes [bracketLow, bracketHigh) as IEEE bits, as MagnitudeSelection's own counter counts stored δ:
/// those at or above it into <see cref="Above"/>, those inside it into table[magnitude − bracketLow], and, where the
/// bracket starts at 0, the zeros of the vector body into <see cref="Zeros"/> (the scalar body counts them in the table),
/// through <see cref="MagnitudeSelection.CountEntry"/>.
/// <paramref name="low"/> is chunk element 0's mask counter.
/// </summary>
internal unsafe struct BracketDeltaCounter(ushort* baseValues, FusedInput input, uint low, uint* table, uint bracketLow, uint bracketHigh) : IElementOperator
{
    private readonly Vector512<uint> _low = Vector512.Create(bracketLow), _high = Vector512.Create(bracketHigh);
    private long _dropped;

    public long Above { get; private set; }
    public long Zeros { get; private set; }

    public static int Lanes => 16;
    public static bool IsVectorized => DareLinearKernel.Preferred;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Vector(long j)
    {
        var delta = input.Delta(j, FusedInput.Widen(baseValues + j), DareMask.GoldenProducts16(low + (uint)j), ref _dropped);
        var magnitude = delta.AsUInt32() & Vector512.Create(0x7FFFFFFFu);
        var isAbove = Vector512.GreaterThanOrEqual(magnitude, _high);
        Above += BitOperations.PopCount(isAbove.ExtractMostSignificantBits());
        var inside = (Vector512.GreaterThanOrEqual(magnitude, _low) & ~isAbove).ExtractMostSignificantBits();
        if (inside == 0) return;
        if (bracketLow == 0)
        {
            var zero = Vector512.Equals(magnitude, Vector512<uint>.Zero).ExtractMostSignificantBits();
            Zeros += BitOperations.PopCount(zero);
            inside &= ~zero;
        }
        for (; inside != 0; inside &= inside - 1)
        {
            MagnitudeSelection.CountEntry(table, bracketHigh - bracketLow, magnitude.GetElement(BitOperations.TrailingZeroCount(inside)) - bracketLow);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Scalar(long j)
    {
        var delta = input.Delta(j, BitConverter.UInt32BitsToSingle((uint)baseValues[j] << 16), low, ref _dropped);
        var magnitude = BitConverter.SingleToUInt32Bits(delta) & 0x7FFFFFFF;
        if (magnitude >= bracketHigh) Above++;
        else if (magnitude >= bracketLow) MagnitudeSelection.CountEntry(table, bracketHigh - bracketLow, magnitude - bracketLow);
    }
}
