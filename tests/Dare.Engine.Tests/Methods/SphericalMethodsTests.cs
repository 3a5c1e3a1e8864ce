using Dare.Engine.Merge;
using Dare.Engine.Recipes;
using Dare.Engine.Safetensors;
using Dare.Engine.Tests.Merge;
using Xunit;

namespace Dare.Engine.Tests.Methods;

/// <summary>slerp, nuslerp, multislerp, karcher and model_stock against mergekit's algorithms written out in <see cref="SphericalReference"/>.</summary>
public sealed class SphericalMethodsTests : IDisposable
{
    private readonly TestModels _models = new();

    public void Dispose() => _models.Dispose();

    private static MergeOptions Options(string method, int count, Dictionary<string, TensorParameter>? settings = null, double[]? weights = null, bool wholeWeights = false) =>
        new(MergeMethods.Find(method)!, (weights ?? Enumerable.Repeat(1.0, count).ToArray()).Select(w => (TensorParameter)w).ToList(), Normalize: false)
        {
            Settings = settings ?? new Dictionary<string, TensorParameter>(),
            WholeWeights = wholeWeights,
        };

    private static double[] D(float[] values) => values.Select(v => (double)v).ToArray();

    /// <summary>Values a bfloat16 checkpoint holds: their δs are exact in float32, so base + δ gives the model back bit for bit.</summary>
    private static float[] Stored(float[] values) => values.Select(v => Bf16Bits.ToFloat(Bf16Bits.FromFloat(v))).ToArray();

    /// <summary>Float32 merges agree with the float64 reference to float32 rounding of values of about this size.</summary>
    private static void AssertClose(double[] expected, float[] actual, double tolerance = 2e-6)
    {
        Assert.Equal(expected.Length, actual.Length);
        var scale = Math.Max(1, expected.Max(Math.Abs));
        var worst = expected.Select((e, i) => Math.Abs(e - actual[i])).Max();
        Assert.True(worst <= tolerance * scale, $"largest difference {worst} exceeds {tolerance * scale}");
    }

    private (Checkpoint Base, Checkpoint[] Models) Write(string name, float[] @base, float[][] models, long[] shape)
    {
        var baseModel = _models.Write(name + "-base", new[] { TestTensor.F32("w", @base, shape) });
        return (baseModel, models.Select((m, i) => _models.Write($"{name}-m{i}", new[] { TestTensor.F32("w", m, shape) })).ToArray());
    }

    private float[] Merge(string name, float[] @base, float[][] models, MergeOptions options, long[]? shape = null, long? chunkElements = null)
    {
        var (baseModel, checkpoints) = Write(name, @base, models, shape ?? new long[] { @base.Length });
        var vectors = checkpoints.Select(c => TaskVector.FromModels(baseModel, c)).ToList();
        return TestModels.ReadFloats(_models.Export(TaskVector.Combine(vectors, options), name + "-out", chunkElements: chunkElements), "w");
    }

    [Theory]
    [InlineData(0.3, null)]
    [InlineData(0.75, 17L)]
    public void Slerp_is_mergekits_spherical_interpolation_from_the_base(double t, long? chunk)
    {
        var random = new Random(11);
        var @base = TestModels.RandomFloats(random, 120);
        var other = TestModels.RandomFloats(random, 120);
        var merged = Merge("slerp", @base, new[] { other }, Options("slerp", 1, new() { ["t"] = t }), chunkElements: chunk);
        AssertClose(SphericalReference.Slerp(t, D(@base), D(other)), merged);
    }

    [Fact]
    public void Slerp_at_t_0_is_the_base_and_at_t_1_the_other_model_exactly()
    {
        var random = new Random(12);
        var @base = Stored(TestModels.RandomFloats(random, 64));
        var other = Stored(TestModels.RandomFloats(random, 64));
        Assert.Equal(@base, Merge("t0", @base, new[] { other }, Options("slerp", 1, new() { ["t"] = 0.0 })));
        Assert.Equal(other, Merge("t1", @base, new[] { other }, Options("slerp", 1, new() { ["t"] = 1.0 })));
    }

