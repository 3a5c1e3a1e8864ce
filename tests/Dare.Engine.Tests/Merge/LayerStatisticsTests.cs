using Dare.Engine.Merge;
using Xunit;

namespace Dare.Engine.Tests.Merge;

/// <summary>Measure-TaskVector -PerLayer against plain loops over hand-built deltas.</summary>
public sealed class LayerStatisticsTests : IDisposable
{
    private static readonly string[] Tensors =
    {
        "model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight", "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.mlp.up_proj.weight", "lm_head.weight",
    };
    private static readonly Dictionary<string, string> PartOf = new()
    {
        ["model.embed_tokens.weight"] = "embeddings", ["model.layers.0.mlp.up_proj.weight"] = "layer 0",
        ["model.layers.0.self_attn.q_proj.weight"] = "layer 0", ["model.layers.1.mlp.up_proj.weight"] = "layer 1", ["lm_head.weight"] = "other",
    };

    private readonly TestModels _models = new();
    private readonly Dictionary<string, float[]> _deltaA = new(), _deltaB = new();
    private readonly TaskVector _a, _b;

    public LayerStatisticsTests()
    {
        var random = new Random(11);
        var @base = new Dictionary<string, float[]>();
        var tunedA = new Dictionary<string, float[]>();
        var tunedB = new Dictionary<string, float[]>();
        foreach (var (name, i) in Tensors.Select((n, i) => (n, i)))
        {
            var count = 64 * (i + 1);
            @base[name] = TestModels.RandomFloats(random, count);
            // Deltas with many exact zeros (overlap is partial) and a spread of magnitudes (sparsity is not trivial).
            _deltaA[name] = Enumerable.Range(0, count).Select(j => j % 3 == 0 ? 0f : (float)((random.NextDouble() * 2 - 1) * Math.Pow(10, -random.Next(0, 4)))).ToArray();
            _deltaB[name] = Enumerable.Range(0, count).Select(j => j % 4 == 1 ? 0f : (float)((random.NextDouble() * 2 - 1) * 0.01)).ToArray();
            tunedA[name] = @base[name].Zip(_deltaA[name], (b, d) => b + d).ToArray();
            tunedB[name] = @base[name].Zip(_deltaB[name], (b, d) => b + d).ToArray();
            // Stored deltas are tuned − base in float32: use exactly those.
            _deltaA[name] = Reference.Delta(@base[name], tunedA[name]);
            _deltaB[name] = Reference.Delta(@base[name], tunedB[name]);
        }
        var baseModel = _models.Write("base", Tensors.Select(n => TestTensor.F32(n, @base[n])));
        _a = TaskVector.FromModels(baseModel, _models.Write("a", Tensors.Select(n => TestTensor.F32(n, tunedA[n]))), "a");
        _b = TaskVector.FromModels(baseModel, _models.Write("b", Tensors.Select(n => TestTensor.F32(n, tunedB[n]))), "b");
    }

    public void Dispose() => _models.Dispose();

    [Fact]
    public void Mean_magnitude_sparsity_and_sign_conflicts_match_plain_loops_per_layer()
    {
        var statistics = LayerStatistics.Measure(new[] { _a, _b }, new MergeExecutor());

        Assert.Equal(new[] { "embeddings", "embeddings", "layer 0", "layer 0", "layer 1", "layer 1", "other", "other" }, statistics.Select(s => s.Part));
        foreach (var part in PartOf.Values.Distinct())
        {
            var names = Tensors.Where(n => PartOf[n] == part).ToList();
            long overlapping = 0, conflicting = 0;
            foreach (var name in names)
            {
                for (var j = 0; j < _deltaA[name].Length; j++)
                {
                    var (x, y) = (_deltaA[name][j], _deltaB[name][j]);
                    if (x == 0 || y == 0) continue;
                    overlapping++;
                    if (Math.Sign(x) != Math.Sign(y)) conflicting++;
                }
            }
            foreach (var (vector, deltas) in new[] { ("a", _deltaA), ("b", _deltaB) })
            {
                var row = statistics.Single(s => s.Part == part && s.TaskVector == vector);
                var count = names.Sum(n => deltas[n].Length);
                var mean = names.Sum(n => deltas[n].Sum(v => (double)Math.Abs(v))) / count;
                // Natural sparsity: |δ| below 1% of its own tensor's max |δ|.
                var sparse = names.Sum(n => { var max = deltas[n].Max(v => Math.Abs(v)); return deltas[n].Count(v => Math.Abs(v) < 0.01 * max); });
                Assert.Equal(count, row.ParameterCount);
                Assert.Equal(names.Count, row.TensorCount);
                Assert.Equal(mean, row.MeanAbs, mean * 1e-6);
                Assert.Equal((double)sparse / count, row.NaturalSparsity, 12);
                Assert.Null(row.RealisedDropRate);
                Assert.Equal(overlapping, row.OverlappingEntries);
                Assert.Equal((double)conflicting / overlapping, row.SignConflictRate!.Value, 12);
                Assert.Equal(part.StartsWith("layer ", StringComparison.Ordinal) ? int.Parse(part[6..]) : null, row.Layer);
            }
        }
    }

