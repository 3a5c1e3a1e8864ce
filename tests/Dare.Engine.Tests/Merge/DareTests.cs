using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using Xunit;

namespace Dare.Engine.Tests.Merge;

/// <summary>DARE's drop and rescale: exact survivor values, drop statistics, unbiasedness and mask properties.</summary>
public sealed class DareTests : IDisposable
{
    private const int BigCount = 100_000;
    private const int SmallCount = 256;
    private const int TwinCount = 20_000;

    private readonly TestModels _models = new();
    private readonly Dictionary<string, float[]> _delta = new();
    private readonly TaskVector _vector;

    public DareTests()
    {
        var random = new Random(77);
        var @base = new Dictionary<string, float[]>
        {
            ["big"] = TestModels.RandomFloats(random, BigCount),
            ["small"] = TestModels.RandomFloats(random, SmallCount),
            ["twin.a"] = TestModels.RandomFloats(random, TwinCount),
        };
        @base["twin.b"] = (float[])@base["twin.a"].Clone();
        var tuned = @base.ToDictionary(p => p.Key, p => TestModels.Perturb(random, p.Value, 0.02));
        tuned["twin.b"] = (float[])tuned["twin.a"].Clone();
        foreach (var name in @base.Keys) _delta[name] = Reference.Delta(@base[name], tuned[name]);
        var baseCheckpoint = _models.Write("base", @base.Select(p => TestTensor.F32(p.Key, p.Value)));
        var tunedCheckpoint = _models.Write("tuned", tuned.Select(p => TestTensor.F32(p.Key, p.Value)));
        _vector = TaskVector.FromModels(baseCheckpoint, tunedCheckpoint);
    }

    public void Dispose() => _models.Dispose();

    private static float[] Delta(TaskVector vector, string tensor)
    {
        using var delta = new MergeExecutor().ComputeDelta(vector, tensor);
        Assert.Equal(TorchSharp.torch.ScalarType.Float32, delta.dtype);
        return delta.data<float>().ToArray();
    }

    private float[] Dare(string tensor, double p, long seed = 1, int stream = 0, DareRescale rescale = DareRescale.InverseKeep) =>
        Delta(_vector.WithDare(new DareOptions(p, seed, stream, rescale)), tensor);

    private static bool[] Dropped(float[] values) => values.Select(v => v == 0f).ToArray();

    private static double FiveSigma(int n, double p) => 5 * Math.Sqrt(n * p * (1 - p));

    [Fact]
    public void Task_vector_without_dare_is_fine_tuned_minus_base_in_float32()
    {
        Reference.AssertBitEqual(_delta["big"], Delta(_vector, "big"));
    }

    [Theory]
    [InlineData(0.3)]
    [InlineData(0.9)]
    public void Inverse_keep_rescale_multiplies_every_survivor_by_exactly_one_over_keep_and_zeroes_the_rest(double p)
    {
        var delta = _delta["big"];
        var result = Dare("big", p);
        var scale = (float)(1.0 / (1.0 - p));
        var survivors = 0;
        for (var i = 0; i < delta.Length; i++)
        {
            if (result[i] == 0f)
            {
                Assert.Equal(0u, BitConverter.SingleToUInt32Bits(result[i])); // +0, not -0
                continue;
            }
            survivors++;
            if (result[i] != delta[i] * scale) Assert.Fail($"[{i}]: δ {delta[i]:R} × {scale:R} = {delta[i] * scale:R}, got {result[i]:R}");
        }
        Assert.InRange(survivors, 1, delta.Length - 1);
    }

    [Fact]
    public void Drop_rate_zero_leaves_the_delta_unchanged()
    {
        Reference.AssertBitEqual(_delta["big"], Dare("big", 0.0));
        Reference.AssertBitEqual(_delta["big"], Dare("big", 0.0, rescale: DareRescale.L1));
    }

    [Theory]
    [InlineData(0.1)]
    [InlineData(0.5)]
    [InlineData(0.9)]
    [InlineData(0.99)]
    public void Realised_drop_fraction_is_within_five_sigma_of_the_drop_rate(double p)
    {
        var dropped = Dropped(Dare("big", p, seed: 2024)).Count(d => d);
        Assert.InRange(dropped, p * BigCount - FiveSigma(BigCount, p), p * BigCount + FiveSigma(BigCount, p));
    }

