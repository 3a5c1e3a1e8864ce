using Dare.Engine.Merge;
using Dare.Engine.Recipes;
using Dare.Engine.Safetensors;
using Dare.Engine.Tests.Merge;
using Xunit;

namespace Dare.Engine.Tests.Methods;

/// <summary>
/// DELLA (della, della_linear) and the DAREx-q rescale, checked against MagPrune written out plainly in float64 loops:
/// per row, rank |δ| (ties by position), keep with probability density − ε + 2ε·(rank − 1)/(r − 1), then rescale and
/// combine. The random draw is DARE's documented hash of (seed, stream, tensor, element index) (tested in DareMaskTests).
/// </summary>
public sealed class DellaTests : IDisposable
{
    private readonly TestModels _models = new();

    public void Dispose() => _models.Dispose();

    /// <summary>MagPrune of one δ laid out as rows of <paramref name="rowLength"/>; survivors × 1/p (or 1/q, or 1).</summary>
    private static double[] MagPrune(float[] delta, int rowLength, double density, double epsilon, long seed, int stream, string tensor, DareRescale rescale, double q = 0)
    {
        var key = DareMask.Key(seed, stream, tensor);
        var result = new double[delta.Length];
        for (var start = 0; start < delta.Length; start += rowLength)
        {
            for (var i = 0; i < rowLength; i++)
            {
                var magnitude = Math.Abs(delta[start + i]);
                // rank = 1 + entries with a smaller magnitude + earlier entries with the same magnitude.
                var rank = 1;
                for (var j = 0; j < rowLength; j++)
                {
                    var other = Math.Abs(delta[start + j]);
                    if (other < magnitude || (other == magnitude && j < i)) rank++;
                }
                var p = rowLength == 1 ? density : density - epsilon + 2 * epsilon * (rank - 1) / (rowLength - 1);
                var dropThreshold = (uint)Math.Min(Math.Round((1 - p) * 4294967296.0), uint.MaxValue);
                var dropped = DareMask.Hash(key, start + i) < dropThreshold;
                var scale = rescale switch { DareRescale.InverseKeep => 1 / p, DareRescale.Q => 1 / q, _ => 1.0 };
                result[start + i] = dropped ? 0 : delta[start + i] * scale;
            }
        }
        if (rescale == DareRescale.L1)
        {
            var before = delta.Sum(d => Math.Abs((double)d));
            var after = result.Sum(Math.Abs);
            if (after > 0) result = result.Select(r => r * before / after).ToArray();
        }
        return result;
    }

    /// <summary>mergekit's sign consensus: the sign of Σ wᵢδᵢ (>= 0 is +), the agreeing entries' weighted sum over their weights.</summary>
    private static double[] SignConsensus(double[][] deltas, double[] weights)
    {
        var result = new double[deltas[0].Length];
        for (var e = 0; e < result.Length; e++)
        {
            var sum = 0.0;
            for (var m = 0; m < deltas.Length; m++) sum += weights[m] * deltas[m][e];
            var sign = sum >= 0 ? 1 : -1;
            double mixed = 0, divisor = 0;
            for (var m = 0; m < deltas.Length; m++)
            {
                if (Math.Sign(weights[m] * deltas[m][e]) != sign) continue;
                mixed += weights[m] * deltas[m][e];
                divisor += weights[m];
            }
            result[e] = mixed / (divisor == 0 ? 1 : divisor);
        }
        return result;
    }

    private (float[] Base, float[][] Tuned, TaskVector[] Vectors) Models(int rows, int rowLength, int count, int seed, Func<int, int, float>? delta = null)
    {
        var random = new Random(seed);
        var @base = TestModels.RandomFloats(random, rows * rowLength);
        // Given deltas are kept exact: the base on a 1/64 grid, so base + δ − base is δ.
        if (delta is not null) @base = @base.Select(b => MathF.Round(b * 64) / 64).ToArray();
        var shape = rows == 1 ? new long[] { rowLength } : new long[] { rows, rowLength };
        var baseModel = _models.Write($"base{seed}", new[] { TestTensor.F32("w", @base, shape) });
        var tuned = new float[count][];
        var vectors = new TaskVector[count];
        for (var m = 0; m < count; m++)
        {
            tuned[m] = delta is null ? TestModels.Perturb(random, @base, 0.2) : @base.Select((b, i) => b + delta(m, i)).ToArray();
            vectors[m] = TaskVector.FromModels(baseModel, _models.Write($"tuned{seed}-{m}", new[] { TestTensor.F32("w", tuned[m], shape) }));
        }
        return (@base, tuned, vectors);
    }

    private static float[] Delta(float[] @base, float[] tuned) => tuned.Select((t, i) => t - @base[i]).ToArray();

