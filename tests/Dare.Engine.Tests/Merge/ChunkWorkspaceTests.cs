using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using Xunit;

namespace Dare.Engine.Tests.Merge;

/// <summary>
/// An export computes a chunk into one output buffer while the previous chunk is written from the other, so the
/// workspace must alternate them across every request, tensors included: handing out the buffer being written
/// would change bytes on their way to disk.
/// </summary>
public sealed class ChunkWorkspaceTests
{
    private static unsafe IntPtr Address(ChunkView view) => (IntPtr)view.Data;

    [Fact]
    public void Output_buffers_alternate_across_requests_of_any_size()
    {
        using var workspace = new ChunkWorkspace();
        var first = Address(workspace.NextOutput(SafetensorsDType.BF16, 1000));
        var second = Address(workspace.NextOutput(SafetensorsDType.BF16, 10));
        var third = Address(workspace.NextOutput(SafetensorsDType.BF16, 500));
        var fourth = Address(workspace.NextOutput(SafetensorsDType.BF16, 10));

        Assert.NotEqual(first, second);
        Assert.Equal(first, third);
        Assert.Equal(second, fourth);
    }

    [Fact]
    public void A_buffer_that_grows_or_changes_type_is_still_not_the_other_one()
    {
        using var workspace = new ChunkWorkspace();
        workspace.NextOutput(SafetensorsDType.BF16, 10);
        var other = Address(workspace.NextOutput(SafetensorsDType.F32, 10));
        var grown = workspace.NextOutput(SafetensorsDType.BF16, 1 << 20);
        var retyped = workspace.NextOutput(SafetensorsDType.BF16, 10);

        Assert.Equal(1 << 20, grown.Count);
        Assert.Equal(SafetensorsDType.BF16, retyped.DType);
        Assert.NotEqual(Address(grown), Address(retyped));
        Assert.NotEqual(other, Address(grown));
    }
}
