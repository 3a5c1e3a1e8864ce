using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using Xunit;

namespace Dare.Engine.Tests.Merge;

/// <summary>Tiny merges whose expected values are worked out by hand in the comments.</summary>
public sealed class HandCheckedMergeTests : IDisposable
{
    private static readonly float[] BaseValues = { 1f, 2f, 3f, 4f };
    private readonly TestModels _models = new();
    private readonly Checkpoint _base;

    public HandCheckedMergeTests()
    {
        _base = _models.Write("base", new[] { TestTensor.F32("w", BaseValues) });
    }

    public void Dispose() => _models.Dispose();

    /// <summary>A fine-tune whose δ for "w" is exactly <paramref name="delta"/> (dyadic values added to small integers).</summary>
    private TaskVector Vector(string name, params float[] delta)
    {
        var tuned = BaseValues.Select((b, i) => b + delta[i]).ToArray();
        var checkpoint = _models.Write(name, new[] { TestTensor.F32("w", tuned) });
        return TaskVector.FromModels(_base, checkpoint);
    }

    private float[] MergedDelta(IReadOnlyList<TaskVector> vectors, MergeOptions options)
    {
        var output = _models.Export(TaskVector.Combine(vectors, options), "out-" + Guid.NewGuid().ToString("N"), deltaOnly: true);
        return TestModels.ReadFloats(output, "w");
    }

    private float[] MergedModel(IReadOnlyList<TaskVector> vectors, MergeOptions options)
    {
        var output = _models.Export(TaskVector.Combine(vectors, options), "out-" + Guid.NewGuid().ToString("N"));
        return TestModels.ReadFloats(output, "w");
    }

    [Fact]
    public void Linear_normalized_merge_divides_by_the_weight_sum_and_scales_by_lambda()
    {
        var a = Vector("a", 1f, -2f, 0.5f, 0f);
        var b = Vector("b", 3f, 2f, -0.5f, 4f);
        // (1·δa + 3·δb) / 4 = [10, 4, -1, 12] / 4 = [2.5, 1, -0.25, 3]; × λ 0.5 = [1.25, 0.5, -0.125, 1.5]; + base.
        var merged = MergedModel(new[] { a, b }, new MergeOptions(MergeMethod.Linear, new TensorParameter[] { 1.0, 3.0 }, Normalize: true, Lambda: 0.5));
        Assert.Equal(new[] { 2.25f, 2.5f, 2.875f, 5.5f }, merged);
    }

    [Fact]
    public void Linear_merge_without_normalize_is_the_weighted_sum()
    {
        var a = Vector("a", 1f, -2f, 0.5f, 0f);
        var b = Vector("b", 3f, 2f, -0.5f, 4f);
        // 1·δa + 3·δb = [10, 4, -1, 12]; + base [1, 2, 3, 4].
        var merged = MergedModel(new[] { a, b }, new MergeOptions(MergeMethod.Linear, new TensorParameter[] { 1.0, 3.0 }, Normalize: false));
        Assert.Equal(new[] { 11f, 6f, 2f, 16f }, merged);
        var delta = MergedDelta(new[] { a, b }, new MergeOptions(MergeMethod.Linear, new TensorParameter[] { 1.0, 3.0 }, Normalize: false, Lambda: 2.0));
        Assert.Equal(new[] { 20f, 8f, -2f, 24f }, delta);
    }

    // Three task vectors, weights (2, 1, 1), k = 1:
    //   pos 0: a=1,  b=-2,  c=0    Σw·t = 2-2+0 = 0 -> + (tie)   agree {a}: 2·1 / 2 = 1      (raw 2)
    //   pos 1: a=-1, b=3,   c=-2   Σw·t = -2+3-2 = -1 -> -       agree {a,c}: (-2-2)/3 = -4/3 (raw -4)
    //   pos 2: all 0               Σ = 0 -> +, nobody agrees -> 0
    //   pos 3: a=1,  b=1,   c=-4   Σw·t = 2+1-4 = -1 -> -       agree {c}: -4/1 = -4      (raw -4)
    private (TaskVector, TaskVector, TaskVector) ThreeVectors() => (
        Vector("a", 1f, -1f, 0f, 1f),
        Vector("b", -2f, 3f, 0f, 1f),
        Vector("c", 0f, -2f, 0f, -4f));

    private static MergeOptions Ties(bool normalize, double lambda = 1.0, SignMethod sign = SignMethod.Sum, double keep = 1.0) =>
        new(MergeMethod.Ties, new TensorParameter[] { 2.0, 1.0, 1.0 }, normalize, lambda, new TensorParameter[] { keep, keep, keep }, sign);

