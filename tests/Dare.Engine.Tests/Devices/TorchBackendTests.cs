using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using Dare.Engine.Tests.Merge;
using Xunit;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace Dare.Engine.Tests.Devices;

/// <summary>
/// The TorchSharp tensor backend (-Device torch-cpu here; cuda on a GPU machine, see tests/gpu) against the SIMD
/// kernels: the same DARE masks, the same TIES selection and output within one bfloat16 ulp, with the count of
/// differing elements reported (and required to be zero: the backend repeats the kernels' IEEE operations).
/// DARE_TEST_DEVICE=cuda runs the same comparisons on a GPU.
/// </summary>
public sealed class TorchBackendTests(ITestOutputHelper output) : IDisposable
{
    private static readonly (string Name, long[] Shape)[] Shapes =
    {
        ("model.embed_tokens.weight", new long[] { 61, 33 }),
        ("model.layers.0.mlp.up_proj.weight", new long[] { 97, 131 }),
        ("model.layers.1.self_attn.q_proj.weight", new long[] { 20_011 }),
        ("model.norm.weight", new long[] { 3 }),
        ("model.layers.1.mlp.gate_proj.weight", new long[] { 0, 5 }),
    };

    private static readonly string DeviceName = Environment.GetEnvironmentVariable("DARE_TEST_DEVICE") is { Length: > 0 } d ? d : "torch-cpu";
    private readonly TestModels _models = new();

    /// <summary>The device under test, checked (and, for CUDA, initialised) as an export checks it.</summary>
    private static TorchSharp.torch.Device TestDevice()
    {
        var device = ComputeDevice.Parse(DeviceName);
        device.EnsureAvailable();
        return device.TorchDevice;
    }

    public void Dispose() => _models.Dispose();

    /// <summary>A base and three fine-tunes; coarse values (multiples of 1/64) give TIES many ties at its threshold.</summary>
    private List<TaskVector> Vectors(SafetensorsDType dtype, bool coarse)
    {
        var random = new Random(dtype == SafetensorsDType.BF16 ? 5 : 6);
        TestTensor Tensor(string name, float[] values, long[] shape) => dtype == SafetensorsDType.BF16 ? TestTensor.Bf16(name, values, shape) : TestTensor.F32(name, values, shape);
        var baseValues = Shapes.ToDictionary(s => s.Name, s => TestModels.RandomFloats(random, (int)s.Shape.Aggregate(1L, (a, b) => a * b)));
        var baseModel = _models.Write($"base-{dtype}-{coarse}", Shapes.Select(s => Tensor(s.Name, baseValues[s.Name], s.Shape)));
        return Enumerable.Range(0, 3).Select(m => TaskVector.FromModels(baseModel, _models.Write($"tuned{m}-{dtype}-{coarse}", Shapes.Select(s => Tensor(s.Name,
            coarse ? baseValues[s.Name].Select(v => v + random.Next(-4, 5) / 64f).ToArray() : TestModels.Perturb(random, baseValues[s.Name], 0.02 * (m + 1)), s.Shape))))).ToList();
    }

