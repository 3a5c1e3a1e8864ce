using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using Dare.Engine.Tests.Safetensors;
using Xunit;

namespace Dare.Engine.Tests.Merge;

/// <summary>
/// The counted TIES route (each threshold counted from the stored bytes, then one fused pass that trims as it merges)
/// against the general route, which stores every δ in float32 between its passes: the bytes must be the same. The
/// tensors are large enough for the route and for two parallel ranges per chunk, with δ of bfloat16 weights, so the
/// thresholds are shared by hundreds of elements and the tie budgets are cut inside ranges and across chunks. The
/// route is taken on any processor (<see cref="MergeExecutor.FusedOnAnyProcessor"/>; without AVX-512 its kernels'
/// scalar bodies run), so it is tested on every machine.
/// </summary>
public sealed class TiesCountedRouteTests : IDisposable
{
    private const string Name = "model.layers.0.mlp.up_proj.weight";
    private const int Count = 300_007;
    private readonly TestModels _models = new(PageCache.TempRoot);
    private readonly float[] _base;
    private readonly List<float[]> _tuned = new();
    private readonly List<TaskVector> _vectors = new();

    public TiesCountedRouteTests()
    {
        var random = new Random(2026);
        // Rounded to bfloat16 as they are written, so the δ are differences of bfloat16 weights, as in a real model.
        _base = TestModels.RandomFloats(random, Count, 0.05).Select(v => Bf16Bits.ToFloat(Bf16Bits.FromFloat(v))).ToArray();
        var baseModel = _models.Write("base", new[] { TestTensor.Bf16(Name, _base) });
        for (var m = 0; m < 4; m++)
        {
            var tuned = TestModels.Perturb(random, _base, 0.2).Select(v => Bf16Bits.ToFloat(Bf16Bits.FromFloat(v))).ToArray();
            _tuned.Add(tuned);
            _vectors.Add(TaskVector.FromModels(baseModel, _models.Write($"tuned{m}", new[] { TestTensor.Bf16(Name, tuned) })));
        }
        // The route reads inputs that are in the page cache (the writer wrote past it).
        foreach (var file in Directory.GetFiles(_models.Root, "*.safetensors", SearchOption.AllDirectories)) File.ReadAllBytes(file);
    }

    public void Dispose() => _models.Dispose();

    public static TheoryData<string, int, long?, bool> Cases => new()
    {
        { "ties", 3, null, true },
        { "ties", 3, 150_001, false }, // three chunks: the tie budgets run out in a later chunk
        { "ties", 1, null, false },
        { "ties", 2, 100_003, true },
        { "ties", 4, null, true },
        { "dare-ties", 3, null, true }, // DARE at 0.3 leaves more survivors than TIES keeps: both steps in each pass
        { "dare-ties", 4, 150_001, false },
        { "unnormalized", 3, null, false },
        { "keep-all", 3, null, true }, // input 0 keeps everything: counted by none of the passes, untrimmed in the fused one
    };

    private TaskVector Plan(string kind, int inputs)
    {
        var vectors = _vectors.Take(inputs).ToList();
        if (kind == "dare-ties") vectors = vectors.Select((v, i) => v.WithDare(new DareOptions(0.3, 11, i))).ToList();
        var weights = new TensorParameter[] { 1, kind == "unnormalized" ? -0.7 : 0.7, 1.3, 0.5 }.Take(inputs).ToArray();
        // After a DARE drop the thresholds lie among smaller δ, where the bfloat16 steps are too far apart for a bracket.
        var keep = (kind switch
        {
            "dare-ties" => new TensorParameter[] { 0.2, 0.15, 0.25, 0.1 },
            "keep-all" => new TensorParameter[] { 1, 0.2, 0.45 },
            _ => new TensorParameter[] { 0.3, 0.2, 0.45, 0.1 },
        }).Take(inputs).ToArray();
        return TaskVector.Combine(vectors, new MergeOptions(MergeMethod.Ties, weights, kind != "unnormalized", 0.9, keep));
    }