    [Fact]
    public void Ties_elects_positive_sign_when_weighted_sum_is_zero_and_takes_the_disjoint_weighted_mean()
    {
        var (a, b, c) = ThreeVectors();
        var merged = MergedDelta(new[] { a, b, c }, Ties(normalize: true));
        Reference.AssertClose(new[] { 1f, -4f / 3f, 0f, -4f }, merged);
    }

    [Fact]
    public void Ties_without_normalize_keeps_the_weighted_sum_of_agreeing_entries()
    {
        var (a, b, c) = ThreeVectors();
        var merged = MergedDelta(new[] { a, b, c }, Ties(normalize: false));
        Assert.Equal(new[] { 2f, -4f, 0f, -4f }, merged);
    }

    [Fact]
    public void Ties_scales_the_merged_delta_by_lambda()
    {
        var (a, b, c) = ThreeVectors();
        var merged = MergedDelta(new[] { a, b, c }, Ties(normalize: true, lambda: 0.5));
        Reference.AssertClose(new[] { 0.5f, -2f / 3f, 0f, -2f }, merged);
        var model = MergedModel(new[] { a, b, c }, Ties(normalize: false, lambda: 0.25));
        // raw [2, -4, 0, -4] × 0.25 = [0.5, -1, 0, -1]; + base [1, 2, 3, 4].
        Assert.Equal(new[] { 1.5f, 1f, 3f, 3f }, model);
    }

    [Fact]
    public void Ties_count_sign_method_elects_by_number_of_positive_and_negative_entries()
    {
        var (a, b, c) = ThreeVectors();
        // pos 0: 1 positive, 1 negative -> tie -> +; agree {a}: 2·1/2 = 1 (raw 2)
        // pos 1: 1 positive, 2 negative -> -; agree {a,c}: -4/3 (raw -4)
        // pos 2: no signs -> +, nobody agrees -> 0
        // pos 3: 2 positive, 1 negative -> + (the weighted sum would elect -); agree {a,b}: (2+1)/3 = 1 (raw 3)
        Reference.AssertClose(new[] { 1f, -4f / 3f, 0f, 1f }, MergedDelta(new[] { a, b, c }, Ties(normalize: true, sign: SignMethod.Count)));
        Assert.Equal(new[] { 2f, -4f, 0f, 3f }, MergedDelta(new[] { a, b, c }, Ties(normalize: false, sign: SignMethod.Count)));
    }

    [Fact]
    public void Ties_gives_zero_where_no_entry_has_the_elected_sign()
    {
        // Weight -1 turns a's negative entry into a positive vote: Σw·t = (-1)(-3) + 1·0 = 3 -> +, but no entry is positive.
        // pos 1: (-1)(2) + 1·1 = -1 -> -; a=2 and b=1 are both positive -> 0 as well.
        // pos 2: (-1)(-1) + 1·(-4) = -3 -> -; agree {a, b}: (-1)(-1) + 1·(-4) = -3 (raw, no normalize).
        // pos 3: (-1)(1) + 1·2 = 1 -> +; agree {a, b}: -1 + 2 = 1.
        var a = Vector("a", -3f, 2f, -1f, 1f);
        var b = Vector("b", 0f, 1f, -4f, 2f);
        var options = new MergeOptions(MergeMethod.Ties, new TensorParameter[] { -1.0, 1.0 }, Normalize: false, KeepRatios: new TensorParameter[] { 1.0, 1.0 });
        Assert.Equal(new[] { 0f, 0f, -3f, 1f }, MergedDelta(new[] { a, b }, options));
    }

    [Fact]
    public void Ties_trim_keeps_the_lowest_index_among_magnitudes_tied_at_the_threshold()
    {
        // k = 0.5 of 4 elements keeps 2: |-3|, then of the three entries tied at |1| only index 0.
        var a = Vector("a", 1f, -3f, -1f, 1f);
        var options = new MergeOptions(MergeMethod.Ties, new TensorParameter[] { 1.0 }, Normalize: true, KeepRatios: new TensorParameter[] { 0.5 });
        Assert.Equal(new[] { 1f, -3f, 0f, 0f }, MergedDelta(new[] { a }, options));
    }

