using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using Xunit;

namespace Dare.Engine.Tests.Merge;

/// <summary>
/// The fused DARE-linear kernel against the definition written out per element (δ = tuned − base in float32, the DARE
/// mask from <see cref="DareMask.IsDropped"/>, survivors × rescale, Σ wᵢ·δᵢ by fused multiply-adds, × λ, + base,
/// rounded) and against the block-by-block single pass it stands in for. Runs on any x64 machine: without AVX-512 its
/// 16 lanes are emulated.
/// </summary>
public sealed unsafe class DareLinearKernelTests
{
    private static readonly ushort[] Specials = { 0x0000, 0x8000, 0x0001, 0x807F, 0x7F80, 0xFF80, 0x7FC0, 0x3F80, 0xBF80 };

    private static ushort[] Values(Random random, int count) => Enumerable.Range(0, count)
        .Select(i => i % 11 == 0 ? Specials[random.Next(Specials.Length)] : (ushort)(random.Next(0x3000, 0x3D00) | (random.Next(2) << 15))).ToArray();

    private static float Widen(ushort bits) => BitConverter.UInt32BitsToSingle((uint)bits << 16);

    public enum Output { BFloat16OverBase, Float32OverBase, BFloat16DeltaOnly }

    private sealed record Input(ushort[] Tuned, bool Dare, ulong Key, uint Threshold, float Scale, float Weight);

    /// <summary>The per-element definition.</summary>
    private static float Expected(ushort[] baseBits, Input[] inputs, float? lambda, long first, int j)
    {
        var baseValue = Widen(baseBits[j]);
        var sum = 0f;
        for (var i = 0; i < inputs.Length; i++)
        {
            var input = inputs[i];
            var delta = Widen(input.Tuned[j]) - baseValue;
            if (input.Dare && !(input.Threshold == 0 && input.Scale == 1f)) delta = DareMask.IsDropped(input.Key, first + j, input.Threshold) ? 0f : delta * input.Scale;
            sum = i == 0 ? delta * input.Weight : MathF.FusedMultiplyAdd(delta, input.Weight, sum);
        }
        if (lambda is { } l) sum *= l;
        return sum;
    }

    private static CombineTarget Target(Output output, void* destination) => output switch
    {
        Output.BFloat16OverBase => CombineTarget.OverBFloat16Base(null, destination, bfloat16: true),
        Output.Float32OverBase => CombineTarget.OverBFloat16Base(null, destination, bfloat16: false),
        _ => new CombineTarget(null, destination, bfloat16: true),
    };

    private static (uint[] Bits, long[] Dropped) Run(bool fused, ushort[] baseBits, Input[] inputs, float? lambda, Output output, long first)
    {
        var count = baseBits.Length;
        var result = new uint[count];
        var handles = inputs.Select(i => System.Runtime.InteropServices.GCHandle.Alloc(i.Tuned, System.Runtime.InteropServices.GCHandleType.Pinned)).ToArray();
        try
        {
            fixed (ushort* b = baseBits)
            fixed (uint* r = result)
            {
                var info = new TensorInfo("t", SafetensorsDType.BF16, new long[] { count }, "memory", 0, count * 2L);
                using var baseRange = new StoredRange(info, 0, count, (byte*)b, owned: false);
                var ranges = handles.Select(h => new StoredRange(info, 0, count, (byte*)h.AddrOfPinnedObject(), owned: false)).ToArray();
                var sources = inputs.Select((input, i) => new DeltaSource(ranges[i], input.Dare, input.Key, input.Threshold, input.Scale)).ToArray();
                var weights = inputs.Select(i => i.Weight).ToArray();
                var target = Target(output, r);
                var dropped = fused
                    ? DareLinearKernel.MergeChunk(baseRange, sources, weights, lambda, target, first, count)
                    : ChunkKernels.MergeFromBFloat16(baseRange, sources, (deltas, blockTarget, start, end) => CombineKernels.LinearRange(deltas, weights, lambda, blockTarget, start, end), target, first, count);
                foreach (var range in ranges) range.Dispose();
                // bfloat16 results fill the first half of the buffer's bytes: spread them to one per element.
                if (output == Output.Float32OverBase) return (result, dropped);
                var spread = new uint[count];
                for (var j = 0; j < count; j++) spread[j] = ((ushort*)r)[j];
                return (spread, dropped);
            }
        }
        finally
        {
            foreach (var handle in handles) handle.Free();
        }
    }

