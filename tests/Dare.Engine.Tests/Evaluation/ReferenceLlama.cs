namespace Dare.Engine.Tests.Evaluation;

/// <summary>
/// A plain re-implementation of the Llama / Qwen2 forward pass with double arrays and loops, written from the
/// Hugging Face modeling code (not from Dare's): the yardstick for the TorchSharp forward pass.
/// </summary>
internal sealed class ReferenceLlama
{
    public required int Hidden, Intermediate, Heads, KvHeads, Layers, Vocab;
    public double Eps = 1e-5, Theta = 10000, LinearFactor = 1;
    public bool Tied;

    /// <summary>Weights by Hugging Face name, row-major, shaped [out, in] for projections.</summary>
    public required Dictionary<string, float[]> W;

    private int HeadDim => Hidden / Heads;

    public double[][] Logits(int[] ids)
    {
        var n = ids.Length;
        var h = new double[n][];
        var embed = W["model.embed_tokens.weight"];
        for (var t = 0; t < n; t++) h[t] = Enumerable.Range(0, Hidden).Select(i => (double)embed[ids[t] * Hidden + i]).ToArray();
        for (var l = 0; l < Layers; l++)
        {
            var p = $"model.layers.{l}.";
            var x = h.Select(r => Norm(r, W[p + "input_layernorm.weight"])).ToArray();
            var q = x.Select(r => Linear(r, p + "self_attn.q_proj", Heads * HeadDim)).ToArray();
            var k = x.Select(r => Linear(r, p + "self_attn.k_proj", KvHeads * HeadDim)).ToArray();
            var v = x.Select(r => Linear(r, p + "self_attn.v_proj", KvHeads * HeadDim)).ToArray();
            for (var t = 0; t < n; t++) { Rope(q[t], t, Heads); Rope(k[t], t, KvHeads); }
            var context = new double[n][];
            for (var t = 0; t < n; t++)
            {
                context[t] = new double[Heads * HeadDim];
                for (var head = 0; head < Heads; head++)
                {
                    var kv = head / (Heads / KvHeads); // grouped-query: consecutive query heads share a key/value head
                    var scores = new double[t + 1];
                    for (var s = 0; s <= t; s++)
                    {
                        double dot = 0;
                        for (var d = 0; d < HeadDim; d++) dot += q[t][head * HeadDim + d] * k[s][kv * HeadDim + d];
                        scores[s] = dot / Math.Sqrt(HeadDim);
                    }
                    var max = scores.Max();
                    var exp = scores.Select(z => Math.Exp(z - max)).ToArray();
                    var total = exp.Sum();
                    for (var s = 0; s <= t; s++)
                        for (var d = 0; d < HeadDim; d++) context[t][head * HeadDim + d] += exp[s] / total * v[s][kv * HeadDim + d];
                }
            }
            for (var t = 0; t < n; t++)
            {
                var attended = Linear(context[t], p + "self_attn.o_proj", Hidden);
                for (var i = 0; i < Hidden; i++) h[t][i] += attended[i];
                var y = Norm(h[t], W[p + "post_attention_layernorm.weight"]);
                var gate = Linear(y, p + "mlp.gate_proj", Intermediate);
                var up = Linear(y, p + "mlp.up_proj", Intermediate);
                var act = gate.Select((g, i) => g / (1 + Math.Exp(-g)) * up[i]).ToArray();
                var down = Linear(act, p + "mlp.down_proj", Hidden);
                for (var i = 0; i < Hidden; i++) h[t][i] += down[i];
            }
        }
        var output = Tied ? "model.embed_tokens" : "lm_head";
        return h.Select(r => Linear(Norm(r, W["model.norm.weight"]), output, Vocab)).ToArray();
    }

    private double[] Norm(double[] x, float[] weight)
    {
        var rms = Math.Sqrt(x.Select(v => v * v).Average() + Eps);
        return x.Select((v, i) => weight[i] * v / rms).ToArray();
    }

    private double[] Linear(double[] x, string name, int outputs)
    {
        var w = W[name + ".weight"];
        W.TryGetValue(name + ".bias", out var bias);
        var result = new double[outputs];
        for (var o = 0; o < outputs; o++)
        {
            double sum = bias?[o] ?? 0;
            for (var i = 0; i < x.Length; i++) sum += w[o * x.Length + i] * x[i];
            result[o] = sum;
        }
        return result;
    }

    /// <summary>Rotary embedding, rotate_half convention: pairs (i, i + d/2) rotate by position·θ^(-2i/d).</summary>
    private void Rope(double[] x, int position, int heads)
    {
        var half = HeadDim / 2;
        for (var head = 0; head < heads; head++)
        {
            var o = head * HeadDim;
            for (var i = 0; i < half; i++)
            {
                var angle = position / LinearFactor * Math.Pow(Theta, -2.0 * i / HeadDim);
                double a = x[o + i], b = x[o + i + half];
                x[o + i] = a * Math.Cos(angle) - b * Math.Sin(angle);
                x[o + i + half] = b * Math.Cos(angle) + a * Math.Sin(angle);
            }
        }
    }

    /// <summary>Summed −log p(next token) over non-overlapping windows of <paramref name="context"/> tokens.</summary>
    public (double Nll, long Scored) WindowNll(int[] ids, int context)
    {
        double nll = 0;
        long scored = 0;
        for (var start = 0; start < ids.Length; start += context)
        {
            var window = ids.Skip(start).Take(context).ToArray();
            if (window.Length < 2) continue;
            var logits = Logits(window);
            for (var t = 0; t + 1 < window.Length; t++)
            {
                var max = logits[t].Max();
                var logSum = max + Math.Log(logits[t].Sum(z => Math.Exp(z - max)));
                nll += logSum - logits[t][window[t + 1]];
                scored++;
            }
        }
        return (nll, scored);
    }
}