    [Fact]
    public void Ties_trim_rounds_the_kept_count_up()
    {
        // k = 0.3 of 4 elements: ⌈1.2⌉ = 2 kept (-0.5 and 0.375).
        var a = Vector("a", 0.125f, -0.5f, 0.375f, 0.25f);
        var options = new MergeOptions(MergeMethod.Ties, new TensorParameter[] { 1.0 }, Normalize: true, KeepRatios: new TensorParameter[] { 0.3 });
        Assert.Equal(new[] { 0f, -0.5f, 0.375f, 0f }, MergedDelta(new[] { a }, options));
    }

    [Fact]
    public void Ties_trims_each_task_vector_before_the_sign_election()
    {
        var a = Vector("a", 1f, -3f, -1f, 1f);
        var b = Vector("b", -0.5f, 0.25f, 0.5f, 0.5f);
        // k = 0.5: a -> [1, -3, 0, 0] (tie at |1|: index 0), b -> [-0.5, 0, 0.5, 0] (tie at 0.5: indexes 0 and 2).
        // pos 0: 1 - 0.5 > 0 -> {a}: 1.  pos 1: -3 -> {a}: -3.  pos 2: 0.5 -> {b}: 0.5.  pos 3: 0 -> +, nobody -> 0.
        var trimmed = new MergeOptions(MergeMethod.Ties, new TensorParameter[] { 1.0, 1.0 }, Normalize: true, KeepRatios: new TensorParameter[] { 0.5, 0.5 });
        Assert.Equal(new[] { 1f, -3f, 0.5f, 0f }, MergedDelta(new[] { a, b }, trimmed));
    }

    [Fact]
    public void Ties_with_keep_ratio_one_does_not_trim()
    {
        var a = Vector("a", 1f, -3f, -1f, 1f);
        var b = Vector("b", -0.5f, 0.25f, 0.5f, 0.5f);
        // pos 0: 0.5 -> {a}: 1.  pos 1: -2.75 -> {a}: -3.  pos 2: -0.5 -> {a}: -1.  pos 3: 1.5 -> {a, b}: (1 + 0.5)/2 = 0.75.
        var untrimmed = new MergeOptions(MergeMethod.Ties, new TensorParameter[] { 1.0, 1.0 }, Normalize: true, KeepRatios: new TensorParameter[] { 1.0, 1.0 });
        Assert.Equal(new[] { 1f, -3f, -1f, 0.75f }, MergedDelta(new[] { a, b }, untrimmed));
    }

    [Fact]
    public void Single_task_vector_export_writes_base_plus_delta_and_delta_only_writes_delta()
    {
        var a = Vector("a", 1f, -2f, 0.5f, 0f);
        Assert.Equal(new[] { 2f, 0f, 3.5f, 4f }, TestModels.ReadFloats(_models.Export(a, "model"), "w"));
        Assert.Equal(new[] { 1f, -2f, 0.5f, 0f }, TestModels.ReadFloats(_models.Export(a, "delta", deltaOnly: true), "w"));
    }

    [Fact]
    public void Output_keeps_the_base_dtype_by_default_and_rounds_to_bfloat16_nearest_even()
    {
        // A bf16 base and a float32 fine-tune; base + δ lands exactly halfway between bf16 neighbours or just above:
        // 1 + 2^-8 -> 1 (ties to even); 1 + 3·2^-8 -> 1 + 2^-6 (even); 1 + 2^-8 + 2^-12 -> 1 + 2^-7 (above half);
        // 255.5 (spacing 1 in [128, 256)) -> 256 (even).
        var baseValues = new[] { 1f, 1f, 1f, 256f };
        var deltas = new[] { 1f / 256, 3f / 256, 1f / 256 + 1f / 4096, -1f / 2 };
        var bfBase = _models.Write("bf-base", new[] { TestTensor.Bf16("w", baseValues) });
        var tuned = _models.Write("bf-tuned", new[] { TestTensor.F32("w", baseValues.Select((b, i) => b + deltas[i]).ToArray()) });
        var output = _models.Export(TaskVector.FromModels(bfBase, tuned), "bf-out", dtype: null);
        var info = output.Find("w")!;
        Assert.Equal(SafetensorsDType.BF16, info.DType);
        var bits = TestModels.ReadRaw<ushort>(info);
        var expected = new[] { 1f, 1f + 1f / 64, 1f + 1f / 128, 256f };
        Assert.Equal(expected, bits.Select(Bf16Bits.ToFloat).ToArray());
        Assert.Equal(baseValues.Select((b, i) => Bf16Bits.FromFloat(b + deltas[i])).ToArray(), bits);
    }
}
