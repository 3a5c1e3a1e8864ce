using System.Diagnostics;
using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using TorchSharp;
using static TorchSharp.torch;

namespace Dare.Engine.Evaluation;

/// <summary>Settings of a perplexity measurement.</summary>
public sealed record PerplexityOptions
{
    /// <summary>Longest context when the config says nothing (and the cap on what it says), to keep CPU runs practical.</summary>
    public const int DefaultContextCap = 2048;

    /// <summary>Window length in tokens; null: the config's max_position_embeddings (or sliding_window), at most <see cref="DefaultContextCap"/>.</summary>
    public int? ContextLength { get; init; }

    /// <summary>Use only the first this many tokens of the text; null: all of it.</summary>
    public long? MaxTokens { get; init; }

    /// <summary>Compute type: BF16 or F32.</summary>
    public SafetensorsDType DType { get; init; } = SafetensorsDType.F32;

    /// <summary>Where the forward passes run, spelled as for the exports: cpu (or torch-cpu), cuda or cuda:N.</summary>
    public string Device { get; init; } = "cpu";

    /// <summary>Rough bound on activation memory per batch of windows (hidden states, MLP and attention scores).</summary>
    public long ActivationBytes { get; init; } = 1L << 30;
}

/// <summary>
/// Perplexity of a Llama-family causal LM on a token sequence. The text is cut into non-overlapping windows of
/// ContextLength tokens (no stride: every token is scored once, with the context its window gives it); windows go
/// through the model in batches, and each batch runs layer by layer, reading that layer's weights from the
/// checkpoint, using them on the whole batch and disposing them. Peak memory is one layer's weights, the embedding
/// and head, and one batch's activations; never the whole model.
/// </summary>
public static class PerplexityEvaluator
{
    /// <summary>Tokenises <paramref name="textPath"/> with the model's tokenizer and measures.</summary>
    public static PerplexityResult Measure(Checkpoint model, string textPath, PerplexityOptions options, IProgress<PerplexityProgress>? progress = null, CancellationToken cancellation = default)
    {
        RegularFile.Check(textPath, "text");
        if (!File.Exists(textPath))
        {
            throw new DareException(DareErrorId.PathNotFound, DareErrorKind.ObjectNotFound, $"Cannot find the text file '{textPath}'.") { FilePath = textPath };
        }
        var tokenizer = ModelTokenizer.Load(model.Directory);
        var tokens = tokenizer.Encode(File.ReadAllText(textPath));
        return Measure(model, tokens, options, progress, cancellation) with { TextPath = System.IO.Path.GetFullPath(textPath) };
    }

    /// <summary>Measures on token ids already produced (by the model's tokenizer or a caller's own).</summary>
    public static PerplexityResult Measure(Checkpoint model, IReadOnlyList<int> tokens, PerplexityOptions options, IProgress<PerplexityProgress>? progress = null, CancellationToken cancellation = default)
    {
        var clock = Stopwatch.StartNew();
        TorchRuntime.EnsureInitialized();
        var config = LlamaConfig.FromCheckpoint(model);
        var context = ContextLength(config, options);
        var used = options.MaxTokens is { } max ? tokens.Take((int)Math.Min(max, int.MaxValue)).ToArray() : tokens.ToArray();
        if (used.Length < 2)
        {
            throw new DareException(DareErrorId.TextTooShort, DareErrorKind.InvalidArgument,
                $"The text gives {used.Length} token(s); perplexity needs at least 2 (one to predict from, one to predict).");
        }
        var vocabulary = EmbeddingRows(model);
        var outside = Array.FindIndex(used, t => t < 0 || t >= vocabulary);
        if (outside >= 0)
        {
            throw new DareException(DareErrorId.TokenizerUnsupported, DareErrorKind.InvalidData,
                $"Token {outside} of the text has id {used[outside]}, outside the model's {vocabulary}-row embedding in '{model.Path}': the tokenizer files do not belong to this model.") { FilePath = model.Path };
        }
        var windows = Enumerable.Range(0, (used.Length + context - 1) / context)
            .Select(i => used.AsSpan(i * context, Math.Min(context, used.Length - i * context)).ToArray())
            .Where(w => w.Length >= 2).ToList();
        var dtype = ComputeType(options.DType);
        var device = ParseDevice(options.Device);
        var perWindow = (long)context * (config.HiddenSize * 3L + config.IntermediateSize * 3L) * 4 + (long)config.Heads * context * context * 8;
        var batchSize = (int)Math.Clamp(options.ActivationBytes / Math.Max(1, perWindow), 1, windows.Count);

        double totalNll = 0;
        long scored = 0;
        using (inference_mode())
        using (var reader = new TensorReader())
        {
            var weights = new CheckpointWeights(model, reader, dtype, device);
            for (var start = 0; start < windows.Count; start += batchSize)
            {
                var batch = windows.Skip(start).Take(batchSize).ToList();
                foreach (var length in batch.Select(w => w.Length).Distinct())
                {
                    var group = batch.Where(w => w.Length == length).ToList();
                    totalNll += BatchNll(group, config, weights, dtype, device, l => progress?.Report(new PerplexityProgress(start, windows.Count, l, config.Layers)), cancellation);
                    scored += group.Count * (long)(length - 1);
                }
            }
        }
        progress?.Report(new PerplexityProgress(windows.Count, windows.Count, config.Layers, config.Layers));
        var mean = totalNll / scored;
        return new PerplexityResult
        {
            Model = model.Name, Path = model.Path, Tokens = scored, Windows = windows.Count, ContextLength = context,
            NegativeLogLikelihood = mean, Perplexity = Math.Exp(mean), DType = dtype == ScalarType.BFloat16 ? "bfloat16" : "float32",
            Device = device.ToString(), Elapsed = clock.Elapsed,
        };
    }

