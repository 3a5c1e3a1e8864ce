using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using Xunit;

namespace Dare.Engine.Tests.Merge;

/// <summary>The output depends only on the plan: not on chunking, shard layout or tensor order of the inputs.</summary>
public sealed class ChunkingAndLayoutTests : IDisposable
{
    private static readonly (string Name, long[] Shape)[] Shapes =
    {
        ("model.embed_tokens.weight", new long[] { 61 }),
        ("model.layers.0.mlp.up_proj.weight", new long[] { 9, 13 }),
        ("model.layers.1.mlp.up_proj.weight", new long[] { 5, 3, 7 }),
        ("model.norm.weight", new long[] { 3 }),
    };

    private readonly TestModels _models = new();
    private readonly Checkpoint _base;
    private readonly List<Dictionary<string, float[]>> _tuned = new();
    private readonly List<TaskVector> _vectors = new();

    public ChunkingAndLayoutTests()
    {
        var random = new Random(31);
        var @base = Shapes.ToDictionary(s => s.Name, s => TestModels.RandomFloats(random, (int)s.Shape.Aggregate(1L, (a, b) => a * b)));
        // Coarse values make many exact magnitude ties, so the TIES tie rule is exercised across chunk boundaries.
        foreach (var values in @base.Values)
        {
            for (var i = 0; i < values.Length; i++) values[i] = MathF.Round(values[i] * 8) / 8;
        }
        _base = _models.Write("base", Shapes.Select(s => TestTensor.F32(s.Name, @base[s.Name], s.Shape)));
        for (var m = 0; m < 3; m++)
        {
            var tuned = Shapes.ToDictionary(s => s.Name, s => @base[s.Name].Select(v => v + random.Next(-4, 5) / 16f).ToArray());
            _tuned.Add(tuned);
            var checkpoint = _models.Write($"tuned{m}", Shapes.Select(s => TestTensor.F32(s.Name, tuned[s.Name], s.Shape)));
            _vectors.Add(TaskVector.FromModels(_base, checkpoint));
        }
    }

    public void Dispose() => _models.Dispose();

    private static TensorParameter[] Parameters(params double[] values) => values.Select(v => (TensorParameter)v).ToArray();

    private TaskVector Plan(string kind, IReadOnlyList<TaskVector> vectors) => kind switch
    {
        "dare" => vectors[0].WithDare(new DareOptions(0.4, 7, 0)),
        "dare-l1" => vectors[0].WithDare(new DareOptions(0.4, 7, 0, DareRescale.L1)),
        "ties" => TaskVector.Combine(vectors, new MergeOptions(MergeMethod.Ties, Parameters(1, 0.6, 0.3), true, 0.9, Parameters(0.3, 0.3, 0.3))),
        "dare-ties" => TaskVector.Combine(
            vectors.Select((v, i) => v.WithDare(new DareOptions(0.5, 3, i))).ToList(),
            new MergeOptions(MergeMethod.Ties, Parameters(1, 1, 2), true, 1.0, Parameters(0.3, 0.5, 1.0), SignMethod.Count)),
        "dare-l1-ties" => TaskVector.Combine(
            vectors.Select((v, i) => v.WithDare(new DareOptions(0.3, 3, i, DareRescale.L1))).ToList(),
            new MergeOptions(MergeMethod.Ties, Parameters(1, 1, 1), false, 1.0, Parameters(0.3, 0.3, 0.3))),
        "dare-linear" => TaskVector.Combine(
            vectors.Select((v, i) => v.WithDare(new DareOptions(0.7, 3, i))).ToList(),
            new MergeOptions(MergeMethod.Linear, Parameters(0.2, 0.3, 0.5), true, 1.5)),
        _ => throw new ArgumentOutOfRangeException(nameof(kind)),
    };

    private byte[] ExportBytes(TaskVector plan, string name, long? chunkElements = null)
    {
        _models.Export(plan, name, chunkElements: chunkElements);
        return File.ReadAllBytes(Path.Combine(_models.PathOf(name), Checkpoint.SingleFileName));
    }

