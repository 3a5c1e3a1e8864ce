using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using Xunit;

namespace Dare.Engine.Tests.Merge;

/// <summary>Missing and non-float tensors, and the validation errors of plans.</summary>
public sealed class MergeInputTests : IDisposable
{
    private readonly TestModels _models = new();
    private readonly float[] _weight;
    private readonly float[] _bias;
    private readonly long[] _positions = { 0, -1, long.MaxValue, long.MinValue, 42, 7 };
    private readonly Checkpoint _base;
    private readonly Random _random = new(8);

    public MergeInputTests()
    {
        _weight = TestModels.RandomFloats(_random, 24);
        _bias = TestModels.RandomFloats(_random, 6);
        _base = _models.Write("base", new[]
        {
            TestTensor.F32("w", _weight, 4, 6),
            TestTensor.I64("position_ids", _positions, 2, 3),
            TestTensor.F32("b", _bias),
        });
    }

    public void Dispose() => _models.Dispose();

    private Checkpoint Tuned(string name, bool withBias = true, long[]? positions = null)
    {
        var tensors = new List<TestTensor>
        {
            TestTensor.F32("w", TestModels.Perturb(_random, _weight), 4, 6),
            TestTensor.I64("position_ids", positions ?? _positions.Select(p => p ^ 0x5555).ToArray(), 2, 3),
        };
        if (withBias) tensors.Add(TestTensor.F32("b", TestModels.Perturb(_random, _bias)));
        return _models.Write(name, tensors);
    }

    /// <summary>A copy of <paramref name="model"/> with the missing bias filled in as the base's (a zero delta).</summary>
    private Checkpoint WithBaseBias(Checkpoint model, string name) => _models.Write(name, new[]
    {
        TestTensor.F32("w", TestModels.ReadFloats(model, "w"), 4, 6),
        TestTensor.I64("position_ids", TestModels.ReadRaw<long>(model.Find("position_ids")!), 2, 3),
        TestTensor.F32("b", _bias),
    });

    private static TensorParameter[] Parameters(params double[] values) => values.Select(v => (TensorParameter)v).ToArray();

    [Fact]
    public void Missing_tensor_is_recorded_and_contributes_a_zero_delta()
    {
        var missing = Tuned("missing", withBias: false);
        var vector = TaskVector.FromModels(_base, missing);
        Assert.Equal(new[] { "b" }, vector.MissingTensors);
        using var delta = new MergeExecutor().ComputeDelta(vector, "b");
        Assert.Equal(new float[_bias.Length], delta.data<float>().ToArray());
    }

    [Theory]
    [InlineData("linear")]
    [InlineData("ties")]
    public void Merge_with_a_missing_tensor_equals_the_merge_with_that_tensor_equal_to_the_base(string methodName)
    {
        var method = MergeMethods.Find(methodName)!;
        var full = Tuned("full");
        var missing = Tuned("missing", withBias: false);
        var filled = WithBaseBias(missing, "filled");
        var options = new MergeOptions(method, Parameters(0.6, 0.4), true, 0.9, method == MergeMethod.Ties ? Parameters(0.5, 0.5) : null);
        var withMissing = _models.Export(TaskVector.Combine(new[] { TaskVector.FromModels(_base, full), TaskVector.FromModels(_base, missing) }, options), "with-missing");
        var withZeros = _models.Export(TaskVector.Combine(new[] { TaskVector.FromModels(_base, full), TaskVector.FromModels(_base, filled) }, options), "with-zeros");
        Assert.Equal(File.ReadAllBytes(withZeros.Files[0]), File.ReadAllBytes(withMissing.Files[0]));
        // And the bias is the merge of the full model's bias delta with zeros, recomputed here.
        var deltas = new[] { Reference.Delta(_bias, TestModels.ReadFloats(full, "b")), new float[_bias.Length] };
        var expected = method == MergeMethod.Ties
            ? Reference.Ties(deltas, new[] { 0.6, 0.4 }, new[] { 0.5, 0.5 }, true, 0.9)
            : Reference.Linear(deltas, new[] { 0.6, 0.4 }, true, 0.9);
        Reference.AssertClose(Reference.Apply(_bias, expected), TestModels.ReadFloats(withMissing, "b"));
    }