    [Theory]
    [InlineData(-3.0)]   // antiparallel: cos = −1, where the sine formula would divide by zero
    [InlineData(2.0)]    // parallel: cos = 1
    public void Slerp_of_colinear_tensors_falls_back_to_lerp(double factor)
    {
        var random = new Random(13);
        var @base = TestModels.RandomFloats(random, 50);
        var other = @base.Select(v => (float)(v * factor)).ToArray();
        var merged = Merge($"colinear{factor}", @base, new[] { other }, Options("slerp", 1, new() { ["t"] = 0.25 }));
        AssertClose(@base.Select((b, i) => 0.75 * b + 0.25 * other[i]).ToArray(), merged);
        Assert.All(merged, v => Assert.True(float.IsFinite(v)));
    }

    [Fact]
    public void Slerp_just_inside_the_threshold_interpolates_on_the_arc_and_just_outside_on_the_line()
    {
        // cos = 0.9990 (arc) and 0.9999 (line); the other model is much longer, so arc and line differ visibly.
        foreach (var (cosine, name) in new[] { (0.9990, "arc"), (0.9999, "line") })
        {
            var @base = new float[] { 1, 0, 0, 0 };
            var other = new[] { (float)(10 * cosine), (float)(10 * Math.Sqrt(1 - cosine * cosine)), 0f, 0f };
            var merged = Merge(name, @base, new[] { other }, Options("slerp", 1, new() { ["t"] = 0.5 }));
            AssertClose(SphericalReference.Slerp(0.5, D(@base), D(other)), merged);
        }
    }

    [Fact]
    public void Slerp_identical_models_and_zero_tensors_give_the_base()
    {
        var @base = TestModels.RandomFloats(new Random(14), 30);
        Assert.Equal(@base, Merge("same", @base, new[] { @base.ToArray() }, Options("slerp", 1, new() { ["t"] = 0.4 })));
        var zeros = new float[30];
        Assert.Equal(zeros, Merge("zeros", zeros, new[] { zeros.ToArray() }, Options("slerp", 1, new() { ["t"] = 0.4 })));
    }

    [Fact]
    public void Slerp_t_follows_a_gradient_across_layers()
    {
        var random = new Random(15);
        var names = new[] { "model.layers.0.w", "model.layers.1.w", "model.layers.2.w" };
        var @base = names.ToDictionary(n => n, _ => TestModels.RandomFloats(random, 40));
        var other = names.ToDictionary(n => n, _ => TestModels.RandomFloats(random, 40));
        var baseModel = _models.Write("gbase", names.Select(n => TestTensor.F32(n, @base[n])));
        var otherModel = _models.Write("gother", names.Select(n => TestTensor.F32(n, other[n])));
        var options = Options("slerp", 1, new() { ["t"] = new GradientParameter(new[] { 0.0, 1.0 }) });
        var output = _models.Export(TaskVector.Combine(new[] { TaskVector.FromModels(baseModel, otherModel) }, options), "gout");
        for (var layer = 0; layer < 3; layer++)
        {
            AssertClose(SphericalReference.Slerp(layer / 2.0, D(@base[names[layer]]), D(other[names[layer]])), TestModels.ReadFloats(output, names[layer]));
        }
    }

