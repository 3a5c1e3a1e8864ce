using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using Xunit;

namespace Dare.Engine.Tests.Merge;

/// <summary>
/// An export computes a chunk into one output buffer while earlier chunks are written from the others, so the
/// workspace must hand them out in turn across every request, tensors included: handing out a buffer being written
/// would change bytes on their way to disk.
/// </summary>
public sealed class ChunkWorkspaceTests
{
    private static unsafe IntPtr Address(ChunkView view) => (IntPtr)view.Data;

    private static unsafe IntPtr Address(TorchSharp.torch.Tensor tensor) => (IntPtr)TensorMemory.Pointer(tensor);

    [Fact]
    public void Native_buffers_start_on_a_4096_byte_block_so_outputs_can_be_written_from_where_they_are()
    {
        using var workspace = new ChunkWorkspace();
        var views = new[]
        {
            workspace.NextOutput(SafetensorsDType.BF16, 12_345), workspace.NextOutput(SafetensorsDType.F32, 3), workspace.NextOutput(SafetensorsDType.BF16, 1 << 20),
            workspace.Floats(1, 777), workspace.Raw(0, 5), workspace.Staging(99),
        };

        Assert.All(views, view => Assert.Equal(0, Address(view) % 4096));
    }

    [Fact]
    public void An_output_view_starts_its_phase_past_a_block_and_fits_in_a_buffer_grown_once()
    {
        using var workspace = new ChunkWorkspace();
        var phases = new[] { 3072, 0, 2048, 4094, 1, 0 };
        var views = phases.Select(phase => workspace.NextOutput(SafetensorsDType.BF16, 100_000, phase)).ToArray();

        Assert.Equal(phases.Select(p => (long)p), views.Select(view => (long)Address(view) % 4096));
        // Buffer 0 served phase 3072, then 4094 from the same memory (one block of room was allocated with it).
        Assert.Equal(Address(views[0]) - 3072 + 4094, Address(views[3]));
        Assert.Throws<ArgumentOutOfRangeException>(() => workspace.NextOutput(SafetensorsDType.BF16, 10, 4096));
        Assert.Throws<ArgumentOutOfRangeException>(() => workspace.NextOutput(SafetensorsDType.BF16, 10, -1));
    }

    [Fact]
    public void A_torch_buffers_output_views_start_their_phase_past_a_block_and_are_tensors_over_the_same_memory()
    {
        using var workspace = new ChunkWorkspace { TorchBuffers = true };
        var phases = new[] { 3072, 0, 2048, 4094, 1, 0 };
        var views = phases.Select(phase => workspace.NextOutput(SafetensorsDType.BF16, 100_000, phase)).ToArray();

        // Torch's allocator aligns less than a block; the views are placed past one. A bfloat16 view cannot start at an
        // odd byte of a tensor: phase 1 starts anywhere (its bytes go through the file's staging buffer).
        Assert.Equal(new long[] { 3072, 0, 2048, 4094, 0 }, views.Where((_, i) => phases[i] != 1).Select(view => (long)Address(view) % 4096));
        foreach (var view in views)
        {
            using var tensor = view.AsTensor();
            Assert.Equal(Address(view), Address(tensor));
            Assert.Equal(view.Count, tensor.NumberOfElements);
        }
        // Slots for the device's inputs take the buffer from its start, wherever that is.
        using var slot = workspace.Floats(1, 10).AsTensor();
        Assert.Equal(10, slot.NumberOfElements);
    }

    [Fact]
    public void Output_buffers_take_turns_across_requests_of_any_size()
    {
        using var workspace = new ChunkWorkspace();
        var sizes = new long[] { 1000, 10, 500, 10, 7, 2000, 1 };
        var addresses = sizes.Select(size => Address(workspace.NextOutput(SafetensorsDType.BF16, size))).ToArray();

        Assert.Equal(3, ChunkWorkspace.OutputBuffers);
        Assert.Equal(3, addresses.Take(3).Distinct().Count());
        for (var i = 3; i < addresses.Length; i++)
        {
            // Buffer i is buffer i − 3 again (grown in place or reallocated: it was free either way), never one of the two before it.
            Assert.NotEqual(addresses[i - 1], addresses[i]);
            Assert.NotEqual(addresses[i - 2], addresses[i]);
        }
        Assert.Equal(addresses[0], addresses[3]);
        Assert.Equal(addresses[1], addresses[4]);
    }

    [Fact]
    public void A_returned_buffer_is_the_next_one_handed_out_and_the_others_keep_their_turn()
    {
        using var workspace = new ChunkWorkspace();
        var a = Address(workspace.NextOutput(SafetensorsDType.BF16, 10));
        var b = Address(workspace.NextOutput(SafetensorsDType.BF16, 10));
        var c = Address(workspace.NextOutput(SafetensorsDType.BF16, 10));
        workspace.ReturnOutput();

        Assert.Equal(c, Address(workspace.NextOutput(SafetensorsDType.BF16, 10)));
        Assert.Equal(a, Address(workspace.NextOutput(SafetensorsDType.BF16, 10)));
        Assert.Equal(b, Address(workspace.NextOutput(SafetensorsDType.BF16, 10)));
    }

    [Fact]
    public void A_buffer_that_grows_or_changes_type_is_still_not_one_of_the_others()
    {
        using var workspace = new ChunkWorkspace();
        var first = Address(workspace.NextOutput(SafetensorsDType.BF16, 10));
        var other = Address(workspace.NextOutput(SafetensorsDType.F32, 10));
        var grown = workspace.NextOutput(SafetensorsDType.BF16, 1 << 20);
        var retyped = workspace.NextOutput(SafetensorsDType.F32, 1 << 19);

        Assert.Equal(1 << 20, grown.Count);
        Assert.Equal(SafetensorsDType.F32, retyped.DType);
        Assert.Equal(3, new[] { other, Address(grown), Address(retyped) }.Distinct().Count());
        Assert.NotEqual(first, Address(grown));
    }
}