    private static TaskVector Plan(string method, List<TaskVector> vectors)
    {
        TensorParameter[] P(params double[] values) => values.Select(v => (TensorParameter)v).ToArray();
        List<TaskVector> Dared(double rate, DareRescale rescale = DareRescale.InverseKeep) => vectors.Select((v, i) => v.WithDare(new DareOptions(rate, 42, i, rescale))).ToList();
        List<TaskVector> Crumbs(double density, double gamma) => vectors.Select(v => v.WithBreadcrumbs(new BreadcrumbsOptions(density, gamma))).ToList();
        List<TaskVector> Pruned(DareRescale rescale) => vectors.Select((v, i) => v.WithDella(new DellaOptions(0.5, 0.2, 42, i, rescale) { Q = rescale == DareRescale.Q ? 0.6 : 0 })).ToList();
        return method switch
        {
            "linear" => TaskVector.Combine(vectors, new MergeOptions(MergeMethod.Linear, P(0.5, 0.3, 0.2), true, 1.0)),
            "task_arithmetic" => TaskVector.Combine(vectors, new MergeOptions(MergeMethod.Linear, P(1, 0.7, 1.3), false, 0.8)),
            "ties" => TaskVector.Combine(vectors, new MergeOptions(MergeMethod.Ties, P(1, 0.7, 1.3), true, 0.9, P(0.3, 0.2, 0.45))),
            "ties_count" => TaskVector.Combine(vectors, new MergeOptions(MergeMethod.Ties, P(1, 1, 1), false, 1.0, P(0.5, 1.0, 0.1), SignMethod.Count)),
            "dare_linear" => TaskVector.Combine(Dared(0.7), new MergeOptions(MergeMethod.Linear, P(1, 0.6, 0.3), false, 0.9)),
            "dare_ties" => TaskVector.Combine(Dared(0.5), new MergeOptions(MergeMethod.Ties, P(1, 0.7, 1.3), true, 1.0, P(0.4, 0.4, 0.4))),
            "della_ties" => TaskVector.Combine(Pruned(DareRescale.InverseKeep), new MergeOptions(MergeMethod.Ties, P(1, 0.7, 1.3), true, 1.0, P(0.6, 1, 0.8))),
            "dare_linear_l1" => TaskVector.Combine(Dared(0.7, DareRescale.L1), new MergeOptions(MergeMethod.Linear, P(1, 0.6, 0.3), false, 0.9)),
            "dare_ties_l1" => TaskVector.Combine(Dared(0.5, DareRescale.L1), new MergeOptions(MergeMethod.Ties, P(1, 0.7, 1.3), true, 1.0, P(0.4, 1, 0.3))),
            "della_linear_l1" => TaskVector.Combine(Pruned(DareRescale.L1), new MergeOptions(MergeMethod.Linear, P(1, 1, 1), true, 1.0)),
            "breadcrumbs" => TaskVector.Combine(Crumbs(0.8, 0.05), new MergeOptions(MergeMethod.Linear, P(1, 0.6, 0.3), true, 1.0)),
            "breadcrumbs_ties" => TaskVector.Combine(Crumbs(0.3, 0.1), new MergeOptions(MergeMethod.Ties, P(1, 0.7, 1.3), true, 1.0, P(0.5, 1, 0.7))),
            "nearswap" => TaskVector.Combine(vectors.Take(1).ToList(), new MergeOptions(MergeMethods.Find("nearswap")!, P(1), false)
            {
                Settings = new Dictionary<string, TensorParameter> { ["t"] = 0.003 },
            }),
            "ram" => TaskVector.Combine(vectors, new MergeOptions(MergeMethods.Find("ram")!, P(1, 1, 1), false)
            {
                Settings = new Dictionary<string, TensorParameter> { ["epsilon"] = 0.01 },
            }),
            "ramplus_tl" => TaskVector.Combine(vectors, new MergeOptions(MergeMethods.Find("ramplus_tl")!, P(1, 1, 1), false)
            {
                Settings = new Dictionary<string, TensorParameter> { ["epsilon"] = 0.01, ["r"] = 0.3, ["alpha"] = 1.5 },
            }),
            "slerp" => TaskVector.Combine(vectors.Take(1).ToList(), WithSettings("slerp", 1, new() { ["t"] = 0.3 })),
            "nuslerp" => TaskVector.Combine(vectors.Take(2).ToList(), WithSettings("nuslerp", 2, new() { ["nuslerp_flatten"] = 0 }, 1, 3)),
            "nuslerp_row_wise" => TaskVector.Combine(vectors.Take(2).ToList(), WithSettings("nuslerp", 2, new() { ["nuslerp_flatten"] = 0, ["nuslerp_row_wise"] = 1 }, 2, 1) with { WholeWeights = true }),
            "nuslerp_flatten" => TaskVector.Combine(vectors.Take(2).ToList(), WithSettings("nuslerp", 2, new() { ["nuslerp_flatten"] = 1 }, 1, 1)),
            "multislerp" => TaskVector.Combine(vectors, WithSettings("multislerp", 3, new() { ["normalize_weights"] = 1, ["eps"] = 1e-8 }, 0.5, 1, 2)),
            "multislerp_whole" => TaskVector.Combine(vectors, WithSettings("multislerp", 3, new() { ["normalize_weights"] = 0, ["eps"] = 1e-8 }, 0.5, 1, 2) with { WholeWeights = true }),
            "karcher" => TaskVector.Combine(vectors, WithSettings("karcher", 3, new() { ["max_iter"] = 10, ["tol"] = 1e-5 })),
            "model_stock" => TaskVector.Combine(vectors, WithSettings("model_stock", 3, new() { ["filter_wise"] = 0 })),
            "model_stock_filter_wise" => TaskVector.Combine(vectors, WithSettings("model_stock", 3, new() { ["filter_wise"] = 1 })),
            "sce" => TaskVector.Combine(vectors, WithSettings("sce", 3, new() { ["select_topk"] = 0.3 })),
            "sce_all" => TaskVector.Combine(Dared(0.5), WithSettings("sce", 3, new() { ["select_topk"] = 1.0 })),
            "arcee_fusion" => TaskVector.Combine(vectors.Skip(2).ToList(), new MergeOptions(MergeMethods.Find("arcee_fusion")!, P(1), false)),
            "passthrough" => PassthroughMethod.Plan(vectors[1].FineTuned!, null),
            "passthrough_scaled" => PassthroughMethod.Plan(vectors[2].FineTuned!, new GradientParameter(new[] { 0.5, 1.5 })),
            "della_linear_q" => TaskVector.Combine(Pruned(DareRescale.Q), new MergeOptions(MergeMethod.Linear, P(1, 0.6, 0.3), false, 0.9)),
            _ => throw new ArgumentOutOfRangeException(nameof(method)),
        };
    }