    [Theory]
    [InlineData(1, "dare3", false, Output.BFloat16OverBase)]
    [InlineData(15, "dare3", true, Output.BFloat16OverBase)]
    [InlineData(17, "mixed", true, Output.Float32OverBase)]
    [InlineData(200_003, "dare3", false, Output.BFloat16OverBase)] // both cores, several 64K pieces, across a 2^32 boundary
    [InlineData(200_003, "mixed", true, Output.BFloat16DeltaOnly)]
    [InlineData(70_001, "one", false, Output.Float32OverBase)]
    public void Fused_kernel_matches_the_definition_and_the_block_by_block_pass(int count, string kind, bool lambda, Output output)
    {
        var random = new Random(count + kind.Length);
        var baseBits = Values(random, count);
        var p9 = DareMask.Threshold(0.9);
        var inputs = kind switch
        {
            "dare3" => Enumerable.Range(0, 3).Select(i => new Input(Values(random, count), true, DareMask.Key(42, i, "w"), p9, 10f, 1f / 3)).ToArray(),
            // DARE at 0.5, no DARE step, and a mask that drops nothing and scales by 1 (skipped, as DareMask.Apply skips it).
            "mixed" => new[]
            {
                new Input(Values(random, count), true, DareMask.Key(7, 0, "w"), DareMask.Threshold(0.5), 2f, 0.6f),
                new Input(Values(random, count), false, 0, 0, 1f, -0.25f),
                new Input(Values(random, count), true, DareMask.Key(7, 2, "w"), 0, 1f, 1.5f),
            },
            _ => new[] { new Input(Values(random, count), true, DareMask.Key(3, 0, "w"), DareMask.Threshold(0.3), 1 / 0.7f, 1f) },
        };
        float? scale = lambda ? 0.7f : null;
        var first = count > 100_000 ? (1L << 32) - 70_001 : 12_345;

        var (fused, fusedDropped) = Run(fused: true, baseBits, inputs, scale, output, first);
        var (blocks, blocksDropped) = Run(fused: false, baseBits, inputs, scale, output, first);

        Assert.Equal(blocksDropped, fusedDropped);
        for (var i = 0; i < inputs.Length; i++)
        {
            var masks = inputs[i].Dare && inputs[i].Threshold != 0;
            var expectedDropped = masks ? Enumerable.Range(0, count).LongCount(j => DareMask.IsDropped(inputs[i].Key, first + j, inputs[i].Threshold)) : 0;
            Assert.Equal(expectedDropped, fusedDropped[i]);
        }
        for (var j = 0; j < count; j++)
        {
            var merged = Expected(baseBits, inputs, scale, first, j);
            if (output != Output.BFloat16DeltaOnly) merged += Widen(baseBits[j]);
            var expected = output == Output.Float32OverBase ? BitConverter.SingleToUInt32Bits(merged) : CombineKernels.ToBFloat16(merged);
            // NaN payloads may differ between instructions; any NaN is the same value.
            if (float.IsNaN(merged) && output == Output.Float32OverBase)
            {
                Assert.True(float.IsNaN(BitConverter.UInt32BitsToSingle(fused[j])), $"element {j}");
                continue;
            }
            Assert.True(expected == fused[j], $"element {j}: expected {expected:X}, fused kernel {fused[j]:X}");
            Assert.True(blocks[j] == fused[j], $"element {j}: block-by-block pass {blocks[j]:X}, fused kernel {fused[j]:X}");
        }
    }
}