    [Theory]
    [InlineData(true, false, true)]
    [InlineData(false, false, true)]
    [InlineData(false, true, true)]
    [InlineData(true, false, false)]
    [InlineData(false, true, false)]
    public void NuSlerp_interpolates_at_w2_over_w1_plus_w2_by_tensor_rows_or_columns(bool flatten, bool rowWise, bool withBase)
    {
        var random = new Random(16);
        var shape = new long[] { 6, 5 };
        var @base = TestModels.RandomFloats(random, 30);
        var a = TestModels.Perturb(random, @base, 0.5);
        var b = TestModels.Perturb(random, @base, 0.5);
        var settings = new Dictionary<string, TensorParameter> { ["nuslerp_flatten"] = flatten ? 1 : 0, ["nuslerp_row_wise"] = rowWise ? 1 : 0 };
        var merged = Merge($"nu{flatten}{rowWise}{withBase}", @base, new[] { a, b }, Options("nuslerp", 2, settings, new[] { 1.0, 3.0 }, wholeWeights: !withBase), shape, chunkElements: 7);
        var expected = withBase
            ? Add(D(@base), SphericalReference.NuSlerp(0.75, Sub(D(a), D(@base)), Sub(D(b), D(@base)), shape, flatten, rowWise))
            : SphericalReference.NuSlerp(0.75, D(a), D(b), shape, flatten, rowWise);
        AssertClose(expected, merged);
    }

    [Fact]
    public void NuSlerp_of_zero_task_vectors_is_the_base_and_weights_summing_to_zero_take_t_one_half()
    {
        var @base = TestModels.RandomFloats(new Random(17), 12);
        Assert.Equal(@base, Merge("nuzero", @base, new[] { @base.ToArray(), @base.ToArray() }, Options("nuslerp", 2, weights: new[] { 1.0, 1.0 })));
        var random = new Random(18);
        var a = TestModels.RandomFloats(random, 12);
        var b = TestModels.RandomFloats(random, 12);
        var merged = Merge("nusum0", @base, new[] { a, b }, Options("nuslerp", 2, weights: new[] { 1.0, -1.0 }, wholeWeights: true));
        AssertClose(SphericalReference.NuSlerp(0.5, D(a), D(b), new long[] { 12 }, true, false), merged);
    }

    [Theory]
    [InlineData(true, true)]
    [InlineData(false, true)]
    [InlineData(true, false)]
    public void MultiSlerp_is_the_weighted_spherical_mean_in_tangent_space(bool withBase, bool normalizeWeights)
    {
        var random = new Random(19);
        var @base = TestModels.RandomFloats(random, 90);
        var models = Enumerable.Range(0, 3).Select(_ => TestModels.Perturb(random, @base, 0.6)).ToArray();
        var weights = new[] { 0.5, 1.0, 2.0 };
        var settings = new Dictionary<string, TensorParameter> { ["normalize_weights"] = normalizeWeights ? 1 : 0, ["eps"] = 1e-8 };
        var merged = Merge($"multi{withBase}{normalizeWeights}", @base, models, Options("multislerp", 3, settings, weights, wholeWeights: !withBase), chunkElements: 32);
        var expected = withBase
            ? Add(D(@base), SphericalReference.MultiSlerp(models.Select(m => Sub(D(m), D(@base))).ToArray(), weights, normalizeWeights))
            : SphericalReference.MultiSlerp(models.Select(D).ToArray(), weights, normalizeWeights);
        AssertClose(expected, merged);
    }

    [Fact]
    public void MultiSlerp_of_one_model_is_that_model_and_of_two_antipodal_ones_the_weighted_sum()
    {
        var random = new Random(20);
        var @base = Stored(TestModels.RandomFloats(random, 20));
        var a = Stored(TestModels.RandomFloats(random, 20));
        Assert.Equal(a, Merge("multi1", @base, new[] { a }, Options("multislerp", 1, weights: new[] { 2.0 })));
        var minus = a.Select(v => -v).ToArray();
        var merged = Merge("anti", @base, new[] { a, minus }, Options("multislerp", 2, weights: new[] { 1.0, 1.0 }, wholeWeights: true));
        AssertClose(SphericalReference.MultiSlerp(new[] { D(a), D(minus) }, new[] { 1.0, 1.0 }, true), merged);
    }