    private static MergeOptions WithSettings(string method, int count, Dictionary<string, TensorParameter> settings, params double[] weights) =>
        new(MergeMethods.Find(method)!, (weights.Length > 0 ? weights : Enumerable.Repeat(1.0, count).ToArray()).Select(w => (TensorParameter)w).ToList(), Normalize: false) { Settings = settings };

    /// <summary>
    /// Methods whose passes sum over the tensor (the spherical methods' Gram matrices, SCE's Σ δ²) in another order on the device
    /// than the CPU kernels do: a coefficient may differ in its last bit, and so an output element by one ulp.
    /// </summary>
    private static readonly HashSet<string> ReorderedSums = new() { "slerp", "nuslerp", "nuslerp_row_wise", "nuslerp_flatten", "multislerp", "multislerp_whole", "karcher", "model_stock", "model_stock_filter_wise", "sce", "sce_all" };

    private (Checkpoint Model, ExportResult Result) Export(TaskVector plan, string name, ComputeDevice? device, SafetensorsDType output, bool deltaOnly, long chunkElements)
    {
        var result = new MergeExecutor(chunkElements: chunkElements).Export(plan, new ExportOptions { Destination = _models.PathOf(name), OutputDType = output, DeltaOnly = deltaOnly, Device = device });
        return (Checkpoint.Open(_models.PathOf(name)), result);
    }