    [Fact]
    public void Mean_over_many_seeds_approaches_the_original_delta()
    {
        const int seeds = 400;
        const double p = 0.5;
        var delta = _delta["small"];
        var sum = new double[SmallCount];
        for (var seed = 0; seed < seeds; seed++)
        {
            var result = Dare("small", p, seed: seed);
            for (var i = 0; i < SmallCount; i++) sum[i] += result[i];
        }
        // Each entry's mean has standard deviation |δ|·sqrt(p / ((1-p)·seeds)) = |δ| / 20.
        var sigma = Math.Sqrt(p / ((1 - p) * seeds));
        double squaredError = 0, squaredNorm = 0;
        for (var i = 0; i < SmallCount; i++)
        {
            var mean = sum[i] / seeds;
            Assert.True(Math.Abs(mean - delta[i]) <= 5 * sigma * Math.Abs(delta[i]), $"[{i}]: mean {mean} vs δ {delta[i]}");
            squaredError += (mean - delta[i]) * (mean - delta[i]);
            squaredNorm += (double)delta[i] * delta[i];
        }
        // Over all entries the relative error concentrates near sigma (0.05).
        Assert.InRange(Math.Sqrt(squaredError / squaredNorm), 0, 1.5 * sigma);
    }

    [Theory]
    [InlineData(0.5)]
    [InlineData(0.9)]
    public void L1_rescale_keeps_the_l1_norm_of_the_delta(double p)
    {
        var delta = _delta["big"];
        var result = Dare("big", p, rescale: DareRescale.L1);
        var before = delta.Sum(x => Math.Abs((double)x));
        var after = result.Sum(x => Math.Abs((double)x));
        Assert.True(Math.Abs(after - before) <= 1e-5 * before, $"L1 {after} vs {before}");
        // Survivors share one scale factor (≈ 1/(1-p) here, but set by the realised drops).
        var ratios = Enumerable.Range(0, delta.Length).Where(i => result[i] != 0).Select(i => (double)result[i] / delta[i]).ToList();
        Assert.InRange(ratios.Max() - ratios.Min(), 0, 1e-6 * ratios.Max());
        Assert.InRange(ratios.Average(), 0.95 / (1 - p), 1.05 / (1 - p));
        // Same mask as the other rescale modes.
        Assert.Equal(Dropped(Dare("big", p, rescale: DareRescale.InverseKeep)), Dropped(result));
    }

    [Theory]
    [InlineData(DareRescale.L1, 4099)]
    [InlineData(DareRescale.L1, 65_536)]
    [InlineData(DareRescale.InverseKeep, 4099)]
    public void Large_tensor_delta_is_identical_whatever_the_chunk_size(DareRescale rescale, long chunkElements)
    {
        var plan = _vector.WithDare(new DareOptions(0.7, 3, 0, rescale));
        using var whole = new MergeExecutor().ComputeDelta(plan, "big");
        using var chunked = new MergeExecutor(chunkElements: chunkElements).ComputeDelta(plan, "big");
        Reference.AssertBitEqual(whole.data<float>().ToArray(), chunked.data<float>().ToArray());
    }

    [Fact]
    public void No_rescale_drops_without_changing_the_survivors()
    {
        var delta = _delta["big"];
        var result = Dare("big", 0.4, rescale: DareRescale.None);
        var dropped = 0;
        for (var i = 0; i < delta.Length; i++)
        {
            if (result[i] == 0f) { dropped++; continue; }
            if (BitConverter.SingleToUInt32Bits(result[i]) != BitConverter.SingleToUInt32Bits(delta[i])) Assert.Fail($"[{i}] changed");
        }
        Assert.InRange(dropped, 0.4 * BigCount - FiveSigma(BigCount, 0.4), 0.4 * BigCount + FiveSigma(BigCount, 0.4));
    }