    [Fact]
    public void MultiSlerp_of_zero_task_vectors_is_the_base_where_mergekit_would_stop()
    {
        var @base = TestModels.RandomFloats(new Random(27), 12);
        Assert.Equal(@base, Merge("multizero", @base, new[] { @base.ToArray(), @base.ToArray(), @base.ToArray() }, Options("multislerp", 3)));
    }

    [Fact]
    public void MultiSlerp_of_three_antipodal_models_that_balance_out_is_an_error_naming_the_tensor()
    {
        var a = new float[] { 1, 2, 3 };
        var (baseModel, models) = Write("anti3", a, new[] { a, a.Select(v => -v).ToArray(), a.Select(v => -v).ToArray() }, new long[] { 3 });
        var vector = TaskVector.Combine(models.Select(m => TaskVector.FromModels(baseModel, m)).ToList(), Options("multislerp", 3, weights: new[] { 2.0, 1.0, 1.0 }, wholeWeights: true));
        var error = Assert.Throws<DareException>(() => _models.Export(vector, "anti3-out"));
        Assert.Equal(DareErrorId.SphericalMeanUndefined, error.ErrorId);
        Assert.Equal("w", error.TensorName);
        Assert.False(Directory.Exists(_models.PathOf("anti3-out")));
    }

    [Theory]
    [InlineData(10, 1e-5)]
    [InlineData(2, 1e-5)]
    [InlineData(10, 0.5)]
    public void Karcher_is_mergekits_riemannian_mean_scaled_by_the_mean_norm(int maxIter, double tol)
    {
        var random = new Random(21);
        var @base = TestModels.RandomFloats(random, 80);
        var models = Enumerable.Range(0, 3).Select(_ => TestModels.RandomFloats(random, 80)).Prepend(new float[80]).ToArray();
        var settings = new Dictionary<string, TensorParameter> { ["max_iter"] = maxIter, ["tol"] = tol };
        var merged = Merge($"karcher{maxIter}{tol}", @base, models, Options("karcher", 4, settings), chunkElements: 30);
        AssertClose(SphericalReference.Karcher(models.Select(D).ToArray(), maxIter, tol), merged);
    }

    [Fact]
    public void Karcher_of_identical_models_is_that_model_and_of_zero_tensors_zero()
    {
        var a = TestModels.RandomFloats(new Random(22), 25);
        AssertClose(D(a), Merge("ksame", new float[25], new[] { a, a.ToArray() }, Options("karcher", 2)));
        Assert.Equal(new float[25], Merge("kzero", a, new[] { new float[25], new float[25] }, Options("karcher", 2)));
    }

    [Theory]
    [InlineData(false, 2)]
    [InlineData(false, 3)]
    [InlineData(true, 3)]
    public void ModelStock_moves_toward_the_mean_by_t_from_the_mean_pairwise_cosine(bool filterWise, int count)
    {
        var random = new Random(23);
        var shape = new long[] { 8, 6 };
        var @base = TestModels.RandomFloats(random, 48);
        var shared = TestModels.RandomFloats(random, 48);
        // Task vectors with a common part, so the cosines are well away from 0.
        var models = Enumerable.Range(0, count).Select(_ => TestModels.Perturb(random, @base.Select((b, i) => b + shared[i]).ToArray(), 0.8)).ToArray();
        var settings = new Dictionary<string, TensorParameter> { ["filter_wise"] = filterWise ? 1 : 0 };
        var merged = Merge($"stock{filterWise}{count}", @base, models, Options("model_stock", count, settings), shape, chunkElements: 10);
        AssertClose(SphericalReference.ModelStock(D(@base), models.Select(D).ToArray(), shape, filterWise), merged);
    }