    private static void AssertClose(double[] expected, float[] actual, double tolerance = 2e-6)
    {
        Assert.Equal(expected.Length, actual.Length);
        var wrong = Enumerable.Range(0, expected.Length).Where(i => Math.Abs(expected[i] - actual[i]) > tolerance * Math.Max(1, Math.Abs(expected[i]))).ToList();
        Assert.True(wrong.Count == 0, $"{wrong.Count} entries differ, first at {wrong.FirstOrDefault()}: expected {(wrong.Count > 0 ? expected[wrong[0]] : 0)}, got {(wrong.Count > 0 ? actual[wrong[0]] : 0)}");
    }

    [Theory]
    [InlineData(null)]
    [InlineData(40L)] // two rows of 17 per chunk
    [InlineData(5L)]  // a row longer than a chunk is one chunk
    public void Della_linear_is_magprune_per_row_then_a_weighted_sum(long? chunkElements)
    {
        var (@base, tuned, vectors) = Models(6, 17, 2, 11);
        var options = new[] { new DellaOptions(0.4, 0.15, 5, 0), new DellaOptions(0.7, 0.2, 5, 1) };
        var merged = TaskVector.Combine(vectors.Select((v, i) => v.WithDella(options[i])).ToList(),
            new MergeOptions(MergeMethod.Linear, new TensorParameter[] { 0.6, 0.9 }, false));
        var output = TestModels.ReadFloats(_models.Export(merged, $"lin{chunkElements}", chunkElements: chunkElements), "w");

        var pruned = new[] { MagPrune(Delta(@base, tuned[0]), 17, 0.4, 0.15, 5, 0, "w", DareRescale.InverseKeep), MagPrune(Delta(@base, tuned[1]), 17, 0.7, 0.2, 5, 1, "w", DareRescale.InverseKeep) };
        AssertClose(@base.Select((b, i) => b + 0.6 * pruned[0][i] + 0.9 * pruned[1][i]).ToArray(), output);
        // The draw really prunes: some entries of each input are dropped and some kept.
        Assert.InRange(pruned[0].Count(v => v == 0), 20, 90);
    }

    [Fact]
    public void A_chunk_of_many_rows_is_shared_between_the_cores_at_row_boundaries()
    {
        // 501 rows of 263: enough elements for two core ranges, whose element boundary (65881) falls inside a row.
        var (@base, tuned, vectors) = Models(501, 263, 1, 23);
        var merged = TaskVector.Combine(new[] { vectors[0].WithDella(new DellaOptions(0.3, 0.1, 42, 0)) },
            new MergeOptions(MergeMethod.Linear, new TensorParameter[] { 1.0 }, false));
        var output = TestModels.ReadFloats(_models.Export(merged, "rows"), "w");
        var pruned = MagPrune(Delta(@base, tuned[0]), 263, 0.3, 0.1, 42, 0, "w", DareRescale.InverseKeep);
        AssertClose(@base.Select((b, i) => b + pruned[i]).ToArray(), output);
    }

    [Fact]
    public void Della_is_magprune_then_sign_consensus_normalized_by_the_agreeing_weights()
    {
        var (@base, tuned, vectors) = Models(4, 32, 3, 12);
        var merged = TaskVector.Combine(vectors.Select((v, i) => v.WithDella(new DellaOptions(0.5, 0.1, 9, i))).ToList(),
            new MergeOptions(MergeMethod.Ties, new TensorParameter[] { 1, 0.5, 2 }, true, 1.0, new TensorParameter[] { 1.0, 1.0, 1.0 }));
        var output = TestModels.ReadFloats(_models.Export(merged, "ties", chunkElements: 64), "w");
        var pruned = tuned.Select((t, m) => MagPrune(Delta(@base, t), 32, 0.5, 0.1, 9, m, "w", DareRescale.InverseKeep)).ToArray();
        var consensus = SignConsensus(pruned, new[] { 1, 0.5, 2 });
        AssertClose(@base.Select((b, i) => b + consensus[i]).ToArray(), output);
    }

    [Theory]
    [InlineData(DareRescale.L1)]
    [InlineData(DareRescale.None)]
    [InlineData(DareRescale.Q)]
    public void Each_rescale_matches_the_plain_computation(DareRescale rescale)
    {
        var (@base, tuned, vectors) = Models(3, 50, 1, 13);
        var q = rescale == DareRescale.Q ? 0.45 : 0;
        var output = TestModels.ReadFloats(_models.Export(vectors[0].WithDella(new DellaOptions(0.3, 0.15, 2, 0, rescale) { Q = q }), $"r{rescale}", chunkElements: 50), "w");
        var pruned = MagPrune(Delta(@base, tuned[0]), 50, 0.3, 0.15, 2, 0, "w", rescale, q);
        AssertClose(@base.Select((b, i) => b + pruned[i]).ToArray(), output, 1e-5);
    }

