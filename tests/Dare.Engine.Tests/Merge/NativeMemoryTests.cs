using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using TorchSharp;
using Xunit;

namespace Dare.Engine.Tests.Merge;

/// <summary>
/// Every tensor and every native chunk buffer the executor creates is freed: TorchSharp's per-thread statistics count
/// each tensor created on this thread (in a dispose scope or not) until it is disposed on this thread, so a leaked
/// tensor stays counted even if the garbage collector finalizes it later on its own thread; the workspace counts its
/// native buffers per thread the same way.
/// </summary>
public sealed class NativeMemoryTests : IDisposable
{
    private readonly TestModels _models = new();
    private readonly List<TaskVector> _vectors = new();

    public NativeMemoryTests()
    {
        var random = new Random(4);
        var shapes = new (string Name, long[] Shape)[] { ("model.embed_tokens.weight", new long[] { 40, 8 }), ("model.layers.0.w", new long[] { 33 }) };
        var @base = shapes.ToDictionary(s => s.Name, s => TestModels.RandomFloats(random, (int)(s.Shape.Aggregate(1L, (a, b) => a * b))));
        var baseCheckpoint = _models.Write("base", shapes.Select(s => TestTensor.Bf16(s.Name, @base[s.Name], s.Shape))
            .Append(TestTensor.I64("position_ids", new long[] { 1, 2, 3 })));
        for (var m = 0; m < 2; m++)
        {
            var tuned = _models.Write($"tuned{m}", shapes.Select(s => TestTensor.Bf16(s.Name, TestModels.Perturb(random, @base[s.Name]), s.Shape))
                .Append(TestTensor.I64("position_ids", new long[] { 1, 2, 3 })));
            _vectors.Add(TaskVector.FromModels(baseCheckpoint, tuned));
        }
    }

    public void Dispose() => _models.Dispose();

    private static long LiveTensors => DisposeScopeManager.Statistics.TensorStatistics.ThreadTotalLiveCount;
    private static long LiveBuffers => ChunkWorkspace.ThreadLiveBuffers;

    private static TensorParameter[] Parameters(params double[] values) => values.Select(v => (TensorParameter)v).ToArray();

    [Fact]
    public void Live_tensor_count_detects_an_undisposed_tensor()
    {
        TorchRuntime.EnsureInitialized();
        var start = LiveTensors;
        var leaked = torch.zeros(3);
        Assert.Equal(start + 1, LiveTensors);
        leaked.Dispose();
        Assert.Equal(start, LiveTensors);
    }

    [Fact]
    public void Live_buffer_count_detects_an_undisposed_workspace()
    {
        var start = LiveBuffers;
        var workspace = new ChunkWorkspace();
        workspace.Floats(0, 10);
        workspace.Floats(0, 5); // reuses the buffer
        workspace.Floats(0, 20); // replaces it
        workspace.NextOutput(SafetensorsDType.BF16, 3);
        Assert.Equal(start + 2, LiveBuffers);
        workspace.Dispose();
        Assert.Equal(start, LiveBuffers);
    }

    public static TheoryData<string, long> Plans => new()
    {
        { "single", MergeExecutor.DefaultChunkElements },
        { "dare-l1-ties", MergeExecutor.DefaultChunkElements },
        { "dare-l1-ties", 7 },
        { "dare-linear", 7 },
    };

    private TaskVector Plan(string kind) => kind switch
    {
        "single" => _vectors[0],
        "dare-l1-ties" => TaskVector.Combine(
            new[] { _vectors[0].WithDare(new DareOptions(0.5, 1, 0, DareRescale.L1)), _vectors[1].WithDare(new DareOptions(0.3, 1, 1)) },
            new MergeOptions(MergeMethod.Ties, Parameters(1, 1), true, 1.0, Parameters(0.3, 1.0))),
        "dare-linear" => TaskVector.Combine(
            new[] { _vectors[0].WithDare(new DareOptions(0.5, 1, 0)), _vectors[1] },
            new MergeOptions(MergeMethod.Linear, Parameters(1, 2), true, 0.5)),
        _ => throw new ArgumentOutOfRangeException(nameof(kind)),
    };

    [Theory]
    [MemberData(nameof(Plans))]
    public void Repeated_exports_leave_no_live_tensors(string kind, long chunkElements)
    {
        var plan = Plan(kind);
        var executor = new MergeExecutor(chunkElements: chunkElements);
        var start = LiveTensors;
        var startBuffers = LiveBuffers;
        for (var run = 0; run < 5; run++)
        {
            executor.Export(plan, new ExportOptions { Destination = _models.PathOf($"out{run}"), OutputDType = run switch { 1 or 3 => SafetensorsDType.F32, 2 => SafetensorsDType.F16, _ => null }, DeltaOnly = run == 4 });
            Assert.Equal(start, LiveTensors);
            Assert.Equal(startBuffers, LiveBuffers);
        }
    }

    [Theory]
    [MemberData(nameof(Plans))]
    public void Compute_delta_result_is_the_only_live_tensor_and_disposing_it_releases_everything(string kind, long chunkElements)
    {
        var plan = Plan(kind);
        var executor = new MergeExecutor(chunkElements: chunkElements);
        var start = LiveTensors;
        for (var run = 0; run < 3; run++)
        {
            var delta = executor.ComputeDelta(plan, "model.embed_tokens.weight");
            Assert.Equal(new long[] { 40, 8 }, delta.shape);
            Assert.Equal(start + 1, LiveTensors);
            delta.Dispose();
            Assert.Equal(start, LiveTensors);
        }
    }

    [Fact]
    public void Compute_delta_result_survives_an_enclosing_dispose_scope_only_if_the_caller_keeps_it()
    {
        // The result is registered like any tensor the caller creates: inside the caller's scope it is the caller's to move out.
        var start = LiveTensors;
        torch.Tensor kept;
        using (var scope = torch.NewDisposeScope())
        {
            kept = scope.MoveToOuter(new MergeExecutor().ComputeDelta(_vectors[0], "model.layers.0.w"));
        }
        Assert.Equal(start + 1, LiveTensors);
        Assert.Equal(33, kept.data<float>().Count);
        kept.Dispose();
        Assert.Equal(start, LiveTensors);
    }
}