    [Fact]
    public void ModelStock_of_zero_deltas_is_the_base_of_identical_models_the_model_and_needs_two_models()
    {
        var random = new Random(24);
        var @base = TestModels.RandomFloats(random, 16);
        Assert.Equal(@base, Merge("szero", @base, new[] { @base.ToArray(), @base.ToArray() }, Options("model_stock", 2)));
        var a = TestModels.RandomFloats(random, 16);
        AssertClose(D(a), Merge("ssame", @base, new[] { a, a.ToArray() }, Options("model_stock", 2)));
        var (baseModel, models) = Write("sone", @base, new[] { a }, new long[] { 16 });
        var error = Assert.Throws<DareException>(() => TaskVector.Combine(new[] { TaskVector.FromModels(baseModel, models[0]) }, Options("model_stock", 1)));
        Assert.Equal(DareErrorId.InvalidParameter, error.ErrorId);
    }

    [Fact]
    public void Bfloat16_models_give_the_reference_rounded_to_bfloat16_up_to_one_unit_in_the_last_place()
    {
        var random = new Random(25);
        float Round(float v) => Bf16Bits.ToFloat(Bf16Bits.FromFloat(v));
        var @base = TestModels.RandomFloats(random, 500).Select(Round).ToArray();
        var other = TestModels.Perturb(random, @base, 0.3).Select(Round).ToArray();
        var baseModel = _models.Write("b16", new[] { TestTensor.Bf16("w", @base) });
        var otherModel = _models.Write("o16", new[] { TestTensor.Bf16("w", other) });
        var vector = TaskVector.Combine(new[] { TaskVector.FromModels(baseModel, otherModel) }, Options("slerp", 1, new() { ["t"] = 0.35 }));
        var output = _models.Export(vector, "out16", dtype: SafetensorsDType.BF16);
        var expected = SphericalReference.Slerp(0.35, D(@base), D(other)).Select(v => Bf16Bits.FromFloat((float)v)).ToArray();
        var actual = TestModels.ReadRaw<ushort>(output.Find("w")!);
        Assert.All(expected.Zip(actual), p => Assert.InRange(Math.Abs(p.First - p.Second), 0, 1));
        Assert.True(expected.Zip(actual).Count(p => p.First == p.Second) >= expected.Length * 0.98);
    }

    [Theory]
    [InlineData("slerp", false)]
    [InlineData("model_stock", true)]
    [InlineData("nuslerp", false)]
    public void Tensors_of_several_blocks_match_the_reference_and_give_the_same_bytes_in_chunks_of_whole_blocks(string method, bool rows)
    {
        // 3 blocks and a bit: the float64 sums run block by block; chunks that are whole blocks change nothing.
        var random = new Random(26);
        var shape = new long[] { 3 * 256 + 1, 257 };
        var n = (int)(shape[0] * shape[1]);
        var @base = TestModels.RandomFloats(random, n);
        var models = new[] { TestModels.Perturb(random, @base, 0.3), TestModels.Perturb(random, @base, 0.3) };
        var inputs = method == "slerp" ? models.Take(1).ToArray() : models;
        var settings = new Dictionary<string, TensorParameter> { ["t"] = 0.4, ["filter_wise"] = rows ? 1 : 0 };
        var whole = Merge(method + "-whole", @base, inputs, Options(method, inputs.Length, settings), shape);
        var chunked = Merge(method + "-blocks", @base, inputs, Options(method, inputs.Length, settings), shape, chunkElements: 2 * GramKernels.Block);
        Assert.Equal(whole, chunked);
        var expected = method switch
        {
            "slerp" => SphericalReference.Slerp(0.4, D(@base), D(models[0])),
            "model_stock" => SphericalReference.ModelStock(D(@base), models.Select(D).ToArray(), shape, rows),
            _ => Add(D(@base), SphericalReference.NuSlerp(0.5, Sub(D(models[0]), D(@base)), Sub(D(models[1]), D(@base)), shape, true, false)),
        };
        AssertClose(expected, whole);
    }

    private static double[] Add(double[] a, double[] b) => a.Select((x, i) => x + b[i]).ToArray();
    private static double[] Sub(double[] a, double[] b) => a.Select((x, i) => x - b[i]).ToArray();
}