    [Theory]
    [InlineData("linear", SafetensorsDType.BF16, SafetensorsDType.BF16, false, 1L << 24, false)]
    [InlineData("task_arithmetic", SafetensorsDType.BF16, SafetensorsDType.F32, false, 5000, false)]
    [InlineData("task_arithmetic", SafetensorsDType.F32, SafetensorsDType.BF16, true, 1L << 24, false)]
    [InlineData("dare_linear", SafetensorsDType.BF16, SafetensorsDType.BF16, false, 4099, false)]
    [InlineData("dare_linear", SafetensorsDType.F32, SafetensorsDType.F16, false, 1L << 24, false)]
    [InlineData("ties", SafetensorsDType.BF16, SafetensorsDType.BF16, false, 1L << 24, true)]
    [InlineData("ties", SafetensorsDType.BF16, SafetensorsDType.F32, true, 3001, true)]
    [InlineData("ties_count", SafetensorsDType.F32, SafetensorsDType.BF16, false, 1L << 24, false)]
    [InlineData("dare_ties", SafetensorsDType.BF16, SafetensorsDType.BF16, false, 7777, false)]
    [InlineData("dare_ties", SafetensorsDType.BF16, SafetensorsDType.F32, false, 1L << 24, true)]
    [InlineData("della_ties", SafetensorsDType.BF16, SafetensorsDType.BF16, false, 1L << 24, true)]
    [InlineData("della_ties", SafetensorsDType.F32, SafetensorsDType.F32, false, 1000, false)]
    [InlineData("della_linear_q", SafetensorsDType.BF16, SafetensorsDType.BF16, true, 600, false)]
    [InlineData("dare_linear_l1", SafetensorsDType.BF16, SafetensorsDType.BF16, false, 1L << 24, false)]
    [InlineData("dare_linear_l1", SafetensorsDType.F32, SafetensorsDType.F32, false, 3001, false)]
    [InlineData("dare_ties_l1", SafetensorsDType.BF16, SafetensorsDType.BF16, false, 1L << 24, true)]
    [InlineData("dare_ties_l1", SafetensorsDType.BF16, SafetensorsDType.F32, false, 2999, false)]
    [InlineData("della_linear_l1", SafetensorsDType.BF16, SafetensorsDType.BF16, false, 1000, false)]
    [InlineData("nearswap", SafetensorsDType.BF16, SafetensorsDType.BF16, false, 1L << 24, false)]
    [InlineData("nearswap", SafetensorsDType.F32, SafetensorsDType.F32, true, 3001, false)]
    [InlineData("ram", SafetensorsDType.BF16, SafetensorsDType.BF16, false, 1L << 24, false)]
    [InlineData("ram", SafetensorsDType.F32, SafetensorsDType.F32, false, 4001, true)]
    [InlineData("ramplus_tl", SafetensorsDType.BF16, SafetensorsDType.F32, false, 1L << 24, false)]
    [InlineData("ramplus_tl", SafetensorsDType.F32, SafetensorsDType.F32, true, 2500, true)]
    [InlineData("breadcrumbs", SafetensorsDType.BF16, SafetensorsDType.BF16, false, 1L << 24, true)]
    [InlineData("breadcrumbs", SafetensorsDType.F32, SafetensorsDType.F32, false, 997, true)]
    [InlineData("breadcrumbs_ties", SafetensorsDType.BF16, SafetensorsDType.BF16, false, 1L << 24, false)]
    [InlineData("breadcrumbs_ties", SafetensorsDType.BF16, SafetensorsDType.F32, true, 2048, true)]
    [InlineData("sce", SafetensorsDType.BF16, SafetensorsDType.BF16, false, 1L << 24, false)]
    [InlineData("sce", SafetensorsDType.BF16, SafetensorsDType.F32, false, 3001, true)]
    [InlineData("sce", SafetensorsDType.F32, SafetensorsDType.F32, true, 997, false)]
    [InlineData("sce_all", SafetensorsDType.BF16, SafetensorsDType.BF16, false, 4099, false)]
    [InlineData("arcee_fusion", SafetensorsDType.BF16, SafetensorsDType.BF16, false, 1L << 24, false)]
    [InlineData("arcee_fusion", SafetensorsDType.BF16, SafetensorsDType.F32, false, 1000, false)]
    [InlineData("arcee_fusion", SafetensorsDType.F32, SafetensorsDType.BF16, true, 2999, false)]
    [InlineData("passthrough", SafetensorsDType.BF16, SafetensorsDType.BF16, false, 1L << 24, false)]
    [InlineData("passthrough_scaled", SafetensorsDType.BF16, SafetensorsDType.BF16, false, 3001, false)]
    [InlineData("passthrough_scaled", SafetensorsDType.F32, SafetensorsDType.F16, false, 1L << 24, false)]
    [InlineData("slerp", SafetensorsDType.BF16, SafetensorsDType.BF16, false, 1L << 24, false)]
    [InlineData("slerp", SafetensorsDType.F32, SafetensorsDType.F32, false, 3001, false)]
    [InlineData("nuslerp", SafetensorsDType.BF16, SafetensorsDType.BF16, false, 1000, false)]
    [InlineData("nuslerp_row_wise", SafetensorsDType.BF16, SafetensorsDType.F32, false, 2999, false)]
    [InlineData("nuslerp_flatten", SafetensorsDType.F32, SafetensorsDType.BF16, true, 1L << 24, false)]
    [InlineData("multislerp", SafetensorsDType.BF16, SafetensorsDType.BF16, false, 1L << 24, false)]
    [InlineData("multislerp_whole", SafetensorsDType.F32, SafetensorsDType.F32, false, 4001, false)]
    [InlineData("karcher", SafetensorsDType.BF16, SafetensorsDType.BF16, false, 1L << 24, false)]
    [InlineData("karcher", SafetensorsDType.F32, SafetensorsDType.F32, false, 2500, false)]
    [InlineData("model_stock", SafetensorsDType.BF16, SafetensorsDType.BF16, false, 1L << 24, false)]
    [InlineData("model_stock_filter_wise", SafetensorsDType.BF16, SafetensorsDType.F32, false, 997, false)]
    public void Writes_what_the_SIMD_kernels_write(string method, SafetensorsDType inputs, SafetensorsDType outputType, bool deltaOnly, long chunkElements, bool coarse)
    {
        var plan = Plan(method, Vectors(inputs, coarse));
        var (kernels, kernelsResult) = Export(plan, "kernels", null, outputType, deltaOnly, chunkElements);
        var (backend, backendResult) = Export(plan, "backend", ComputeDevice.Parse(DeviceName), outputType, deltaOnly, chunkElements);
        Assert.Equal(kernelsResult.RealisedDropRate, backendResult.RealisedDropRate);

        long compared = 0, differing = 0;
        foreach (var (name, _) in Shapes)
        {
            var expected = TestModels.ReadRaw<byte>(kernels.Find(name)!);
            var actual = TestModels.ReadRaw<byte>(backend.Find(name)!);
            Assert.Equal(expected.Length, actual.Length);
            var size = outputType.ElementSize();
            for (var j = 0; j < expected.Length; j += size)
            {
                var (a, b) = size == 2 ? ((long)BitConverter.ToUInt16(expected, j), (long)BitConverter.ToUInt16(actual, j)) : (BitConverter.ToUInt32(expected, j), BitConverter.ToUInt32(actual, j));
                compared++;
                if (a == b) continue;
                differing++;
                Assert.True((size == 2 || ReorderedSums.Contains(method)) && Math.Abs(a - b) == 1, $"{name}[{j / size}]: kernels 0x{a:X} vs backend 0x{b:X}, more than one ulp apart");
            }
        }
        output.WriteLine($"{method} on {DeviceName}: {differing} of {compared} elements differ (each by one ulp at most)");
        if (!ReorderedSums.Contains(method)) Assert.Equal(0, differing);
        Assert.True(compared > 20_000);
    }

