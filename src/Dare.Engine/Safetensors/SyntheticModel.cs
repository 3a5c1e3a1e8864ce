using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace Dare.Engine.Safetensors;

/// <summary>The dimensions of a Llama-style decoder.</summary>
public sealed record LlamaShape(int HiddenSize = 256, int Layers = 2, int VocabSize = 1024, int? IntermediateSize = null, int? Heads = null)
{
    public int Intermediate => IntermediateSize ?? (int)(Math.Ceiling(HiddenSize * 8 / 3.0 / 64) * 64);
    public int HeadCount => Heads ?? Math.Max(1, HiddenSize / 64);

    /// <summary>Tensor names and shapes in Hugging Face Llama order.</summary>
    public IEnumerable<(string Name, long[] Shape)> Tensors()
    {
        yield return ("model.embed_tokens.weight", new long[] { VocabSize, HiddenSize });
        for (var i = 0; i < Layers; i++)
        {
            var p = $"model.layers.{i}.";
            yield return (p + "input_layernorm.weight", new long[] { HiddenSize });
            yield return (p + "mlp.down_proj.weight", new long[] { HiddenSize, Intermediate });
            yield return (p + "mlp.gate_proj.weight", new long[] { Intermediate, HiddenSize });
            yield return (p + "mlp.up_proj.weight", new long[] { Intermediate, HiddenSize });
            yield return (p + "post_attention_layernorm.weight", new long[] { HiddenSize });
            yield return (p + "self_attn.k_proj.weight", new long[] { HiddenSize, HiddenSize });
            yield return (p + "self_attn.o_proj.weight", new long[] { HiddenSize, HiddenSize });
            yield return (p + "self_attn.q_proj.weight", new long[] { HiddenSize, HiddenSize });
            yield return (p + "self_attn.v_proj.weight", new long[] { HiddenSize, HiddenSize });
        }
        yield return ("model.norm.weight", new long[] { HiddenSize });
        yield return ("lm_head.weight", new long[] { VocabSize, HiddenSize });
    }

    public long ParameterCount => Tensors().Sum(t => t.Shape.Aggregate(1L, (a, b) => a * b));
}

/// <summary>How <see cref="SyntheticModel.Write"/> is called from a session: where it runs, its cancellation, its warnings.</summary>
public sealed class SyntheticWriteOptions
{
    public string? CurrentLocation { get; init; }
    public CancellationToken Cancellation { get; init; }
    public Action<string>? Warning { get; init; }
}

/// <summary>
/// Writes small Llama-shaped checkpoints with random weights: a base, and fine-tunes that add a seeded random
/// delta to it. For demos, tests and benchmarks (nothing can be downloaded here).
/// </summary>
public static class SyntheticModel
{
    /// <param name="baseModel">When given, the new model is that base plus a random delta of scale <paramref name="deltaScale"/>.</param>
    public static CheckpointWriteResult Write(string destination, LlamaShape shape, long seed, Checkpoint? baseModel = null,
        double deltaScale = 0.002, SafetensorsDType dtype = SafetensorsDType.BF16, long maxShardSize = CheckpointWriteOptions.DefaultMaxShardSize, bool force = false,
        SyntheticWriteOptions? session = null)
    {
        TorchRuntime.EnsureInitialized();
        var tensors = shape.Tensors().ToList();
        var plan = tensors.Select(t => new PlannedTensor(t.Name, dtype, t.Shape)).ToList();
        var side = Path.Combine(Path.GetTempPath(), $"dare-synthetic-{Guid.NewGuid():N}");
        Directory.CreateDirectory(side);
        try
        {
            WriteSideFiles(side, shape, dtype);
            using var writer = CheckpointWriter.Create(destination, plan, new CheckpointWriteOptions
            {
                MaxShardSize = maxShardSize,
                Force = force,
                ProtectedPaths = baseModel is null ? Array.Empty<string>() : OutputFolder.InputPathsOf(new[] { baseModel }),
                CurrentLocation = session?.CurrentLocation,
                Warning = session?.Warning,
                CopySideFilesFrom = side,
                Metadata = new Dictionary<string, string> { ["dare_synthetic_seed"] = seed.ToString(System.Globalization.CultureInfo.InvariantCulture) },
            });
            using var reader = new TensorReader();
            var index = 0;
            foreach (var (name, dims) in tensors)
            {
                session?.Cancellation.ThrowIfCancellationRequested();
                using var scope = NewDisposeScope();
                using var generator = new Generator((ulong)(seed * 1_000_003 + index++));
                Tensor values;
                if (baseModel is not null)
                {
                    var baseInfo = baseModel.Find(name) ?? throw new ArgumentException($"The base model has no tensor '{name}'.");
                    values = reader.Read(baseInfo).to_type(ScalarType.Float32).add_(randn(dims, generator: generator).mul_(deltaScale));
                }
                else
                {
                    values = name.EndsWith("norm.weight", StringComparison.Ordinal)
                        ? ones(dims).add_(randn(dims, generator: generator).mul_(0.01))
                        : randn(dims, generator: generator).mul_(0.02);
                }
                writer.WriteTensor(name, values.to_type(dtype.ToScalarType()).contiguous());
            }
            return writer.Commit();
        }
        finally
        {
            Directory.Delete(side, recursive: true);
        }
    }

    private static void WriteSideFiles(string folder, LlamaShape shape, SafetensorsDType dtype)
    {
        var options = new JsonSerializerOptions { WriteIndented = true };
        var config = new JsonObject
        {
            ["architectures"] = new JsonArray("LlamaForCausalLM"),
            ["model_type"] = "llama",
            ["hidden_size"] = shape.HiddenSize,
            ["intermediate_size"] = shape.Intermediate,
            ["num_hidden_layers"] = shape.Layers,
            ["num_attention_heads"] = shape.HeadCount,
            ["num_key_value_heads"] = shape.HeadCount,
            ["vocab_size"] = shape.VocabSize,
            ["rms_norm_eps"] = 1e-5,
            ["torch_dtype"] = dtype.TorchDTypeName(),
        };
        File.WriteAllText(Path.Combine(folder, "config.json"), config.ToJsonString(options));
        File.WriteAllText(Path.Combine(folder, "generation_config.json"), new JsonObject { ["bos_token_id"] = 1, ["eos_token_id"] = 2 }.ToJsonString(options));
        File.WriteAllText(Path.Combine(folder, "tokenizer_config.json"), new JsonObject { ["model_max_length"] = 4096, ["tokenizer_class"] = "LlamaTokenizer" }.ToJsonString(options));
        File.WriteAllText(Path.Combine(folder, "special_tokens_map.json"), new JsonObject { ["bos_token"] = "<s>", ["eos_token"] = "</s>" }.ToJsonString(options));
    }
}