    [Fact]
    public void Equal_magnitudes_are_ranked_by_position_and_zero_deltas_stay_zero()
    {
        // Model 0: every |δ| equal (signs alternate), so rank is position; model 1: δ = 0 everywhere.
        var (@base, tuned, vectors) = Models(2, 40, 2, 14, (m, i) => m == 0 ? (i % 2 == 0 ? 0.25f : -0.25f) : 0f);
        var merged = TaskVector.Combine(vectors.Select((v, i) => v.WithDella(new DellaOptions(0.5, 0.4, 21, i))).ToList(),
            new MergeOptions(MergeMethod.Linear, new TensorParameter[] { 1, 1 }, false));
        var output = TestModels.ReadFloats(_models.Export(merged, "ties-in-magnitude"), "w");
        var pruned = MagPrune(Delta(@base, tuned[0]), 40, 0.5, 0.4, 21, 0, "w", DareRescale.InverseKeep);
        AssertClose(@base.Select((b, i) => b + pruned[i]).ToArray(), output);
        // Later positions rank higher, so they are kept more often (p from 0.1 to 0.9).
        Assert.True(pruned.Skip(20).Take(20).Count(v => v != 0) + pruned.Skip(60).Count(v => v != 0) >
                    pruned.Take(20).Count(v => v != 0) + pruned.Skip(40).Take(20).Count(v => v != 0));
    }

    [Fact]
    public void A_single_model_one_dimensional_tensors_and_rows_of_one_entry()
    {
        var (@base, tuned, vectors) = Models(1, 300, 1, 15);
        var output = TestModels.ReadFloats(_models.Export(vectors[0].WithDella(new DellaOptions(0.6, 0.3, 1, 0)), "1d", chunkElements: 64), "w");
        var pruned = MagPrune(Delta(@base, tuned[0]), 300, 0.6, 0.3, 1, 0, "w", DareRescale.InverseKeep);
        AssertClose(@base.Select((b, i) => b + pruned[i]).ToArray(), output);

        // Shape [n, 1]: each row has one entry, kept with probability density (mergekit divides 0 by 0 there).
        var (base1, tuned1, vectors1) = Models(64, 1, 1, 16);
        var column = TestModels.ReadFloats(_models.Export(vectors1[0].WithDella(new DellaOptions(0.5, 0.1, 3, 0)), "col"), "w");
        var expected = MagPrune(Delta(base1, tuned1[0]), 1, 0.5, 0.1, 3, 0, "w", DareRescale.InverseKeep);
        AssertClose(base1.Select((b, i) => b + expected[i]).ToArray(), column);
    }

    [Fact]
    public void Density_one_leaves_the_delta_as_it_is()
    {
        var (@base, tuned, vectors) = Models(3, 20, 1, 17);
        var output = TestModels.ReadFloats(_models.Export(vectors[0].WithDella(new DellaOptions(1.0, 0.15, 1, 0)), "dense"), "w");
        Assert.Equal(tuned[0], output);
    }

    [Theory]
    [InlineData(0.1, 0.15)]
    [InlineData(0.9, 0.1)]
    [InlineData(0.5, 0.5)]
    public void Density_plus_or_minus_epsilon_outside_zero_to_one_is_refused(double density, double epsilon)
    {
        var (_, _, vectors) = Models(1, 8, 1, 18);
        var error = Assert.Throws<DareException>(() => vectors[0].WithDella(new DellaOptions(density, epsilon, 1, 0)));
        Assert.Equal(DareErrorId.InvalidParameter, error.ErrorId);
        Assert.Contains("density ± epsilon inside (0, 1)", error.Message);
    }

    [Fact]
    public void A_recipe_reports_the_epsilon_bounds_at_the_value()
    {
        Models(1, 8, 1, 19);
        var yaml = "merge_method: della\nbase_model: base19\nmodels:\n  - model: tuned19-0\n    parameters: { weight: 1, density: 0.1 }\nparameters:\n  epsilon: 0.2\n";
        var error = Assert.Throws<DareException>(() => RecipePlanner.Plan(RecipeParser.ParseText(yaml, _models.Root), new RecipePlanOptions { OutputPath = _models.PathOf("never") }));
        Assert.Equal(DareErrorId.RecipeInvalid, error.ErrorId);
        Assert.Contains("line 5", error.Message);
    }