    [Fact]
    public void Realised_drop_rate_per_layer_counts_the_mask_and_a_merged_vector_stands_for_its_inputs()
    {
        const long seed = 9;
        var dropped = new[] { _a.WithDare(new DareOptions(0.6, seed, 0)), _b.WithDare(new DareOptions(0.6, seed, 1)) };
        var merged = TaskVector.Combine(dropped, new MergeOptions(MergeMethods.Find("linear")!, new TensorParameter[] { 1.0, 1.0 }, true));
        var statistics = LayerStatistics.Measure(new[] { merged }, new MergeExecutor());

        Assert.Equal(8, statistics.Count);
        var threshold = DareMask.Threshold(0.6);
        foreach (var part in PartOf.Values.Distinct())
        {
            var names = Tensors.Where(n => PartOf[n] == part).ToList();
            for (var stream = 0; stream < 2; stream++)
            {
                var row = statistics.Where(s => s.Part == part).ElementAt(stream);
                var total = names.Sum(n => _deltaA[n].Length);
                var drops = names.Sum(n => Enumerable.Range(0, _deltaA[n].Length).Count(j => DareMask.IsDropped(DareMask.Key(seed, stream, n), j, threshold)));
                Assert.Equal((double)drops / total, row.RealisedDropRate!.Value, 12);
                Assert.Equal(0.6, row.TargetDropRate!.Value, 12);
            }
            // Conflicts after the drop: only entries both masks keep (and both deltas are non-zero) overlap.
            long overlapping = 0, conflicting = 0;
            foreach (var name in names)
            {
                for (var j = 0; j < _deltaA[name].Length; j++)
                {
                    var x = DareMask.IsDropped(DareMask.Key(seed, 0, name), j, threshold) ? 0 : _deltaA[name][j];
                    var y = DareMask.IsDropped(DareMask.Key(seed, 1, name), j, threshold) ? 0 : _deltaB[name][j];
                    if (x == 0 || y == 0) continue;
                    overlapping++;
                    if (Math.Sign(x) != Math.Sign(y)) conflicting++;
                }
            }
            Assert.Equal(overlapping, statistics.First(s => s.Part == part).OverlappingEntries);
            if (overlapping > 0) Assert.Equal((double)conflicting / overlapping, statistics.First(s => s.Part == part).SignConflictRate!.Value, 12);
        }
    }

    [Fact]
    public void One_vector_has_no_sign_conflict_rate_and_the_chart_is_written()
    {
        var statistics = LayerStatistics.Measure(new[] { _a }, new MergeExecutor());
        Assert.All(statistics, s => Assert.Null(s.SignConflictRate));
        var path = System.IO.Path.Combine(_models.Root, "layers.svg");
        LayerStatistics.DrawChart(statistics, path);
        var svg = System.Xml.Linq.XDocument.Load(path);
        Assert.Equal("svg", svg.Root!.Name.LocalName);
        Assert.Contains("a: natural sparsity", File.ReadAllText(path));
    }
}