    [Fact]
    public void Non_float_tensors_are_copied_bit_exact_from_the_base()
    {
        var a = TaskVector.FromModels(_base, Tuned("a"));
        var b = TaskVector.FromModels(_base, Tuned("b"));
        var merged = TaskVector.Combine(new[] { a.WithDare(new DareOptions(0.5, 1, 0)), b }, new MergeOptions(MergeMethod.Ties, Parameters(1, 1), true, 2.0, Parameters(0.3, 0.3)));
        var output = _models.Export(merged, "out", dtype: SafetensorsDType.BF16);
        var positions = output.Find("position_ids")!;
        Assert.Equal(SafetensorsDType.I64, positions.DType);
        Assert.Equal(new long[] { 2, 3 }, positions.Shape);
        Assert.Equal(_positions, TestModels.ReadRaw<long>(positions));
        Assert.Equal(SafetensorsDType.BF16, output.Find("w")!.DType);
    }

    [Theory]
    [InlineData("ties")]
    [InlineData("linear")]
    public void Scalar_and_empty_tensors_are_merged(string methodName)
    {
        var method = MergeMethods.Find(methodName)!;
        TestTensor[] Model(float scalar) => new[]
        {
            new TestTensor("scale", SafetensorsDType.F32, Array.Empty<long>(), new[] { scalar }),
            new TestTensor("empty", SafetensorsDType.F32, new long[] { 0, 4 }, Array.Empty<float>()),
        };
        var @base = _models.Write("s-base", Model(1f));
        var a = TaskVector.FromModels(@base, _models.Write("s-a", Model(3f))).WithDare(new DareOptions(0.5, 1, 0, DareRescale.L1));
        var b = TaskVector.FromModels(@base, _models.Write("s-b", Model(0f)));
        var options = new MergeOptions(method, Parameters(1, 1), true, 1.0, Parameters(0.5, 0.5));
        var output = _models.Export(TaskVector.Combine(new[] { a, b }, options), "s-out", chunkElements: 1);
        Assert.Equal(Array.Empty<long>(), output.Find("scale")!.Shape);
        Assert.Equal(new long[] { 0, 4 }, output.Find("empty")!.Shape);
        Assert.Empty(TestModels.ReadFloats(output, "empty"));
        // δa is 2 or dropped (L1 keeps the single survivor's value), δb = -1.
        var aDropped = DareMask.IsDropped(DareMask.Key(1, 0, "scale"), 0, DareMask.Threshold(0.5));
        var expected = (methodName, aDropped) switch
        {
            ("linear", false) => 1f + (2f - 1f) / 2,
            ("linear", true) => 1f - 1f / 2,
            ("ties", false) => 1f + 2f, // Σ = 1 > 0: only a agrees
            _ => 1f - 1f,                          // only b: -1
        };
        Assert.Equal(new[] { expected }, TestModels.ReadFloats(output, "scale"));
    }

    [Fact]
    public void Delta_only_export_leaves_out_non_float_tensors()
    {
        var output = _models.Export(TaskVector.FromModels(_base, Tuned("a")), "delta", deltaOnly: true);
        Assert.Equal(new[] { "w", "b" }, output.Tensors.Select(t => t.Name));
    }

    [Fact]
    public void Compute_delta_of_a_non_float_tensor_is_an_error()
    {
        var error = Assert.Throws<DareException>(() => new MergeExecutor().ComputeDelta(TaskVector.FromModels(_base, Tuned("a")), "position_ids"));
        Assert.Equal(DareErrorId.TensorDTypeMismatch, error.ErrorId);
        var missing = Assert.Throws<DareException>(() => new MergeExecutor().ComputeDelta(TaskVector.FromModels(_base, Tuned("c")), "nope"));
        Assert.Equal(DareErrorId.TensorNotFound, missing.ErrorId);
    }

    [Fact]
    public void Shape_mismatch_is_rejected_when_the_task_vector_is_made()
    {
        var reshaped = _models.Write("reshaped", new[] { TestTensor.F32("w", _weight, 6, 4), TestTensor.F32("b", _bias) });
        var error = Assert.Throws<DareException>(() => TaskVector.FromModels(_base, reshaped));
        Assert.Equal(DareErrorId.TensorShapeMismatch, error.ErrorId);
        Assert.Equal("w", error.TensorName);
    }

    [Fact]
    public void Non_float_dtype_mismatch_is_rejected_when_the_task_vector_is_made()
    {
        var floatPositions = _models.Write("float-positions", new[]
        {
            TestTensor.F32("w", _weight, 4, 6), TestTensor.F32("position_ids", new float[6], 2, 3), TestTensor.F32("b", _bias),
        });
        var error = Assert.Throws<DareException>(() => TaskVector.FromModels(_base, floatPositions));
        Assert.Equal(DareErrorId.TensorDTypeMismatch, error.ErrorId);
    }