    [Fact]
    public void Epsilon_is_per_model_under_della_and_merge_wide_under_ram()
    {
        Models(1, 8, 2, 22);
        BatchPlan Plan(string method) => RecipePlanner.Plan(RecipeParser.ParseText(
            $"merge_method: {method}\nbase_model: base22\nmodels:\n  - model: tuned22-0\n    parameters: {{ weight: 1, density: 0.5, epsilon: 0.2 }}\n  - model: tuned22-1\n    parameters: {{ weight: 1 }}\n",
            _models.Root), new RecipePlanOptions { OutputPath = _models.PathOf("never") });
        var della = Plan("della").Plans[0].Vector;
        Assert.Equal(0.2, Assert.IsType<ConstantParameter>(della.Inputs[0].Della!.Epsilon).Value);
        // The second model's density defaults to 1: no DELLA step.
        Assert.Null(della.Inputs[1].Della);
        var error = Assert.Throws<DareException>(() => Plan("ram"));
        Assert.Equal(DareErrorId.RecipeInvalid, error.ErrorId);
        Assert.Contains("'epsilon' applies to the whole merge with ram", error.Message);
    }

    [Theory]
    [InlineData("della", "density: 0.4, epsilon: 0.1", "rescale: true")]
    [InlineData("della_linear", "density: 0.6", "rescale: l1")]
    [InlineData("della_linear", "density: 0.2", "rescale: q\n  rescale_q: 0.5")]
    [InlineData("dare_linear", "density: 0.05", "rescale: q\n  rescale_q: 0.2")]
    public void A_recipe_merges_and_its_written_recipe_replays_to_identical_bytes(string method, string modelParameters, string global)
    {
        var (@base, tuned, _) = Models(5, 24, 2, 20);
        var yaml = $"merge_method: {method}\nbase_model: base20\nrandom_seed: 8\nmodels:\n  - model: tuned20-0\n    parameters: {{ weight: 1, {modelParameters} }}\n" +
                   $"  - model: tuned20-1\n    parameters: {{ weight: 0.5, {modelParameters} }}\nparameters:\n  {global}\nout_dtype: float32\n";
        var name = $"{method}-{global.Length}";
        var plan = RecipePlanner.Plan(RecipeParser.ParseText(yaml, _models.Root), new RecipePlanOptions { OutputPath = _models.PathOf(name) }).Plans[0];
        Assert.Empty(plan.Warnings);
        // The -WhatIf summary lists each model's DELLA density per tensor.
        if (method.StartsWith("della")) Assert.Equal(2, plan.Summary.Parameters.Count(u => u.Parameter == "DELLA density" && u.TensorCount == 1));
        new MergeExecutor().Export(plan.Vector, plan.Export);
        var replay = RecipePlanner.Plan(RecipeParser.ParseText(plan.Export.RecipeYaml!, _models.Root), new RecipePlanOptions { OutputPath = _models.PathOf(name + "-replay") }).Plans[0];
        Assert.Empty(replay.Warnings);
        new MergeExecutor().Export(replay.Vector, replay.Export);
        // DARE's linear merges are written as task_arithmetic with drop_rate (as before); DELLA keeps its recipe name.
        Assert.Contains($"merge_method: {(method == "dare_linear" ? "task_arithmetic" : method)}", plan.Export.RecipeYaml);
        var first = Directory.GetFiles(_models.PathOf(name), "*.safetensors").Single();
        var second = Directory.GetFiles(_models.PathOf(name + "-replay"), "*.safetensors").Single();
        Assert.Equal(File.ReadAllBytes(first), File.ReadAllBytes(second));

        // And the values are the plain computation's.
        var output = TestModels.ReadFloats(Checkpoint.Open(_models.PathOf(name)), "w");
        if (method == "dare_linear")
        {
            // DAREx-q: DARE's mask with drop rate 1 − density, survivors × 1/q.
            var key = DareMask.Key(8, 0, "w");
            var key1 = DareMask.Key(8, 1, "w");
            var threshold = (uint)Math.Round(0.95 * 4294967296.0);
            var expected = @base.Select((b, i) => b + (DareMask.Hash(key, i) < threshold ? 0 : (tuned[0][i] - b) / 0.2) + 0.5 * (DareMask.Hash(key1, i) < threshold ? 0 : (tuned[1][i] - b) / 0.2)).ToArray();
            AssertClose(expected, output, 1e-5);
        }
        else if (method == "della")
        {
            var pruned = tuned.Select((t, m) => MagPrune(Delta(@base, t), 24, 0.4, 0.1, 8, m, "w", DareRescale.InverseKeep)).ToArray();
            var consensus = SignConsensus(pruned, new[] { 1, 0.5 });
            AssertClose(@base.Select((b, i) => b + consensus[i]).ToArray(), output);
        }
    }
}