    [Theory]
    [InlineData("dare", 7)]
    [InlineData("dare-l1", 7)]
    [InlineData("ties", 7)]
    [InlineData("ties", 1)]
    [InlineData("dare-ties", 7)]
    [InlineData("dare-l1-ties", 7)]
    [InlineData("dare-l1-ties", 2)]
    [InlineData("dare-linear", 7)]
    public void Output_is_identical_whatever_the_chunk_size(string kind, long chunkElements)
    {
        var plan = Plan(kind, _vectors);
        var whole = ExportBytes(plan, "whole");
        var chunked = ExportBytes(plan, "chunked", chunkElements);
        Assert.Equal(whole, chunked);
    }

    [Theory]
    [InlineData("dare")]
    [InlineData("dare-l1")]
    [InlineData("ties")]
    [InlineData("dare-ties")]
    public void Compute_delta_is_identical_whatever_the_chunk_size(string kind)
    {
        var plan = Plan(kind, _vectors);
        foreach (var (name, _) in Shapes)
        {
            using var whole = new MergeExecutor().ComputeDelta(plan, name);
            using var chunked = new MergeExecutor(chunkElements: 7).ComputeDelta(plan, name);
            Assert.Equal(whole.shape, chunked.shape);
            Reference.AssertBitEqual(whole.data<float>().ToArray(), chunked.data<float>().ToArray(), name);
        }
    }

    [Fact]
    public void Chunked_ties_matches_the_plain_reimplementation_with_many_magnitude_ties()
    {
        var weights = new[] { 1, 0.6, 0.3 };
        var keep = new[] { 0.3, 0.3, 0.3 };
        var output = _models.Export(Plan("ties", _vectors), "out", deltaOnly: true, chunkElements: 7);
        foreach (var (name, _) in Shapes)
        {
            var baseValues = TestModels.ReadFloats(_base, name);
            var deltas = _tuned.Select(t => Reference.Delta(baseValues, t[name])).ToArray();
            Reference.AssertClose(Reference.ToFloats(Reference.Ties(deltas, weights, keep, true, 0.9)), TestModels.ReadFloats(output, name), what: name);
        }
    }

    [Theory]
    [InlineData("dare-ties")]
    [InlineData("dare-l1-ties")]
    [InlineData("dare-linear")]
    public void Output_is_identical_when_a_fine_tune_is_sharded_with_reversed_tensor_order(string kind)
    {
        // tuned1 again, as 3+ shards (each tensor alone) with the tensors in reverse order.
        var reversed = _models.Write("tuned1-sharded", Shapes.Reverse().Select(s => TestTensor.F32(s.Name, _tuned[1][s.Name], s.Shape)), maxShardSize: 64);
        Assert.Equal(CheckpointLayout.Sharded, reversed.Layout);
        Assert.True(reversed.Files.Count >= 3);
        Assert.Equal(Shapes.Reverse().Select(s => s.Name).First(), reversed.Files.Select(f => SafetensorsFile.Open(f).Tensors[0].Name).First());
        var relaid = new List<TaskVector> { _vectors[0], TaskVector.FromModels(_base, reversed), _vectors[2] };
        Assert.Equal(ExportBytes(Plan(kind, _vectors), "plain"), ExportBytes(Plan(kind, relaid), "relaid"));
    }

    [Fact]
    public void Output_sharding_does_not_change_the_tensors()
    {
        var plan = Plan("dare-ties", _vectors);
        var single = _models.Export(plan, "single");
        var sharded = _models.Export(plan, "sharded", maxShardSize: 100);
        Assert.Equal(CheckpointLayout.Sharded, sharded.Layout);
        foreach (var (name, _) in Shapes)
        {
            Reference.AssertBitEqual(TestModels.ReadFloats(single, name), TestModels.ReadFloats(sharded, name), name);
        }
    }
}
