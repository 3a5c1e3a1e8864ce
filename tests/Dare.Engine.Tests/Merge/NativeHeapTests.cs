using System.Runtime.InteropServices;
using Dare.Engine.Merge;
using Dare.Engine.Tests.Safetensors;
using Xunit;

namespace Dare.Engine.Tests.Merge;

/// <summary>The C heap's free pages go back to the system between tensors; live blocks keep their contents.</summary>
[Collection(nameof(MemoryMeasurementCollection))]
public sealed unsafe class NativeHeapTests
{
    private const int Blocks = 200;
    private const int BlockBytes = 256 << 10; // 50 MB in all

    [Fact]
    public void Free_blocks_left_in_the_heap_are_released_and_a_live_block_is_untouched()
    {
        Assert.True(File.Exists("/proc/self/status"), "this measurement reads /proc/self/status (Linux)");
        // As a chunk buffer does: a mapped block of 32 MB freed raises glibc's mmap threshold, so the blocks below come
        // from the heap, and stay in it once freed (the last one, kept, stops them merging into the heap's top).
        NativeMemory.Free(NativeMemory.Alloc(32 << 20));
        var blocks = new byte*[Blocks];
        for (var b = 0; b < Blocks; b++)
        {
            blocks[b] = (byte*)NativeMemory.Alloc(BlockBytes);
            new Span<byte>(blocks[b], BlockBytes).Fill((byte)(b + 1));
        }
        var kept = blocks[^1];
        try
        {
            for (var b = 0; b < Blocks - 1; b++) NativeMemory.Free(blocks[b]);
            var before = AnonymousBytes();

            NativeHeap.ReturnFreePages();

            var released = before - AnonymousBytes();
            Assert.True(released > 40L << 20, $"released {released / 1e6:0.0} MB of ~{(Blocks - 1) * (long)BlockBytes / 1e6:0} MB freed");
            Assert.True(new Span<byte>(kept, BlockBytes).IndexOfAnyExcept((byte)Blocks) < 0, "the live block's bytes changed");
        }
        finally
        {
            NativeMemory.Free(kept);
        }
    }

    private static long AnonymousBytes()
    {
        var line = File.ReadLines("/proc/self/status").First(l => l.StartsWith("RssAnon:", StringComparison.Ordinal));
        return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) * 1024;
    }
}