    [Fact]
    public void Merging_task_vectors_of_different_bases_is_rejected()
    {
        var otherBase = _models.Write("other-base", new[] { TestTensor.F32("w", _weight, 4, 6), TestTensor.I64("position_ids", _positions, 2, 3), TestTensor.F32("b", _bias) });
        var tuned = Tuned("a");
        var error = Assert.Throws<DareException>(() => TaskVector.Combine(
            new[] { TaskVector.FromModels(_base, tuned), TaskVector.FromModels(otherBase, tuned) },
            new MergeOptions(MergeMethod.Linear, Parameters(1, 1), true)));
        Assert.Equal(DareErrorId.BaseModelMismatch, error.ErrorId);
    }

    [Theory]
    [InlineData("linear", 1)]
    [InlineData("linear", 3)]
    [InlineData("ties", 1)]
    public void Weight_count_other_than_the_vector_count_is_rejected(string methodName, int weightCount)
    {
        var method = MergeMethods.Find(methodName)!;
        var vectors = new[] { TaskVector.FromModels(_base, Tuned("a")), TaskVector.FromModels(_base, Tuned("b")) };
        var weights = Enumerable.Repeat((TensorParameter)1.0, weightCount).ToArray();
        var error = Assert.Throws<DareException>(() => TaskVector.Combine(vectors, new MergeOptions(method, weights, true, 1.0, Parameters(0.5, 0.5))));
        Assert.Equal(DareErrorId.InvalidParameter, error.ErrorId);
    }

    [Theory]
    [InlineData(0.0)]
    [InlineData(-0.2)]
    [InlineData(1.0000001)]
    [InlineData(2.0)]
    [InlineData(double.NaN)]
    public void Keep_ratio_outside_zero_exclusive_to_one_is_rejected(double keep)
    {
        var vectors = new[] { TaskVector.FromModels(_base, Tuned("a")), TaskVector.FromModels(_base, Tuned("b")) };
        var error = Assert.Throws<DareException>(() => TaskVector.Combine(vectors, new MergeOptions(MergeMethod.Ties, Parameters(1, 1), true, 1.0, Parameters(0.5, keep))));
        Assert.Equal(DareErrorId.InvalidParameter, error.ErrorId);
    }

    [Fact]
    public void Ties_without_one_keep_ratio_per_vector_is_rejected()
    {
        var vectors = new[] { TaskVector.FromModels(_base, Tuned("a")), TaskVector.FromModels(_base, Tuned("b")) };
        Assert.Equal(DareErrorId.InvalidParameter, Assert.Throws<DareException>(() =>
            TaskVector.Combine(vectors, new MergeOptions(MergeMethod.Ties, Parameters(1, 1), true, 1.0, Parameters(0.5)))).ErrorId);
        Assert.Equal(DareErrorId.InvalidParameter, Assert.Throws<DareException>(() =>
            TaskVector.Combine(vectors, new MergeOptions(MergeMethod.Ties, Parameters(1, 1), true))).ErrorId);
    }

    [Theory]
    [InlineData("linear")]
    [InlineData("ties")]
    public void Negative_weights_with_normalize_are_rejected(string methodName)
    {
        var method = MergeMethods.Find(methodName)!;
        var vectors = new[] { TaskVector.FromModels(_base, Tuned("a")), TaskVector.FromModels(_base, Tuned("b")) };
        var error = Assert.Throws<DareException>(() => TaskVector.Combine(vectors, new MergeOptions(method, Parameters(1, -0.5), true, 1.0, Parameters(0.5, 0.5))));
        Assert.Equal(DareErrorId.InvalidParameter, error.ErrorId);
        // The same weights without normalize are fine.
        TaskVector.Combine(vectors, new MergeOptions(method, Parameters(1, -0.5), false, 1.0, Parameters(0.5, 0.5)));
    }

    [Fact]
    public void Merging_an_already_merged_vector_or_applying_dare_to_it_is_rejected()
    {
        var vectors = new[] { TaskVector.FromModels(_base, Tuned("a")), TaskVector.FromModels(_base, Tuned("b")) };
        var merged = TaskVector.Combine(vectors, new MergeOptions(MergeMethod.Linear, Parameters(1, 1), true));
        Assert.Equal(DareErrorId.TaskVectorInvalid, Assert.Throws<DareException>(() => merged.WithDare(new DareOptions(0.5, 1, 0))).ErrorId);
        Assert.Equal(DareErrorId.TaskVectorInvalid, Assert.Throws<DareException>(() =>
            TaskVector.Combine(new[] { merged, vectors[0] }, new MergeOptions(MergeMethod.Linear, Parameters(1, 1), true))).ErrorId);
        Assert.Equal(DareErrorId.TaskVectorInvalid, Assert.Throws<DareException>(() =>
            vectors[0].WithDare(new DareOptions(0.5, 1, 0)).WithDare(new DareOptions(0.5, 1, 0))).ErrorId);
    }
}
