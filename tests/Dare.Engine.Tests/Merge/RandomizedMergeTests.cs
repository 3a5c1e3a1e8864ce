using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using Xunit;

namespace Dare.Engine.Tests.Merge;

/// <summary>Random small models merged by the executor, checked against the plain re-implementation in <see cref="Reference"/>.</summary>
public sealed class RandomizedMergeTests : IDisposable
{
    private static readonly (string Name, long[] Shape)[] Shapes =
    {
        ("model.embed_tokens.weight", new long[] { 37 }),
        ("model.layers.0.mlp.up_proj.weight", new long[] { 9, 13 }),
        ("model.layers.1.self_attn.q_proj.weight", new long[] { 4, 5, 6 }),
        ("model.norm.weight", new long[] { 1 }),
    };

    private readonly TestModels _models = new();
    private readonly Dictionary<string, float[]> _base = new();
    private readonly List<Dictionary<string, float[]>> _tuned = new();
    private readonly Checkpoint _baseCheckpoint;
    private readonly List<TaskVector> _vectors = new();

    public RandomizedMergeTests()
    {
        var random = new Random(1234);
        foreach (var (name, shape) in Shapes) _base[name] = TestModels.RandomFloats(random, (int)shape.Aggregate(1L, (a, b) => a * b));
        _baseCheckpoint = _models.Write("base", Shapes.Select(s => TestTensor.F32(s.Name, _base[s.Name], s.Shape)));
        for (var m = 0; m < 3; m++)
        {
            // Different spreads per model so the magnitudes (and the TIES trim) differ between models.
            var tuned = Shapes.ToDictionary(s => s.Name, s => TestModels.Perturb(random, _base[s.Name], 0.05 * (m + 1)));
            _tuned.Add(tuned);
            var checkpoint = _models.Write($"tuned{m}", Shapes.Select(s => TestTensor.F32(s.Name, tuned[s.Name], s.Shape)));
            _vectors.Add(TaskVector.FromModels(_baseCheckpoint, checkpoint));
        }
    }

    public void Dispose() => _models.Dispose();

    private float[][] Deltas(string tensor) => _tuned.Select(t => Reference.Delta(_base[tensor], t[tensor])).ToArray();

    private static TensorParameter[] Parameters(params double[] values) => values.Select(v => (TensorParameter)v).ToArray();

    public static TheoryData<double, double, double, bool, double, SignMethod> TiesCases => new()
    {
        { 0.1, 0.3, 1.0, true, 1.0, SignMethod.Sum },
        { 0.3, 0.3, 0.3, true, 0.8, SignMethod.Sum },
        { 1.0, 0.1, 0.3, false, 1.7, SignMethod.Sum },
        { 0.3, 1.0, 0.1, true, 0.6, SignMethod.Count },
        { 1.0, 1.0, 1.0, false, 1.0, SignMethod.Count },
    };

    [Theory]
    [MemberData(nameof(TiesCases))]
    public void Ties_export_matches_a_plain_reimplementation(double k0, double k1, double k2, bool normalize, double lambda, SignMethod sign)
    {
        var weights = new[] { 0.7, 1.3, 0.4 };
        var keep = new[] { k0, k1, k2 };
        var merged = TaskVector.Combine(_vectors, new MergeOptions(MergeMethod.Ties, Parameters(weights), normalize, lambda, Parameters(keep), sign));
        var output = _models.Export(merged, "out");
        foreach (var (name, _) in Shapes)
        {
            var expected = Reference.Apply(_base[name], Reference.Ties(Deltas(name), weights, keep, normalize, lambda, sign));
            Reference.AssertClose(expected, TestModels.ReadFloats(output, name), what: name);
        }
    }

    [Theory]
    [InlineData(true, 1.0)]
    [InlineData(true, 0.45)]
    [InlineData(false, 1.0)]
    [InlineData(false, -0.7)]
    public void Linear_export_matches_a_plain_reimplementation(bool normalize, double lambda)
    {
        var weights = new[] { 0.7, 1.3, 0.4 };
        var merged = TaskVector.Combine(_vectors, new MergeOptions(MergeMethod.Linear, Parameters(weights), normalize, lambda));
        var output = _models.Export(merged, "out");
        foreach (var (name, _) in Shapes)
        {
            var expected = Reference.Apply(_base[name], Reference.Linear(Deltas(name), weights, normalize, lambda));
            Reference.AssertClose(expected, TestModels.ReadFloats(output, name), what: name);
        }
    }

    [Fact]
    public void Linear_merge_with_negative_weights_is_allowed_without_normalize()
    {
        var weights = new[] { 1.0, -0.5, 0.25 };
        var merged = TaskVector.Combine(_vectors, new MergeOptions(MergeMethod.Linear, Parameters(weights), Normalize: false));
        var output = _models.Export(merged, "out", deltaOnly: true);
        foreach (var (name, _) in Shapes)
        {
            Reference.AssertClose(Reference.ToFloats(Reference.Linear(Deltas(name), weights, false, 1.0)), TestModels.ReadFloats(output, name), what: name);
        }
    }

    [Fact]
    public void Ties_of_dare_vectors_matches_a_plain_reimplementation_using_the_scalar_mask_definition()
    {
        // The mask itself is DareMask's hash (tested separately); everything else is recomputed here.
        var rates = new[] { 0.3, 0.6, 0.0 };
        var weights = new[] { 1.0, 0.5, 2.0 };
        var keep = new[] { 0.3, 1.0, 0.1 };
        var dared = _vectors.Select((v, i) => v.WithDare(new DareOptions(rates[i], Seed: 42, Stream: i))).ToList();
        var merged = TaskVector.Combine(dared, new MergeOptions(MergeMethod.Ties, Parameters(weights), Normalize: true, Lambda: 1.2, Parameters(keep)));
        var output = _models.Export(merged, "out");
        foreach (var (name, _) in Shapes)
        {
            var deltas = Deltas(name);
            for (var i = 0; i < deltas.Length; i++)
            {
                var key = DareMask.Key(42, i, name);
                var threshold = DareMask.Threshold(rates[i]);
                var scale = (float)(1.0 / (1.0 - rates[i]));
                for (var j = 0; j < deltas[i].Length; j++)
                {
                    deltas[i][j] = DareMask.IsDropped(key, j, threshold) ? 0f : deltas[i][j] * scale;
                }
            }
            var expected = Reference.Apply(_base[name], Reference.Ties(deltas, weights, keep, true, 1.2));
            Reference.AssertClose(expected, TestModels.ReadFloats(output, name), what: name);
        }
    }

    [Fact]
    public void Merge_output_has_the_base_tensor_names_shapes_and_requested_dtype()
    {
        var merged = TaskVector.Combine(_vectors, new MergeOptions(MergeMethod.Linear, Parameters(1, 1, 1), Normalize: true));
        var output = _models.Export(merged, "out", dtype: SafetensorsDType.F32);
        Assert.Equal(Shapes.Select(s => s.Name), output.Tensors.Select(t => t.Name));
        Assert.Equal(Shapes.Select(s => s.Shape), output.Tensors.Select(t => t.Shape));
        Assert.All(output.Tensors, t => Assert.Equal(SafetensorsDType.F32, t.DType));
    }
}
