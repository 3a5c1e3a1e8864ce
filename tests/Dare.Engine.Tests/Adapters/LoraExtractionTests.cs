using System.Text.Json.Nodes;
using Dare.Engine.Adapters;
using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using Dare.Engine.Tests.Merge;
using Xunit;
using static Dare.Engine.Tests.Adapters.TestAdapters;

namespace Dare.Engine.Tests.Adapters;

/// <summary>
/// Export-LoraAdapter's engine: δ with known singular values (built here from orthonormal factors) is extracted at
/// full rank to float precision and at lower rank with Eckart–Young's optimal error; names, shapes and config are
/// PEFT's; the adapter reads back as the same δ.
/// </summary>
public sealed class LoraExtractionTests : IDisposable
{
    private const int Out = 8, In = 6, Vocabulary = 7, UpOut = 5;
    private const string Q = "model.layers.0.self_attn.q_proj.weight", Up = "model.layers.0.mlp.up_proj.weight", Embed = "model.embed_tokens.weight";
    private static readonly double[] Singular = { 5, 3, 2, 1, 0.5 };
    private readonly TestModels _models = new();
    private readonly Random _random = new(21);
    private readonly Dictionary<string, float[]> _base = new(), _tuned = new();
    private readonly Checkpoint _baseModel, _tunedModel;

    public LoraExtractionTests()
    {
        // q_proj's base is zero, so its δ is exactly the stored U·diag(σ)·Vᵀ (rank 5, float32-rounded).
        _base[Q] = new float[Out * In];
        _tuned[Q] = LowRank(Out, In, Singular);
        // up_proj's δ has five equal singular values: 90% of its energy needs all five.
        _base[Up] = TestModels.RandomFloats(_random, UpOut * In);
        var flat = LowRank(UpOut, In, new[] { 1.0, 1, 1, 1, 1 });
        _tuned[Up] = _base[Up].Select((b, i) => b + flat[i]).ToArray();
        _base[Embed] = TestModels.RandomFloats(_random, Vocabulary * In);
        _tuned[Embed] = TestModels.Perturb(_random, _base[Embed], 0.2);
        _base["model.norm.weight"] = TestModels.RandomFloats(_random, In);
        _tuned["model.norm.weight"] = TestModels.Perturb(_random, _base["model.norm.weight"], 0.2);
        _baseModel = _models.Write("base", _base.Select(p => TestTensor.F32(p.Key, p.Value, ShapeOf(p.Key))));
        _tunedModel = _models.Write("tuned", _tuned.Select(p => TestTensor.F32(p.Key, p.Value, ShapeOf(p.Key))));
    }

    public void Dispose() => _models.Dispose();

    private static long[] ShapeOf(string name) => name switch
    {
        Q => new long[] { Out, In },
        Up => new long[] { UpOut, In },
        Embed => new long[] { Vocabulary, In },
        _ => new long[] { In },
    };

    /// <summary>U·diag(σ)·Vᵀ with U (rows×k) and V (columns×k) orthonormal by Gram–Schmidt on seeded random vectors, in float64.</summary>
    private float[] LowRank(int rows, int columns, double[] singular)
    {
        var u = Orthonormal(rows, singular.Length);
        var v = Orthonormal(columns, singular.Length);
        var m = new float[rows * columns];
        for (var i = 0; i < rows; i++)
            for (var j = 0; j < columns; j++)
                m[i * columns + j] = (float)singular.Select((s, k) => s * u[k][i] * v[k][j]).Sum();
        return m;
    }

    private double[][] Orthonormal(int length, int count)
    {
        var vectors = new List<double[]>();
        while (vectors.Count < count)
        {
            var x = Enumerable.Range(0, length).Select(_ => _random.NextDouble() * 2 - 1).ToArray();
            foreach (var e in vectors)
            {
                var dot = x.Zip(e, (p, q) => p * q).Sum();
                for (var i = 0; i < length; i++) x[i] -= dot * e[i];
            }
            var norm = Math.Sqrt(x.Sum(v => v * v));
            vectors.Add(x.Select(v => v / norm).ToArray());
        }
        return vectors.ToArray();
    }

