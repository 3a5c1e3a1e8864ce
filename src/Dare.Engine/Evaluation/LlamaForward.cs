using TorchSharp;
using static TorchSharp.torch;

namespace Dare.Engine.Evaluation;

/// <summary>
/// The Llama-family decoder forward pass (Llama, Mistral, Qwen2) as plain TorchSharp tensor operations, following
/// Hugging Face's modeling_llama: RMSNorm computed in float32, rotary embeddings in the rotate_half convention,
/// grouped-query causal attention, SwiGLU MLP. Weights come from a lookup by Hugging Face tensor name, so the same
/// code runs on weights read layer by layer from a checkpoint (evaluation) or on trainable tensors (the example's
/// training); it keeps no state and allocates only tensors the caller's dispose scope owns.
/// </summary>
public static class LlamaForward
{
    /// <summary>Hidden states [batch, length, hidden] for token ids [batch, length].</summary>
    public static Tensor Embed(Tensor ids, Tensor embedding)
    {
        var shape = ids.shape;
        return embedding.index_select(0, ids.flatten()).view(shape[0], shape[1], embedding.shape[1]);
    }

    /// <summary>cos and sin tables [length, headDim] for positions 0..length-1, in <paramref name="dtype"/>.</summary>
    public static (Tensor Cos, Tensor Sin) Rotary(LlamaConfig config, long length, ScalarType dtype, Device device)
    {
        using var scope = NewDisposeScope();
        var half = arange(0, config.HeadDim, 2, dtype: ScalarType.Float64, device: device).div(config.HeadDim);
        var inverseFrequency = pow(config.RopeTheta, half).reciprocal().to_type(ScalarType.Float32);
        var positions = arange(length, dtype: ScalarType.Float32, device: device).div(config.RopeLinearFactor);
        var angles = outer(positions, inverseFrequency);
        var both = cat(new[] { angles, angles }, 1);
        return (both.cos().to_type(dtype).MoveToOuterDisposeScope(), both.sin().to_type(dtype).MoveToOuterDisposeScope());
    }

    /// <summary>Hugging Face's LlamaRMSNorm: normalised in float32, cast back, then scaled by the weight.</summary>
    public static Tensor RmsNorm(Tensor x, Tensor weight, double eps)
    {
        var wide = x.to_type(ScalarType.Float32);
        var normalised = wide.mul(wide.pow(2).mean(new long[] { -1 }, keepdim: true).add(eps).rsqrt());
        return weight.mul(normalised.to_type(x.dtype));
    }

    /// <summary>One decoder layer: h + attention(norm(h)), then + mlp(norm(·)).</summary>
    public static Tensor DecoderLayer(Tensor h, int layer, LlamaConfig config, Func<string, Tensor?> weight, Tensor cos, Tensor sin)
    {
        var prefix = $"model.layers.{layer}.";
        Tensor Required(string name) => weight(prefix + name) ?? throw MissingTensor(prefix + name);
        var attended = Attention(RmsNorm(h, Required("input_layernorm.weight"), config.RmsNormEps), prefix, config, weight, cos, sin);
        var residual = h.add(attended);
        var normed = RmsNorm(residual, Required("post_attention_layernorm.weight"), config.RmsNormEps);
        var gate = nn.functional.silu(nn.functional.linear(normed, Required("mlp.gate_proj.weight")));
        var up = nn.functional.linear(normed, Required("mlp.up_proj.weight"));
        return residual.add(nn.functional.linear(gate.mul(up), Required("mlp.down_proj.weight")));
    }

    private static Tensor Attention(Tensor x, string prefix, LlamaConfig config, Func<string, Tensor?> weight, Tensor cos, Tensor sin)
    {
        long batch = x.shape[0], length = x.shape[1];
        Tensor Project(string name, int heads)
        {
            // Biases exist for Qwen2's q/k/v (and Llama configs with attention_bias); read them when the checkpoint has them.
            var projected = nn.functional.linear(x, weight($"{prefix}self_attn.{name}.weight") ?? throw MissingTensor($"{prefix}self_attn.{name}.weight"),
                weight($"{prefix}self_attn.{name}.bias"));
            return projected.view(batch, length, heads, config.HeadDim).transpose(1, 2);
        }
        var q = ApplyRotary(Project("q_proj", config.Heads), cos, sin);
        var k = ApplyRotary(Project("k_proj", config.KeyValueHeads), cos, sin);
        var v = Project("v_proj", config.KeyValueHeads);
        var groups = config.Heads / config.KeyValueHeads;
        if (groups > 1)
        {
            k = k.repeat_interleave(groups, 1);
            v = v.repeat_interleave(groups, 1);
        }
        var scores = matmul(q, k.transpose(2, 3)).div(Math.Sqrt(config.HeadDim));
        var future = ones(length, length, dtype: ScalarType.Bool, device: x.device).triu(1);
        if (config.SlidingWindow is { } window && window < length)
        {
            // Mistral: a position sees at most the last `window` positions (itself included).
            future = future.logical_or(ones(length, length, dtype: ScalarType.Bool, device: x.device).tril(-window));
        }
        // Softmax in float32 as Hugging Face's eager attention does, then back to the compute type.
        var probabilities = nn.functional.softmax(scores.to_type(ScalarType.Float32).masked_fill(future, float.NegativeInfinity), -1).to_type(q.dtype);
        var context = matmul(probabilities, v).transpose(1, 2).reshape(batch, length, config.Heads * config.HeadDim);
        return nn.functional.linear(context, weight($"{prefix}self_attn.o_proj.weight") ?? throw MissingTensor($"{prefix}self_attn.o_proj.weight"),
            weight($"{prefix}self_attn.o_proj.bias"));
    }

    /// <summary>x·cos + rotate_half(x)·sin, rotate_half(x) = [-x₂, x₁] over the two halves of the head dimension.</summary>
    private static Tensor ApplyRotary(Tensor x, Tensor cos, Tensor sin)
    {
        var halves = x.chunk(2, -1);
        var rotated = cat(new[] { halves[1].neg(), halves[0] }, -1);
        return x.mul(cos).add(rotated.mul(sin));
    }

    /// <summary>Logits [.., vocab] in float32 from final hidden states (before the final norm is applied by the caller).</summary>
    public static Tensor Logits(Tensor normed, Tensor head) => nn.functional.linear(normed, head).to_type(ScalarType.Float32);

    internal static DareException MissingTensor(string name) =>
        new(DareErrorId.TensorNotFound, DareErrorKind.InvalidData, $"The model has no tensor '{name}', which a Llama-family forward pass needs.") { TensorName = name };
}