    [Fact]
    public void Arcee_fusion_of_a_tensor_beyond_its_sample_limit_takes_the_CPUs_sampled_quartiles()
    {
        // Over ArceeFusionMethod.SampleLimit elements: the threshold comes from the fixed sample of positions, which
        // here spans four chunks.
        var shape = new long[] { 1100, 1001 };
        var random = new Random(8);
        var baseValues = TestModels.RandomFloats(random, 1100 * 1001);
        var baseModel = _models.Write("big-base", new[] { TestTensor.Bf16("model.layers.0.mlp.up_proj.weight", baseValues, shape) });
        var tuned = _models.Write("big-tuned", new[] { TestTensor.Bf16("model.layers.0.mlp.up_proj.weight", TestModels.Perturb(random, baseValues, 0.02).Select((v, j) => j % 97 == 0 ? v + 0.5f : v).ToArray(), shape) });
        var plan = TaskVector.Combine(new[] { TaskVector.FromModels(baseModel, tuned) }, new MergeOptions(MergeMethods.Find("arcee_fusion")!, new TensorParameter[] { 1.0 }, false));
        Assert.True(1100 * 1001 > ArceeFusionMethod.SampleLimit);

        var kernels = Export(plan, "big-kernels", null, SafetensorsDType.BF16, false, 300_007).Model;
        var backend = Export(plan, "big-backend", ComputeDevice.Parse(DeviceName), SafetensorsDType.BF16, false, 300_007).Model;
        var expected = TestModels.ReadRaw<ushort>(kernels.Find("model.layers.0.mlp.up_proj.weight")!);
        var actual = TestModels.ReadRaw<ushort>(backend.Find("model.layers.0.mlp.up_proj.weight")!);
        Assert.Equal(expected, actual);
        // Not vacuous: the outliers (one entry in 97 changed much more) took the model's value and most entries kept the base's.
        var changed = expected.Where((bits, j) => bits != Bf16Bits.FromFloat(baseValues[j])).Count();
        Assert.InRange(changed, 1, expected.Length / 2);
    }

