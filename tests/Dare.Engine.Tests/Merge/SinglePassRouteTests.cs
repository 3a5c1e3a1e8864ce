using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using Xunit;

namespace Dare.Engine.Tests.Merge;

/// <summary>
/// Linear merges of bfloat16 models, and TIES merges whose trims are known to keep every non-zero value (DARE-TIES
/// with no more DARE survivors than TIES keeps), take a single-pass route (raw chunks to output bytes, block by block).
/// It must write exactly the bytes of the general route (float32 chunks, the passes, then the combine), which the
/// reference tests check.
/// </summary>
public sealed class SinglePassRouteTests : IDisposable
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

    public SinglePassRouteTests()
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
        // DARE keeps ~30 %, TIES 50 %: every trim keeps all survivors, so the single pass applies.
        "dare-ties" => TaskVector.Combine(_vectors.Select((v, i) => v.WithDare(new DareOptions(0.7, 42, i))).ToList(),
            new MergeOptions(MergeMethod.Ties, Parameters(1, 0.6, 0.3), true, 0.9, Parameters(0.5, 0.5, 0.5))),
        // Sign by count, no normalising, one input without DARE that TIES keeps whole.
        "dare-ties-count" => TaskVector.Combine(new[] { _vectors[0].WithDare(new DareOptions(0.8, 7, 0)), _vectors[1], _vectors[2].WithDare(new DareOptions(0.5, 7, 2)) },
            new MergeOptions(MergeMethod.Ties, Parameters(1, 1, 0.5), false, 1.2, Parameters(0.4, 1.0, 0.6), SignMethod.Count)),
        // DARE keeps ~70 %, TIES 50 %: the trim has work to do, so the general route runs in both exports.
        "dare-then-trim" => TaskVector.Combine(_vectors.Select((v, i) => v.WithDare(new DareOptions(0.3, 42, i))).ToList(),
            new MergeOptions(MergeMethod.Ties, Parameters(1, 1, 1), true, 1.0, Parameters(0.5, 0.5, 0.5))),
        "plain" => _vectors[2],
        // TIES with thresholds to find (the general route): bracketed on the large tensors, exact passes on the small ones.
        "ties" => TaskVector.Combine(_vectors, new MergeOptions(MergeMethod.Ties, Parameters(1, 0.6, 0.3), true, 0.9, Parameters(0.2, 0.5, 0.1))),
        "ties-count" => TaskVector.Combine(_vectors, new MergeOptions(MergeMethod.Ties, Parameters(1, 1, 0.5), false, 1.2, Parameters(0.3, 1.0, 0.05), SignMethod.Count)),
        _ => throw new ArgumentOutOfRangeException(nameof(kind)),
    };

    private SortedDictionary<string, byte[]> Export(TaskVector plan, string name, bool singlePass, SafetensorsDType dtype, bool deltaOnly, long chunkElements,
        double survivorSigmas = TiesTensorMerge.DefaultSurvivorSigmas) =>
        ExportWithResult(plan, name, singlePass, dtype, deltaOnly, chunkElements, survivorSigmas).Files;

    private (SortedDictionary<string, byte[]> Files, ExportResult Result) ExportWithResult(TaskVector plan, string name, bool singlePass, SafetensorsDType dtype,
        bool deltaOnly, long chunkElements, double survivorSigmas = TiesTensorMerge.DefaultSurvivorSigmas)
    {
        var executor = new MergeExecutor(chunkElements: chunkElements) { SinglePassLinear = singlePass, SurvivorSigmas = survivorSigmas };
        var result = executor.Export(plan, new ExportOptions { Destination = _models.PathOf(name), OutputDType = dtype, DeltaOnly = deltaOnly, MaxShardSize = 40_000 });
        return (Safetensors.WriterHelper.Snapshot(_models.PathOf(name)), result);
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
    [InlineData("dare-ties", SafetensorsDType.BF16, false, 1L << 24)]
    [InlineData("dare-ties", SafetensorsDType.BF16, false, 4099)]
    [InlineData("dare-ties", SafetensorsDType.F32, true, 1L << 24)]
    [InlineData("dare-ties-count", SafetensorsDType.BF16, false, 1L << 24)]
    [InlineData("dare-ties-count", SafetensorsDType.F32, false, 997)]
    [InlineData("dare-then-trim", SafetensorsDType.BF16, false, 1L << 24)]
    public void Writes_the_bytes_of_the_general_route(string kind, SafetensorsDType dtype, bool deltaOnly, long chunkElements)
    {
        var plan = Plan(kind);
        var single = Export(plan, "single", singlePass: true, dtype, deltaOnly, chunkElements);
        var general = Export(plan, "general", singlePass: false, dtype, deltaOnly, chunkElements);

        Assert.Equal(general.Keys, single.Keys);
        foreach (var (file, bytes) in general) Assert.True(bytes.AsSpan().SequenceEqual(single[file]), $"{file} differs");
    }

    [Theory]
    [InlineData("dare-then-trim", SafetensorsDType.BF16, 1L << 24)] // the proof fails: every tensor goes back to the general route
    [InlineData("dare-then-trim", SafetensorsDType.F32, 4099)] // ... after the first of several chunks
    [InlineData("dare-ties", SafetensorsDType.BF16, 1L << 24)] // the proof holds, also for tensors too small to expect it
    [InlineData("dare-ties", SafetensorsDType.BF16, 4099)] // ... with the rest of the tensor's mask counted after the first chunk
    [InlineData("dare-ties-count", SafetensorsDType.F32, 997)]
    public void Ties_taking_the_single_pass_before_its_proof_writes_and_counts_what_the_general_route_does(string kind, SafetensorsDType dtype, long chunkElements)
    {
        // Sigmas below 0 make every DARE input's survivor count wait for the first chunk, whatever it is expected to be.
        var plan = Plan(kind);
        var (early, earlyResult) = ExportWithResult(plan, "early", singlePass: true, dtype, deltaOnly: false, chunkElements, survivorSigmas: -1e9);
        var (general, generalResult) = ExportWithResult(plan, "general", singlePass: false, dtype, deltaOnly: false, chunkElements);

        Assert.Equal(general.Keys, early.Keys);
        foreach (var (file, bytes) in general) Assert.True(bytes.AsSpan().SequenceEqual(early[file]), $"{file} differs");
        Assert.NotNull(generalResult.RealisedDropRate);
        Assert.Equal(generalResult.RealisedDropRate, earlyResult.RealisedDropRate);
    }

    [Theory]
    [InlineData(0.7, 0.5, 300_007, true)] // 90,002 ± 251 expected: + 8 σ + 16 = 92,026 against 150,004 kept
    [InlineData(0.7, 0.31, 300_007, true)] // 93,003 kept
    [InlineData(0.7, 0.305, 300_007, false)] // 91,503 kept: 1,501 to spare, 6 σ
    [InlineData(0.9, 0.5, 183, true)] // 18.3 ± 4.1 expected: + 8 σ + 16 = 66.8 against 92 kept
    [InlineData(0.9, 0.2, 183, false)] // 37 kept
    public void Survivors_are_taken_on_expectation_only_far_below_the_keep_count(double dropRate, double keepRatio, long n, bool expected)
    {
        var keep = TiesTensorMerge.KeepCount(keepRatio, n);
        var survives = 1 - dropRate;
        var plain = survives * n + 8 * Math.Sqrt(n * survives * dropRate) + 16 <= keep;

        Assert.Equal(expected, plain);
        Assert.Equal(expected, TiesTensorMerge.SurvivorsExpectedBelow(DareMask.Threshold(dropRate), n, keep, TiesTensorMerge.DefaultSurvivorSigmas));
    }

    [Theory]
    [InlineData("ties", SafetensorsDType.BF16)]
    [InlineData("ties-count", SafetensorsDType.F32)]
    [InlineData("dare-then-trim", SafetensorsDType.BF16)]
    public void A_tensor_kept_as_stored_for_its_passes_gets_the_bytes_of_one_chunk(string kind, SafetensorsDType dtype)
    {
        // With 256K-element chunks the 300,007-element tensor takes two: out of the page cache, it is read once as
        // stored and kept for every pass, which takes 64K-element chunks of δ from it; in one chunk it is read once and
        // kept as float32 δ.
        foreach (var file in Directory.GetFiles(_models.Root, "*.safetensors", SearchOption.AllDirectories)) Safetensors.PageCache.Drop(file);
        var kept = Export(Plan(kind), "kept", singlePass: true, dtype, deltaOnly: false, 1L << 18);
        var whole = Export(Plan(kind), "whole", singlePass: true, dtype, deltaOnly: false, 1L << 24);

        Assert.Equal(whole.Keys, kept.Keys);
        foreach (var (file, bytes) in whole) Assert.True(bytes.AsSpan().SequenceEqual(kept[file]), $"{file} differs");
    }

    [Theory]
    [InlineData(0.7, 0.5, false, true)] // survivors ~30 % of 300,007, TIES keeps 50 %
    [InlineData(0.7, 0.25, false, false)] // TIES keeps fewer than survive
    [InlineData(0.0, 1.0, false, true)] // no drop, but TIES keeps everything
    [InlineData(0.0, 0.5, false, false)] // no drop: the trim needs the data
    [InlineData(0.7, 0.5, true, false)] // an L1 rescale changes magnitudes, so the drop is not fused
    public void Ties_takes_the_single_pass_exactly_when_every_trim_keeps_all_survivors(double dropRate, double keepRatio, bool l1, bool expected)
    {
        const string name = "model.layers.2.mlp.down_proj.weight";
        var info = _base.Find(name)!;
        var position = TensorPosition.Of(name, TensorPosition.LayerCountOf(_base));
        var inputs = _vectors.Select((v, i) => new InputChain(new StoredMinusBase(v.FineTuned!.Find(name)!),
            dropRate > 0 ? DareDrop.For(new DareOptions(dropRate, 42, i, l1 ? DareRescale.L1 : DareRescale.InverseKeep), position, info.ElementCount) : null)).ToArray();
        var setup = new TensorMergeSetup(position, info.ElementCount, MergeExecutor.DefaultChunkElements, inputs, null);
        var options = new MergeOptions(MergeMethod.Ties, Parameters(1, 1, 1), true, 1.0, Parameters(keepRatio, keepRatio, keepRatio));

        var merge = MergeMethod.Ties.CreateTensorMerge(options, setup);

        Assert.Equal(expected, merge.SinglePass is not null);
    }

    [Fact]
    public void Counting_the_mask_ahead_agrees_with_what_the_mask_drops()
    {
        const long first = (1L << 32) - 5000, count = 20_000; // across a 2^32-element block boundary
        var key = DareMask.Key(42, 1, "w");
        var threshold = DareMask.Threshold(0.6);
        var dropped = 0L;
        for (var j = first; j < first + count; j++) if (DareMask.IsDropped(key, j, threshold)) dropped++;

        Assert.True(DareMask.DropsAtLeast(first, count, key, threshold, dropped));
        Assert.False(DareMask.DropsAtLeast(first, count, key, threshold, dropped + 1));
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