    /// <summary>The summed NLL of windows of one length, run layer by layer.</summary>
    private static double BatchNll(List<int[]> windows, LlamaConfig config, CheckpointWeights weights, ScalarType dtype, Device device, Action<int> atLayer, CancellationToken cancellation)
    {
        using var scope = NewDisposeScope();
        var length = windows[0].Length;
        var ids = tensor(windows.SelectMany(w => w).Select(t => (long)t).ToArray(), new long[] { windows.Count, length }, device: device);
        var hidden = Hidden(ids, config, weights, dtype, device, atLayer, cancellation);
        using (var head = NewDisposeScope())
        {
            var normed = LlamaForward.RmsNorm(hidden, weights.Get("model.norm.weight"), config.RmsNormEps);
            var output = weights.Head(config);
            double sum = 0;
            // Logits a few hundred positions at a time: a 150k vocabulary times a 2k window would be 1.2 GB at once.
            const int Rows = 256;
            var targets = ids.narrow(1, 1, length - 1);
            for (var first = 0; first < length - 1; first += Rows)
            {
                using var chunk = NewDisposeScope();
                var count = Math.Min(Rows, length - 1 - first);
                var logits = LlamaForward.Logits(normed.narrow(1, first, count), output);
                var logProbabilities = nn.functional.log_softmax(logits, -1);
                var picked = logProbabilities.gather(-1, targets.narrow(1, first, count).unsqueeze(-1));
                sum -= picked.to_type(ScalarType.Float64).sum().item<double>();
            }
            return sum;
        }
    }

    /// <summary>Final hidden states (before the last norm) of token ids [batch, length], reading each layer's weights once.</summary>
    internal static Tensor Hidden(Tensor ids, LlamaConfig config, CheckpointWeights weights, ScalarType dtype, Device device, Action<int>? atLayer, CancellationToken cancellation)
    {
        var length = ids.shape[1];
        var (cos, sin) = LlamaForward.Rotary(config, length, dtype, device);
        Tensor hidden;
        using (var embedScope = NewDisposeScope())
        {
            hidden = LlamaForward.Embed(ids, weights.Get("model.embed_tokens.weight")).MoveToOuterDisposeScope();
        }
        for (var layer = 0; layer < config.Layers; layer++)
        {
            cancellation.ThrowIfCancellationRequested();
            atLayer?.Invoke(layer);
            using var layerScope = NewDisposeScope();
            var next = LlamaForward.DecoderLayer(hidden, layer, config, weights.TryGet, cos, sin).MoveToOuterDisposeScope();
            hidden.Dispose();
            hidden = next;
        }
        return hidden;
    }

    /// <summary>Logits [length, vocab] of one window (for tests that compare the forward pass with a reference).</summary>
    internal static float[] Logits(Checkpoint model, int[] ids, SafetensorsDType computeType)
    {
        TorchRuntime.EnsureInitialized();
        var config = LlamaConfig.FromCheckpoint(model);
        var dtype = ComputeType(computeType);
        using var mode = inference_mode();
        using var reader = new TensorReader();
        using var scope = NewDisposeScope();
        var weights = new CheckpointWeights(model, reader, dtype, CPU);
        var input = tensor(ids.Select(t => (long)t).ToArray(), new long[] { 1, ids.Length });
        var hidden = Hidden(input, config, weights, dtype, CPU, null, CancellationToken.None);
        var logits = LlamaForward.Logits(LlamaForward.RmsNorm(hidden, weights.Get("model.norm.weight"), config.RmsNormEps), weights.Head(config));
        return logits.contiguous().data<float>().ToArray();
    }

    private static int ContextLength(LlamaConfig config, PerplexityOptions options)
    {
        var limit = new[] { config.MaxPositionEmbeddings, config.SlidingWindow }.Where(v => v is not null).Select(v => v!.Value).DefaultIfEmpty(int.MaxValue).Min();
        if (options.ContextLength is { } asked)
        {
            if (asked < 2 || asked > limit)
            {
                throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument,
                    $"-ContextLength {asked} is outside 2..{(limit == int.MaxValue ? "any" : limit)} (the model's max_position_embeddings / sliding_window).");
            }
            return asked;
        }
        return Math.Min(limit, PerplexityOptions.DefaultContextCap);
    }

    private static long EmbeddingRows(Checkpoint model) =>
        model.Find("model.embed_tokens.weight")?.Shape[0] ?? throw LlamaForward.MissingTensor("model.embed_tokens.weight");

    internal static ScalarType ComputeType(SafetensorsDType dtype) => dtype switch
    {
        SafetensorsDType.BF16 => ScalarType.BFloat16,
        SafetensorsDType.F32 => ScalarType.Float32,
        _ => throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument, $"Perplexity is computed in bfloat16 or float32, not {dtype}."),
    };

    /// <summary>The device as the exports spell it (cpu, torch-cpu, cuda, cuda:N): a CUDA device TorchSharp does not offer is DeviceUnavailable.</summary>
    internal static Device ParseDevice(string text)
    {
        var device = ComputeDevice.Parse(text);
        device.EnsureAvailable();
        return device.TorchDevice;
    }
}
