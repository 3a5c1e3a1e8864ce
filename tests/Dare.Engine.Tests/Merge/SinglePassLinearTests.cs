using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using Xunit;

namespace Dare.Engine.Tests.Merge;

/// <summary>
/// Linear merges of bfloat16 models take a single-pass route (raw chunks to output bytes, block by block). It must
/// write exactly the bytes of the general route (float32 chunks, then the combine), which the reference tests check.
/// </summary>
public sealed class SinglePassLinearTests : IDisposable
{
    private static readonly (string Name, long[] Shape)[] Shapes =
    {
        ("model.embed_tokens.weight", new long[] { 61, 3 }),
        ("model.layers.0.mlp.up_proj.weight", new long[] { 9, 13 }),
        ("model.layers.1.self_attn.q_proj.weight", new long[] { 20_011 }),
        // Split over two cores (64K elements or more each), each part read in several 64K pieces that start off any block boundary.
        ("model.layers.2.mlp.down_proj.weight", new long[] { 300_007 }),
        ("model.norm.weight", new long[] { 3 }),
    };

    private readonly TestModels _models = new();
    private readonly Checkpoint _base;
    private readonly List<TaskVector> _vectors = new();
    private readonly Dictionary<string, float[]> _baseValues = new();
    private readonly List<Dictionary<string, float[]>> _tunedValues = new();

    public SinglePassLinearTests()
    {
        var random = new Random(77);
        foreach (var (name, shape) in Shapes)
        {
            var values = TestModels.RandomFloats(random, (int)shape.Aggregate(1L, (a, b) => a * b));
            values[0] = -0f;
            _baseValues[name] = values.Select(v => Bf16Bits.ToFloat(Bf16Bits.FromFloat(v))).ToArray();
        }
        _base = _models.Write("base", Shapes.Select(s => TestTensor.Bf16(s.Name, _baseValues[s.Name], s.Shape)));
        for (var m = 0; m < 3; m++)
        {
            var tuned = Shapes.ToDictionary(s => s.Name, s => TestModels.Perturb(random, _baseValues[s.Name], 0.01 * (m + 1))
                .Select(v => Bf16Bits.ToFloat(Bf16Bits.FromFloat(v))).ToArray());
            _tunedValues.Add(tuned);
            _vectors.Add(TaskVector.FromModels(_base, _models.Write($"tuned{m}", Shapes.Select(s => TestTensor.Bf16(s.Name, tuned[s.Name], s.Shape)))));
        }
    }

    public void Dispose() => _models.Dispose();

    private static TensorParameter[] Parameters(params double[] values) => values.Select(v => (TensorParameter)v).ToArray();

    private TaskVector Plan(string kind) => kind switch
    {
        "dare-linear" => TaskVector.Combine(_vectors.Select((v, i) => v.WithDare(new DareOptions(0.7, 42, i))).ToList(),
            new MergeOptions(MergeMethod.Linear, Parameters(1, 0.6, 0.3), true, 0.9)),
        "linear" => TaskVector.Combine(_vectors, new MergeOptions(MergeMethod.Linear, Parameters(0.5, 0.25, 0.25), false, 1.0)),
        "task-arithmetic" => TaskVector.Combine(_vectors, new MergeOptions(MergeMethod.Linear, Parameters(1, 1, 1), false, -0.4)),
        "dare" => _vectors[1].WithDare(new DareOptions(0.9, 3, 0)),
        "plain" => _vectors[2],
        _ => throw new ArgumentOutOfRangeException(nameof(kind)),
    };

    private SortedDictionary<string, byte[]> Export(TaskVector plan, string name, bool singlePass, SafetensorsDType dtype, bool deltaOnly, long chunkElements)
    {
        var executor = new MergeExecutor(chunkElements: chunkElements) { SinglePassLinear = singlePass };
        executor.Export(plan, new ExportOptions { Destination = _models.PathOf(name), OutputDType = dtype, DeltaOnly = deltaOnly, MaxShardSize = 40_000 });
        return Safetensors.WriterHelper.Snapshot(_models.PathOf(name));
    }

    [Theory]
    [InlineData("dare-linear", SafetensorsDType.BF16, false, 1L << 24)]
    [InlineData("dare-linear", SafetensorsDType.BF16, false, 7)]
    [InlineData("dare-linear", SafetensorsDType.F32, false, 4099)]
    [InlineData("dare-linear", SafetensorsDType.BF16, true, 1L << 24)]
    [InlineData("linear", SafetensorsDType.BF16, false, 1L << 24)]
    [InlineData("task-arithmetic", SafetensorsDType.BF16, false, 100)]
    [InlineData("dare", SafetensorsDType.BF16, false, 1L << 24)]
    [InlineData("plain", SafetensorsDType.F32, true, 1L << 24)]
    public void Writes_the_bytes_of_the_general_route(string kind, SafetensorsDType dtype, bool deltaOnly, long chunkElements)
    {
        var plan = Plan(kind);
        var single = Export(plan, "single", singlePass: true, dtype, deltaOnly, chunkElements);
        var general = Export(plan, "general", singlePass: false, dtype, deltaOnly, chunkElements);

        Assert.Equal(general.Keys, single.Keys);
        foreach (var (file, bytes) in general) Assert.True(bytes.AsSpan().SequenceEqual(single[file]), $"{file} differs");
    }

    [Fact]
    public void Linear_merge_of_bfloat16_models_matches_the_plain_reimplementation()
    {
        var weights = new[] { 0.5, 0.25, 0.25 };
        var output = _models.Export(Plan("linear"), "out", dtype: SafetensorsDType.F32);
        foreach (var (name, _) in Shapes)
        {
            var deltas = _tunedValues.Select(t => Reference.Delta(_baseValues[name], t[name])).ToArray();
            var expected = Reference.Apply(_baseValues[name], Reference.Linear(deltas, weights, normalize: false, lambda: 1.0));
            Reference.AssertClose(expected, TestModels.ReadFloats(output, name), what: name);
        }
    }
}
