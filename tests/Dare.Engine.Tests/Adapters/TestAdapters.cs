using System.Text.Json.Nodes;
using Dare.Engine.Safetensors;
using Dare.Engine.Tests.Merge;

namespace Dare.Engine.Tests.Adapters;

/// <summary>Writes PEFT adapter folders for tests: adapter_config.json as given and adapter_model.safetensors from plain arrays.</summary>
public static class TestAdapters
{
    public static string Write(TestModels models, string name, JsonObject config, IEnumerable<TestTensor> tensors)
    {
        models.Write(name, tensors);
        var folder = models.PathOf(name);
        File.Move(Path.Combine(folder, "model.safetensors"), Path.Combine(folder, "adapter_model.safetensors"));
        File.WriteAllText(Path.Combine(folder, "adapter_config.json"), config.ToJsonString());
        return folder;
    }

    /// <summary>A config as PEFT writes it, with r and lora_alpha; further keys are added by the caller.</summary>
    public static JsonObject Config(int r, double alpha) => new()
    {
        ["peft_type"] = "LORA", ["r"] = r, ["lora_alpha"] = alpha, ["use_rslora"] = false, ["use_dora"] = false,
        ["fan_in_fan_out"] = false, ["target_modules"] = new JsonArray("q_proj"), ["base_model_name_or_path"] = "base",
    };

    /// <summary>s·Σₖ left[i,k]·right[k,j] in float64 (left is rows×r, right r×cols), the plain definition of a LoRA δ.</summary>
    public static double[] Product(float[] left, float[] right, int rows, int rank, int columns, double scale)
    {
        var result = new double[rows * columns];
        for (var i = 0; i < rows; i++)
        {
            for (var j = 0; j < columns; j++)
            {
                double sum = 0;
                for (var k = 0; k < rank; k++) sum += (double)left[i * rank + k] * right[k * columns + j];
                result[i * columns + j] = scale * sum;
            }
        }
        return result;
    }

    /// <summary>The transpose of a rows×cols row-major matrix.</summary>
    public static float[] Transpose(float[] m, int rows, int columns)
    {
        var t = new float[m.Length];
        for (var i = 0; i < rows; i++) for (var j = 0; j < columns; j++) t[j * rows + i] = m[i * columns + j];
        return t;
    }

    /// <summary>base + δ as float32 arithmetic does it: δ rounded once to float32, then added.</summary>
    public static float[] Apply(float[] @base, double[] delta) => @base.Select((b, i) => b + (float)delta[i]).ToArray();

    /// <summary>Values that bfloat16 holds exactly.</summary>
    public static float[] Bf16Exact(float[] values) => values.Select(v => Bf16Bits.ToFloat(Bf16Bits.FromFloat(v))).ToArray();
}