    private byte[] ExportBytes(TaskVector plan, string name, long? chunk, bool bfloat16, bool counted, out MergeExecutor executor)
    {
        executor = new MergeExecutor(chunkElements: chunk ?? MergeExecutor.DefaultChunkElements) { SinglePassLinear = counted, FusedOnAnyProcessor = true };
        executor.Export(plan, new ExportOptions { Destination = _models.PathOf(name), OutputDType = bfloat16 ? SafetensorsDType.BF16 : SafetensorsDType.F32 });
        var output = Checkpoint.Open(_models.PathOf(name));
        return TestModels.ReadRaw<byte>(output.Find(Name)!);
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void The_counted_route_writes_the_bytes_of_the_general_route(string kind, int inputs, long? chunk, bool bfloat16)
    {
        var plan = Plan(kind, inputs);
        var counted = ExportBytes(plan, "counted", chunk, bfloat16, counted: true, out var countedExecutor);
        var general = ExportBytes(plan, "general", chunk, bfloat16, counted: false, out var generalExecutor);

        Assert.Equal(1, countedExecutor.TensorsCounted);
        Assert.Equal(0, generalExecutor.TensorsCounted);
        Assert.Equal(general, counted);
    }

    [Fact]
    public void The_counted_route_matches_the_plain_reimplementation()
    {
        var plan = Plan("ties", 3);
        var executor = new MergeExecutor { FusedOnAnyProcessor = true };
        executor.Export(plan, new ExportOptions { Destination = _models.PathOf("plain"), OutputDType = SafetensorsDType.F32, DeltaOnly = true });

        Assert.Equal(1, executor.TensorsCounted);
        var deltas = _tuned.Take(3).Select(t => Reference.Delta(_base, t)).ToArray();
        var expected = Reference.ToFloats(Reference.Ties(deltas, new[] { 1, 0.7, 1.3 }, new[] { 0.3, 0.2, 0.45 }, true, 0.9));
        var actual = TestModels.ReadFloats(Checkpoint.Open(_models.PathOf("plain")), Name);
        Reference.AssertClose(expected, actual, what: Name);
        // The data make the budgets matter: input 1's threshold magnitude is shared by elements on both sides of the cut.
        var magnitudes = deltas[1].Select(MathF.Abs).OrderDescending().ToArray();
        var keep = (int)Math.Ceiling(0.2 * Count);
        Assert.Equal(magnitudes[keep - 1], magnitudes[keep]);
    }

    [Fact]
    public void NaN_in_an_input_fails_before_anything_is_written_or_is_merged_as_the_general_route_merges_it()
    {
        var poisoned = (float[])_tuned[1].Clone();
        poisoned[123_457] = float.NaN;
        poisoned[250_001] = float.PositiveInfinity;
        var model = _models.Write("poisoned", new[] { TestTensor.Bf16(Name, poisoned) });
        foreach (var file in Directory.GetFiles(_models.PathOf("poisoned"), "*.safetensors")) File.ReadAllBytes(file);
        var plan = TaskVector.Combine(new[] { _vectors[0], TaskVector.FromModels(_vectors[0].Base, model), _vectors[2] },
            new MergeOptions(MergeMethod.Ties, new TensorParameter[] { 1, 1, 1 }, true, 1, new TensorParameter[] { 0.3, 0.2, 0.45 }));

        var refused = new MergeExecutor { FusedOnAnyProcessor = true };
        var error = Assert.Throws<DareException>(() => refused.Export(plan, new ExportOptions { Destination = _models.PathOf("refused") }));
        Assert.Equal(DareErrorId.NonFiniteValues, error.ErrorId);
        Assert.False(Directory.Exists(_models.PathOf("refused")));

        var counted = new MergeExecutor { FusedOnAnyProcessor = true };
        counted.Export(plan, new ExportOptions { Destination = _models.PathOf("nan-counted"), OutputDType = SafetensorsDType.F32, AllowNonFinite = true });
        var general = new MergeExecutor { SinglePassLinear = false };
        general.Export(plan, new ExportOptions { Destination = _models.PathOf("nan-general"), OutputDType = SafetensorsDType.F32, AllowNonFinite = true });

        Assert.Equal(1, counted.TensorsCounted);
        var countedFloats = TestModels.ReadFloats(Checkpoint.Open(_models.PathOf("nan-counted")), Name);
        Reference.AssertBitEqual(TestModels.ReadFloats(Checkpoint.Open(_models.PathOf("nan-general")), Name), countedFloats, Name);
    }

    [Fact]
    public void A_tensor_whose_inputs_are_not_in_the_page_cache_takes_the_general_route()
    {
        foreach (var file in Directory.GetFiles(_models.Root, "*.safetensors", SearchOption.AllDirectories)) PageCache.Drop(file);
        var plan = Plan("ties", 3);
        var executor = new MergeExecutor { FusedOnAnyProcessor = true };
        executor.Export(plan, new ExportOptions { Destination = _models.PathOf("cold"), OutputDType = SafetensorsDType.F32 });

        Assert.Equal(0, executor.TensorsCounted);
    }
}