    [Theory]
    [InlineData("dare_ties", 1L << 24)]
    [InlineData("dare_ties", 3001)]
    [InlineData("linear", 4099)]
    [InlineData("della_ties", 1000)]
    [InlineData("dare_ties_l1", 2999)]
    [InlineData("breadcrumbs_ties", 1L << 24)]
    [InlineData("breadcrumbs", 997)]
    [InlineData("ramplus_tl", 2500)]
    [InlineData("nuslerp_row_wise", 2999)]
    [InlineData("model_stock_filter_wise", 1L << 24)]
    [InlineData("sce", 3001)]
    [InlineData("arcee_fusion", 1000)]
    public void Leaves_no_live_tensor_behind(string method, long chunkElements)
    {
        var plan = Plan(method, Vectors(SafetensorsDType.BF16, false));
        TorchRuntime.EnsureInitialized();
        var start = TorchSharp.DisposeScopeManager.Statistics.TensorStatistics.ThreadTotalLiveCount;
        Export(plan, "leak", ComputeDevice.Parse(DeviceName), SafetensorsDType.BF16, false, chunkElements);
        Assert.Equal(start, TorchSharp.DisposeScopeManager.Statistics.TensorStatistics.ThreadTotalLiveCount);
    }

    [Theory]
    [InlineData("ties")]
    [InlineData("breadcrumbs_ties")]
    [InlineData("sce")]
    [InlineData("model_stock_filter_wise")]
    [InlineData("nuslerp_row_wise")]
    [InlineData("arcee_fusion")]
    public void A_pass_that_fails_after_its_first_chunk_leaves_no_live_tensor_behind(string method)
    {
        // What a merge keeps on the device across chunks (histograms, Gram sums, row statistics) is detached from the
        // chunks' scopes, so a read failing midway must free it: the tensor's own scope frees the rest.
        var options = Plan(method, Vectors(SafetensorsDType.BF16, false)).Merge!;
        var (name, shape) = Shapes[1];
        var n = shape[0] * shape[1];
        var inputs = options.Weights.Select(_ => new InputChain(null, null)).ToArray();
        var setup = new TensorMergeSetup(TensorPosition.Of(name, 2), n, 6000, inputs, null) { RowLength = shape[1], Shape = shape };
        TorchRuntime.EnsureInitialized();
        var start = TorchSharp.DisposeScopeManager.Statistics.TensorStatistics.ThreadTotalLiveCount;
        using (NewDisposeScope())
        {
            var merge = options.Method.CreateDeviceMerge(options, setup);
            Assert.Throws<IOException>(() => merge.RunPasses(new FailingPasses(TestDevice(), inputs.Length, 6000)));
        }
        Assert.Equal(start, TorchSharp.DisposeScopeManager.Statistics.TensorStatistics.ThreadTotalLiveCount);
    }

    [Theory]
    [InlineData("dare_ties_l1", 1, true)]
    [InlineData("dare_linear", 2, true)]
    [InlineData("della_ties", 3, true)]
    [InlineData("dare_ties_l1", 1, false)]
    [InlineData("ties", 2, false)]
    public void A_cancelled_export_leaves_no_live_tensor_or_buffer_behind(string method, int tensorsBeforeCancel, bool onDevice)
    {
        var plan = Plan(method, Vectors(SafetensorsDType.BF16, false));
        TorchRuntime.EnsureInitialized();
        var tensors = TorchSharp.DisposeScopeManager.Statistics.TensorStatistics.ThreadTotalLiveCount;
        var buffers = ChunkWorkspace.ThreadLiveBuffers;
        using var cancellation = new CancellationTokenSource();
        var executor = new MergeExecutor(new CancelAfter(tensorsBeforeCancel, cancellation), cancellation.Token, chunkElements: 3001);
        var options = new ExportOptions { Destination = _models.PathOf("cancelled"), Device = onDevice ? ComputeDevice.Parse(DeviceName) : null };
        Assert.ThrowsAny<OperationCanceledException>(() => executor.Export(plan, options));
        Assert.False(Directory.Exists(_models.PathOf("cancelled")));
        Assert.Equal(tensors, TorchSharp.DisposeScopeManager.Statistics.TensorStatistics.ThreadTotalLiveCount);
        Assert.Equal(buffers, ChunkWorkspace.ThreadLiveBuffers);
    }

    private sealed class CancelAfter(int tensors, CancellationTokenSource cancellation) : IMergeObserver
    {
        public void Progress(MergeProgress progress)
        {
            if (progress.TensorsDone >= tensors) cancellation.Cancel();
        }

        public void Verbose(string message) { }
        public void Warning(string message) { }
    }