    [Fact]
    public void Exported_dare_mask_is_the_scalar_hash_of_seed_stream_name_and_index()
    {
        var dropped = Dropped(Dare("big", 0.37, seed: 9, stream: 3));
        var key = DareMask.Key(9, 3, "big");
        var threshold = DareMask.Threshold(0.37);
        for (var i = 0; i < BigCount; i++)
        {
            if (dropped[i] != DareMask.IsDropped(key, i, threshold)) Assert.Fail($"[{i}] differs from the scalar definition");
        }
    }

    private static double BothDroppedFraction(bool[] a, bool[] b) => (double)a.Zip(b).Count(x => x.First && x.Second) / a.Length;

    [Fact]
    public void Different_streams_drop_independent_positions()
    {
        const double p = 0.5;
        var a = Dropped(Dare("big", p, seed: 5, stream: 0));
        var b = Dropped(Dare("big", p, seed: 5, stream: 1));
        var sigma = Math.Sqrt(p * p * (1 - p * p) / BigCount);
        Assert.InRange(BothDroppedFraction(a, b), p * p - 5 * sigma, p * p + 5 * sigma);
    }

    [Fact]
    public void Different_seeds_drop_independent_positions()
    {
        const double p = 0.5;
        var a = Dropped(Dare("big", p, seed: 5));
        var b = Dropped(Dare("big", p, seed: 6));
        var sigma = Math.Sqrt(p * p * (1 - p * p) / BigCount);
        Assert.InRange(BothDroppedFraction(a, b), p * p - 5 * sigma, p * p + 5 * sigma);
    }

    [Fact]
    public void Different_tensor_names_drop_independent_positions()
    {
        const double p = 0.5;
        Assert.Equal(_delta["twin.a"], _delta["twin.b"]);
        var a = Dropped(Dare("twin.a", p, seed: 5));
        var b = Dropped(Dare("twin.b", p, seed: 5));
        var sigma = Math.Sqrt(p * p * (1 - p * p) / TwinCount);
        Assert.InRange(BothDroppedFraction(a, b), p * p - 5 * sigma, p * p + 5 * sigma);
    }

    [Fact]
    public void Same_seed_and_stream_give_the_same_mask()
    {
        Assert.Equal(Dare("big", 0.5, seed: 5, stream: 2), Dare("big", 0.5, seed: 5, stream: 2));
    }

    [Theory]
    [InlineData(1.0)]
    [InlineData(1.5)]
    [InlineData(-0.1)]
    [InlineData(double.NaN)]
    public void Drop_rate_outside_zero_to_one_is_rejected(double p)
    {
        var error = Assert.Throws<DareException>(() => _vector.WithDare(new DareOptions(p, 1, 0)));
        Assert.Equal(DareErrorId.InvalidParameter, error.ErrorId);
    }

    [Fact]
    public void Same_seed_gives_byte_identical_exports()
    {
        string ExportOnce(string name)
        {
            var plan = TaskVector.Combine(
                new[] { _vector.WithDare(new DareOptions(0.6, 11, 0)), _vector.WithDare(new DareOptions(0.3, 11, 1, DareRescale.L1)) },
                new MergeOptions(MergeMethod.Ties, new TensorParameter[] { 1.0, 0.5 }, true, 1.0, new TensorParameter[] { 0.3, 0.5 }));
            _models.Export(plan, name, dtype: SafetensorsDType.BF16);
            return _models.PathOf(name);
        }
        var first = ExportOnce("first");
        var second = ExportOnce("second");
        var files = Directory.GetFiles(first).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToList();
        Assert.Equal(files, Directory.GetFiles(second).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToList());
        foreach (var file in files) Assert.Equal(File.ReadAllBytes(Path.Combine(first, file!)), File.ReadAllBytes(Path.Combine(second, file!)));
    }

    [Fact]
    public void Seed_changes_the_export()
    {
        _models.Export(_vector.WithDare(new DareOptions(0.5, 1, 0)), "seed1", deltaOnly: true);
        _models.Export(_vector.WithDare(new DareOptions(0.5, 2, 0)), "seed2", deltaOnly: true);
        Assert.NotEqual(File.ReadAllBytes(Path.Combine(_models.PathOf("seed1"), Checkpoint.SingleFileName)),
            File.ReadAllBytes(Path.Combine(_models.PathOf("seed2"), Checkpoint.SingleFileName)));
    }
}
