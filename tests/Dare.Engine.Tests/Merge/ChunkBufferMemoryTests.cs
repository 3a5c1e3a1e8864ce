using System.Runtime.InteropServices;
using Dare.Engine.Merge;
using Dare.Engine.Tests.Safetensors;
using Xunit;

namespace Dare.Engine.Tests.Merge;

/// <summary>
/// A chunk buffer's memory goes back to the system when its workspace is disposed, whatever its size: from the C heap,
/// a buffer below glibc's raised mmap threshold stayed in the process once freed, and a pwsh session grew by 30–45 MB
/// with each TIES merge. Runs alone, so that no other test's allocations blur the measurement.
/// </summary>
[Collection(nameof(MemoryMeasurementCollection))]
public sealed unsafe class ChunkBufferMemoryTests
{
    private const long BufferBytes = 24L << 20;

    [Fact]
    public void A_disposed_workspace_gives_a_24MB_buffer_back_even_after_glibc_raised_its_mmap_threshold()
    {
        Assert.True(File.Exists("/proc/self/status"), "this measurement reads /proc/self/status (Linux)");
        // As a chunk buffer of 30 MB freed does: glibc raises its threshold to 30 MB, so that a 24 MB block would come
        // from its heaps and stay in them (the heap's top is trimmed only above twice the threshold).
        NativeMemory.Free(NativeMemory.Alloc(30 << 20));
        var workspace = new ChunkWorkspace();
        void* later = null;
        try
        {
            var view = workspace.Floats(0, BufferBytes / sizeof(float));
            new Span<byte>(view.Data, (int)BufferBytes).Fill(1);
            // A block allocated after the buffer and still in use, as the merge's own are: the heap cannot shrink past it.
            later = NativeMemory.Alloc(1024);
            var held = AnonymousBytes();

            workspace.Dispose();

            var released = held - AnonymousBytes();
            Assert.True(released > BufferBytes * 3 / 4, $"released {released / 1e6:0.0} MB of a {BufferBytes / 1e6:0} MB buffer");
        }
        finally
        {
            workspace.Dispose();
            NativeMemory.Free(later);
        }
    }

    private static long AnonymousBytes()
    {
        var line = File.ReadLines("/proc/self/status").First(l => l.StartsWith("RssAnon:", StringComparison.Ordinal));
        return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) * 1024;
    }
}