    private LoraExportResult Extract(string name, int rank, Func<LoraExportOptions, LoraExportOptions>? more = null)
    {
        var options = new LoraExportOptions { Destination = _models.PathOf(name), Rank = rank, OutputDType = SafetensorsDType.F32 };
        return new LoraExtractor().Export(TaskVector.FromModels(_baseModel, _tunedModel), more?.Invoke(options) ?? options);
    }

    private static Dictionary<string, TensorInfo> Saved(string folder) =>
        SafetensorsFile.Open(Path.Combine(folder, "adapter_model.safetensors")).Tensors.ToDictionary(t => t.Name);

    /// <summary>‖δ − B·A‖_F / ‖δ‖_F for the saved factors, in float64.</summary>
    private static double MeasuredError(float[] delta, float[] a, float[] b, int rows, int rank, int columns)
    {
        var rebuilt = Product(b, a, rows, rank, columns, 1.0);
        var residual = delta.Select((d, i) => (d - rebuilt[i]) * (d - rebuilt[i])).Sum();
        return Math.Sqrt(residual / delta.Sum(d => (double)d * d));
    }

    private static double OptimalError(int rank) => Math.Sqrt(Singular.Skip(rank).Sum(s => s * s) / Singular.Sum(s => s * s));

    [Theory]
    [InlineData(5, false)]
    [InlineData(3, false)]
    [InlineData(1, false)]
    [InlineData(5, true)]
    [InlineData(2, true)]
    public void A_matrix_of_known_singular_values_is_extracted_with_the_optimal_error(int rank, bool randomizedSvd)
    {
        var result = Extract($"rank{rank}-{randomizedSvd}", rank, o => randomizedSvd ? new LoraExportOptions
        {
            Destination = o.Destination, Rank = o.Rank, OutputDType = o.OutputDType, FullSvdLimit = 2,
        } : o);
        var saved = Saved(result.Path);
        var a = TestModels.ReadRaw<float>(saved["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]);
        var b = TestModels.ReadRaw<float>(saved["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]);
        var measured = MeasuredError(_tuned[Q], a, b, Out, rank, In);
        var reported = result.Modules.Single(m => m.Tensor == Q).RelativeError;
        var tolerance = rank == Singular.Length ? 1e-6 : 1e-5;
        Assert.InRange(measured, OptimalError(rank) - tolerance, OptimalError(rank) + tolerance);
        Assert.InRange(reported, measured - 1e-9, measured + 1e-9);
    }

    [Fact]
    public void Svd_chooses_the_exact_or_the_randomized_decomposition_for_every_matrix()
    {
        // 40 × 30 with two leading singular values over 28 equal ones: a rank-2 range finder (12 vectors, 4 power
        // iterations) mixes the flat part into the leading pair, so only the exact SVD reaches Eckart–Young's error
        // (to float32's 1e-5; the randomized one is ~1e-3 above it here).
        const string K = "model.layers.0.self_attn.k_proj.weight";
        var spectrum = new[] { 1.0, 0.95 }.Concat(Enumerable.Repeat(0.9, 28)).ToArray();
        var shape = new long[] { 40, 30 };
        var flatBase = _models.Write("flat-base", new[] { TestTensor.F32(K, new float[40 * 30], shape) });
        var flatTuned = _models.Write("flat-tuned", new[] { TestTensor.F32(K, LowRank(40, 30, spectrum), shape) });
        LoraModuleExport Extract(SvdMethod svd, long autoLimit) => new LoraExtractor().Export(TaskVector.FromModels(flatBase, flatTuned), new LoraExportOptions
        {
            Destination = _models.PathOf($"flat-{svd}-{autoLimit}"), Rank = 2, OutputDType = SafetensorsDType.F32, Svd = svd, FullSvdLimit = autoLimit,
        }).Modules.Single();
        var optimal = Math.Sqrt(spectrum.Skip(2).Sum(s => s * s) / spectrum.Sum(s => s * s));

        var exact = Extract(SvdMethod.Exact, autoLimit: 4); // exact although the matrix is above Auto's limit
        Assert.Equal(SvdMethod.Exact, exact.Svd);
        Assert.InRange(exact.RelativeError, optimal - 1e-5, optimal + 1e-5);
        var randomized = Extract(SvdMethod.Randomized, autoLimit: 4096); // randomized although it is below
        Assert.Equal(SvdMethod.Randomized, randomized.Svd);
        Assert.True(randomized.RelativeError > optimal + 1e-4, $"randomized {randomized.RelativeError} against the optimal {optimal}");
        Assert.Equal(SvdMethod.Randomized, Extract(SvdMethod.Auto, autoLimit: 29).Svd);
        var auto = Extract(SvdMethod.Auto, autoLimit: 30);
        Assert.Equal(SvdMethod.Exact, auto.Svd);
        Assert.Equal(exact.RelativeError, auto.RelativeError);
    }

    [Fact]
    public void The_adapter_has_PEFTs_names_shapes_and_config()
    {
        var result = Extract("peft", 3, o => new LoraExportOptions { Destination = o.Destination, Rank = 3, OutputDType = SafetensorsDType.F32, BaseModelNameOrPath = "org/base" });
        var saved = Saved(result.Path);
        Assert.Equal(new[]
        {
            "base_model.model.model.embed_tokens.weight",
            "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight", "base_model.model.model.layers.0.mlp.up_proj.lora_B.weight",
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
        }, saved.Keys.Order(StringComparer.Ordinal));
        Assert.Equal(new long[] { 3, In }, saved["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].Shape);
        Assert.Equal(new long[] { Out, 3 }, saved["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"].Shape);
        Assert.Equal(new long[] { UpOut, 3 }, saved["base_model.model.model.layers.0.mlp.up_proj.lora_B.weight"].Shape);
        // The embedding is saved whole: base + δ, i.e. the fine-tune's values.
        Assert.Equal(_tuned[Embed].Select((t, i) => _base[Embed][i] + (t - _base[Embed][i])), TestModels.ReadRaw<float>(saved["base_model.model.model.embed_tokens.weight"]));
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(result.Path, "adapter_config.json")))!.AsObject();
        Assert.Equal("LORA", (string?)config["peft_type"]);
        Assert.Equal("org/base", (string?)config["base_model_name_or_path"]);
        Assert.Equal(3, (int)config["r"]!);
        Assert.Equal(3, (double)config["lora_alpha"]!);
        Assert.Equal(new[] { "q_proj", "up_proj" }, config["target_modules"]!.AsArray().Select(n => (string)n!).Order());
        Assert.Equal(new[] { "embed_tokens" }, config["modules_to_save"]!.AsArray().Select(n => (string)n!));
        Assert.Empty(config["rank_pattern"]!.AsObject());
        Assert.Equal(1, result.SkippedTensors); // model.norm.weight
        Assert.False(File.Exists(Path.Combine(result.Path, "model.safetensors")));
    }

    [Fact]
    public void Ranks_chosen_by_energy_differ_per_module_and_go_into_rank_pattern()
    {
        // σ² = 25, 9, 4, 1, 0.25: 90% of the energy needs 3 singular values; up_proj's five equal ones need all 5.
        var result = Extract("energy", 5, o => new LoraExportOptions { Destination = o.Destination, Rank = 5, RetainedEnergy = 0.9, OutputDType = SafetensorsDType.F32 });
        var q = result.Modules.Single(m => m.Tensor == Q);
        Assert.Equal(3, q.Rank);
        Assert.InRange(q.RelativeError, OptimalError(3) - 1e-5, OptimalError(3) + 1e-5);
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(result.Path, "adapter_config.json")))!.AsObject();
        Assert.Equal(result.Rank, (int)config["r"]!);
        Assert.Equal(5, result.Modules.Single(m => m.Tensor == Up).Rank);
        Assert.Equal(5, result.Rank);
        Assert.Equal(3, (int)config["rank_pattern"]!.AsObject().Single().Value!);
        Assert.Equal(3, (int)config["alpha_pattern"]!.AsObject().Single().Value!);
        var saved = Saved(result.Path);
        Assert.Equal(new long[] { 3, In }, saved["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].Shape);

        // Read back, rank_pattern and alpha_pattern give q_proj r = α = 3 (scale 1): δ = B·A of the saved factors.
        var a = TestModels.ReadRaw<float>(saved["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]);
        var b = TestModels.ReadRaw<float>(saved["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]);
        using var readBack = new MergeExecutor().ComputeDelta(TaskVector.FromAdapter(_baseModel, LoraAdapter.Open(result.Path)), Q);
        Assert.Equal(Product(b, a, Out, 3, In, 1.0).Select(d => (float)d), readBack.data<float>().ToArray());
    }

    [Fact]
    public void Extraction_and_reading_an_adapter_leave_no_live_tensors()
    {
        var start = TorchSharp.DisposeScopeManager.Statistics.TensorStatistics.ThreadTotalLiveCount;
        var result = Extract("leak-check", 3, o => new LoraExportOptions { Destination = o.Destination, Rank = 3, Embeddings = EmbeddingExport.Lora, FullSvdLimit = 4 });
        var readBack = TaskVector.FromAdapter(_baseModel, LoraAdapter.Open(result.Path));
        _models.Export(readBack, "leak-check-merged", chunkElements: 5);
        TaskVectorStatistics.Measure(readBack, new MergeExecutor(), false, rankSamples: 2);
        Assert.Equal(start, TorchSharp.DisposeScopeManager.Statistics.TensorStatistics.ThreadTotalLiveCount);
    }

    [Fact]
    public void A_singular_value_threshold_keeps_the_values_above_it()
    {
        var result = Extract("threshold", 5, o => new LoraExportOptions { Destination = o.Destination, Rank = 5, MinSingularValue = 2.5, OutputDType = SafetensorsDType.F32 });
        Assert.Equal(2, result.Modules.Single(m => m.Tensor == Q).Rank);
    }

    [Fact]
    public void The_adapter_reads_back_as_the_same_delta_with_embeddings_as_lora()
    {
        var result = Extract("roundtrip", 6, o => new LoraExportOptions { Destination = o.Destination, Rank = 6, Embeddings = EmbeddingExport.Lora, OutputDType = SafetensorsDType.F32 });
        var saved = Saved(result.Path);
        Assert.Equal(new long[] { 6, Vocabulary }, saved["base_model.model.model.embed_tokens.lora_embedding_A"].Shape);
        Assert.Equal(new long[] { In, 6 }, saved["base_model.model.model.embed_tokens.lora_embedding_B"].Shape);
        var readBack = TaskVector.FromAdapter(_baseModel, LoraAdapter.Open(result.Path));
        var executor = new MergeExecutor();
        foreach (var name in new[] { Q, Up, Embed })
        {
            using var delta = executor.ComputeDelta(readBack, name);
            Reference.AssertClose(Reference.Delta(_base[name], _tuned[name]), delta.data<float>().ToArray(), 1e-5, name);
        }
        using var norm = executor.ComputeDelta(readBack, "model.norm.weight");
        Assert.All(norm.data<float>().ToArray(), v => Assert.Equal(0f, v));
    }

    [Fact]
    public void Include_and_exclude_patterns_choose_the_matrices()
    {
        var result = Extract("patterns", 2, o => new LoraExportOptions
        {
            Destination = o.Destination, Rank = 2, Include = new[] { "model.layers.*" }, Exclude = new[] { "*.MLP.*" }, OutputDType = SafetensorsDType.F32,
        });
        Assert.Equal(new[] { "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight" },
            Saved(result.Path).Keys.Order(StringComparer.Ordinal));
    }

    [Fact]
    public void An_existing_folder_is_left_alone_without_force()
    {
        var target = _models.PathOf("taken");
        Directory.CreateDirectory(target);
        File.WriteAllText(Path.Combine(target, "keep.txt"), "mine");
        var error = Assert.Throws<DareException>(() => Extract("taken", 2));
        Assert.Equal(DareErrorId.OutputExists, error.ErrorId);
        Assert.Equal(new[] { Path.Combine(target, "keep.txt") }, Directory.GetFiles(target));
    }
}