    /// <summary>Passes whose first chunk is random values and whose second cannot be read.</summary>
    private sealed class FailingPasses(TorchSharp.torch.Device device, int inputs, long chunk) : IDeviceChunkPasses
    {
        public void ForEachChunk(Action<long, Tensor[]> body) => ForEachChunk((first, _, deltas) => body(first, deltas));

        public void ForEachChunk(Action<long, Tensor, Tensor[]> body)
        {
            using (NewDisposeScope())
            {
                var baseChunk = randn(new[] { chunk }, ScalarType.Float32, device);
                body(0, baseChunk, Enumerable.Range(0, inputs).Select(_ => randn(new[] { chunk }, ScalarType.Float32, device).mul_(0.01)).ToArray());
            }
            throw new IOException("The second chunk could not be read.");
        }
    }

    [Theory]
    [InlineData(0L, 100_003L, 0.9)]
    [InlineData((1L << 32) - 40_000, 90_000L, 0.3)]
    [InlineData(7L << 32, 5_000L, 0.0)]
    public void Drop_masks_are_the_counter_hash_bit_for_bit(long first, long count, double rate)
    {
        var key = DareMask.Key(1234, 2, "model.layers.3.mlp.down_proj.weight");
        var threshold = DareMask.Threshold(rate);
        using var scope = NewDisposeScope();
        var mask = DeviceKernels.DropMask(key, threshold, first, count, TestDevice()).cpu().data<bool>().ToArray();
        var mismatches = Enumerable.Range(0, (int)count).Count(j => mask[j] != (DareMask.Hash(key, first + j) < threshold));
        Assert.Equal(0, mismatches);
        // Not vacuous: the drop fraction is the rate.
        Assert.InRange(mask.Count(m => m) / (double)count, rate - 0.01, rate + 0.01);
    }

    [Fact]
    public void Magnitude_bits_are_the_float32_bit_patterns_of_the_magnitudes()
    {
        var random = new Random(3);
        var values = new[] { 0f, -0f, float.Epsilon, -float.Epsilon, 1.1754942E-38f, -1.17549435E-38f, float.MaxValue, -float.MinValue, float.PositiveInfinity, float.NegativeInfinity, 1f, -0.5f }
            .Concat(Enumerable.Range(0, 20_000).Select(_ => BitConverter.Int32BitsToSingle(random.Next()) * (random.Next(2) == 0 ? 1 : -1)).Where(v => !float.IsNaN(v))).ToArray();
        using var scope = NewDisposeScope();
        var bits = DeviceKernels.MagnitudeBits(tensor(values).to(TestDevice())).cpu().data<long>().ToArray();
        for (var i = 0; i < values.Length; i++) Assert.Equal(BitConverter.SingleToUInt32Bits(values[i]) & 0x7FFFFFFF, (uint)bits[i]);
    }

    [Fact]
    public void An_unknown_device_name_is_refused_with_the_spellings()
    {
        var ex = Assert.Throws<DareException>(() => ComputeDevice.Parse("gpu"));
        Assert.Equal(DareErrorId.InvalidParameter, ex.ErrorId);
        Assert.Contains("cuda", ex.Message);
        Assert.Equal("cuda:3", ComputeDevice.Parse("CUDA:3").Name);
        Assert.Equal("cuda:0", ComputeDevice.Parse("cuda").Name);
        Assert.False(ComputeDevice.Parse("cpu").UsesTorchBackend);
        Assert.True(ComputeDevice.Parse("torch-cpu").UsesTorchBackend);
    }

    [Fact]
    public void A_CUDA_device_TorchSharp_does_not_offer_is_DeviceUnavailable_before_anything_is_written()
    {
        // Here (TorchSharp-cpu) any cuda device is unavailable; on a GPU machine, an index beyond its devices is.
        var cuda = TorchSharp.torch.cuda.is_available();
        var asked = cuda ? "cuda:999" : "cuda:1";
        var plan = Plan("linear", Vectors(SafetensorsDType.BF16, false));
        var ex = Assert.Throws<DareException>(() => Export(plan, "cuda-out", ComputeDevice.Parse(asked), SafetensorsDType.BF16, false, 1L << 24));
        Assert.Equal(DareErrorId.DeviceUnavailable, ex.ErrorId);
        Assert.Contains($"'{asked}'", ex.Message);
        Assert.Contains(cuda ? "CUDA device(s)" : "torch.cuda.is_available() is false", ex.Message);
        Assert.False(Directory.Exists(_models.PathOf("cuda-out")));
    }
}
