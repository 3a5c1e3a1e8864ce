using System.Runtime.InteropServices;
using Dare.Engine.Merge;
using Dare.Engine.Safetensors;

namespace Dare.Engine.Tests.Merge;

/// <summary>One tensor of a test checkpoint: raw element data (float[], ushort[] holding bf16 bits, long[] ...).</summary>
public sealed record TestTensor(string Name, SafetensorsDType DType, long[] Shape, Array Data)
{
    public static TestTensor F32(string name, float[] data, params long[] shape) =>
        new(name, SafetensorsDType.F32, shape.Length == 0 ? new long[] { data.Length } : shape, data);

    public static TestTensor Bf16(string name, float[] values, params long[] shape) =>
        new(name, SafetensorsDType.BF16, shape.Length == 0 ? new long[] { values.Length } : shape, values.Select(Bf16Bits.FromFloat).ToArray());

    public static TestTensor I64(string name, long[] data, params long[] shape) =>
        new(name, SafetensorsDType.I64, shape.Length == 0 ? new long[] { data.Length } : shape, data);
}

/// <summary>A temporary folder holding small checkpoints, written byte by byte with <see cref="CheckpointWriter"/> (no torch involved).</summary>
public sealed class TestModels : IDisposable
{
    /// <param name="root">Where to make the folder (default: the system temp path).</param>
    public TestModels(string? root = null)
    {
        TorchRuntime.EnsureInitialized();
        Root = Path.Combine(root ?? Path.GetTempPath(), "dare-merge-tests", Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Root);
    }

    public string Root { get; }

    public string PathOf(string name) => Path.Combine(Root, name);

    /// <summary>Writes a model folder with the tensors in the given order; a small <paramref name="maxShardSize"/> makes shards.</summary>
    public Checkpoint Write(string name, IEnumerable<TestTensor> tensors, long maxShardSize = CheckpointWriteOptions.DefaultMaxShardSize)
    {
        var list = tensors.ToList();
        var plan = list.Select(t => new PlannedTensor(t.Name, t.DType, t.Shape)).ToList();
        using (var writer = CheckpointWriter.Create(PathOf(name), plan, new CheckpointWriteOptions { MaxShardSize = maxShardSize }))
        {
            foreach (var tensor in list)
            {
                writer.BeginTensor(tensor.Name);
                AppendBytes(writer, tensor.Data);
            }
            writer.Commit();
        }
        return Checkpoint.Open(PathOf(name));
    }

    private static unsafe void AppendBytes(CheckpointWriter writer, Array data)
    {
        var handle = GCHandle.Alloc(data, GCHandleType.Pinned);
        try
        {
            var bytes = (long)Buffer.ByteLength(data);
            if (bytes > 0) writer.Append((byte*)handle.AddrOfPinnedObject(), bytes);
        }
        finally
        {
            handle.Free();
        }
    }

    /// <summary>
    /// A little Llama-shaped decoder in float32: embed, per layer q_proj and up_proj, final norm, lm_head, with seeded
    /// values (distinct per model and layer), and a config.json giving its layer count, followed by
    /// <paramref name="configMembers"/> (more JSON members, each starting with a comma) when given.
    /// </summary>
    public Checkpoint WriteDecoder(string name, int layers, int seed, string configMembers = "")
    {
        var random = new Random(seed);
        var tensors = new List<TestTensor> { TestTensor.F32("model.embed_tokens.weight", RandomFloats(random, 12), 4, 3) };
        for (var l = 0; l < layers; l++)
        {
            tensors.Add(TestTensor.F32($"model.layers.{l}.self_attn.q_proj.weight", RandomFloats(random, 9), 3, 3));
            tensors.Add(TestTensor.F32($"model.layers.{l}.mlp.up_proj.weight", RandomFloats(random, 6), 2, 3));
        }
        tensors.Add(TestTensor.F32("model.norm.weight", RandomFloats(random, 3), 3));
        tensors.Add(TestTensor.F32("lm_head.weight", RandomFloats(random, 12), 4, 3));
        Write(name, tensors);
        File.WriteAllText(Path.Combine(PathOf(name), "config.json"),
            $"{{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 3, \"num_hidden_layers\": {layers}, \"vocab_size\": 4{configMembers}}}");
        return Checkpoint.Open(PathOf(name));
    }

    /// <summary>Exports <paramref name="vector"/> as float32 (unless told otherwise) and returns the opened output.</summary>
    public Checkpoint Export(TaskVector vector, string name, SafetensorsDType? dtype = SafetensorsDType.F32, bool deltaOnly = false, long? chunkElements = null, long maxShardSize = CheckpointWriteOptions.DefaultMaxShardSize)
    {
        var executor = chunkElements is { } chunk ? new MergeExecutor(chunkElements: chunk) : new MergeExecutor();
        executor.Export(vector, new ExportOptions { Destination = PathOf(name), OutputDType = dtype, DeltaOnly = deltaOnly, MaxShardSize = maxShardSize });
        return Checkpoint.Open(PathOf(name));
    }

    public void Dispose()
    {
        try { Directory.Delete(Root, recursive: true); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }

    public static float[] ReadFloats(Checkpoint checkpoint, string tensor)
    {
        var info = checkpoint.Find(tensor) ?? throw new InvalidOperationException($"no tensor {tensor}");
        if (info.DType != SafetensorsDType.F32) throw new InvalidOperationException($"{tensor} is {info.DType}");
        return ReadRaw<float>(info);
    }

    public static unsafe T[] ReadRaw<T>(TensorInfo info) where T : unmanaged
    {
        var result = new T[info.ByteLength / sizeof(T)];
        using var reader = new TensorReader();
        fixed (T* p = result) reader.ReadElements(info, 0, info.ElementCount, (byte*)p);
        return result;
    }

    /// <summary>Seeded random values; <paramref name="scale"/> sets the spread.</summary>
    public static float[] RandomFloats(Random random, int count, double scale = 1.0) =>
        Enumerable.Range(0, count).Select(_ => (float)((random.NextDouble() * 2 - 1) * scale)).ToArray();

    /// <summary>A fine-tune of <paramref name="base"/>: base + noise, with every delta nonzero.</summary>
    public static float[] Perturb(Random random, float[] @base, double scale = 0.1)
    {
        var result = new float[@base.Length];
        for (var i = 0; i < result.Length; i++)
        {
            float tuned;
            do { tuned = @base[i] + (float)((random.NextDouble() * 2 - 1) * scale); } while (tuned - @base[i] == 0f);
            result[i] = tuned;
        }
        return result;
    }
}

/// <summary>A plain bf16 conversion (round to nearest, ties to even) written independently of torch.</summary>
public static class Bf16Bits
{
    public static ushort FromFloat(float value)
    {
        var bits = BitConverter.SingleToUInt32Bits(value);
        if (float.IsNaN(value)) return (ushort)((bits >> 16) | 0x40);
        var lower = bits & 0xFFFF;
        var upper = bits >> 16;
        if (lower > 0x8000 || (lower == 0x8000 && (upper & 1) == 1)) upper++;
        return (ushort)upper;
    }

    public static float ToFloat(ushort bits) => BitConverter.UInt32BitsToSingle((uint)bits << 16);
}
