using System.Buffers.Binary;
using System.Text;
using System.Text.Json;

namespace Dare.Engine.Tests.Safetensors;

// An independent safetensors writer, written from the format description only. It deliberately uses no
// Dare.Engine code, so files it produces test the engine's reader rather than agreeing with it by construction.
//
// Format: 8-byte little-endian u64 header length N, N bytes of UTF-8 JSON
//   {name: {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {str: str}}
// then the data block. Offsets are relative to the data block and the tensors tile it exactly.
// A sharded folder holds the shards plus model.safetensors.index.json =
//   {"metadata": {"total_size": N}, "weight_map": {tensor: shardFile}}.

/// <summary>One tensor for the independent writer: the dtype exactly as the header will spell it, the shape, and raw bytes.</summary>
public sealed record RawTensor(string Name, string DType, long[] Shape, byte[] Data);

public static class RawSafetensors
{
    public const string IndexFileName = "model.safetensors.index.json";
    public const string SingleFileName = "model.safetensors";

    /// <summary>Bytes per element of every dtype the format defines.</summary>
    public static readonly IReadOnlyDictionary<string, int> ElementSizes = new Dictionary<string, int>
    {
        ["F64"] = 8, ["F32"] = 4, ["F16"] = 2, ["BF16"] = 2, ["I64"] = 8, ["I32"] = 4, ["I16"] = 2,
        ["I8"] = 1, ["U8"] = 1, ["BOOL"] = 1, ["F8_E4M3"] = 1, ["F8_E5M2"] = 1,
    };

    public static string ShardFileName(int number, int count) => $"model-{number:D5}-of-{count:D5}.safetensors";

    /// <summary>
    /// The header JSON of a well-formed file: data laid out in <paramref name="tensors"/> order, header entries listed
    /// in <paramref name="headerOrder"/> when given (so header order and data order can differ), metadata first.
    /// </summary>
    public static string HeaderJson(IReadOnlyList<RawTensor> tensors, IReadOnlyDictionary<string, string>? metadata = null,
        IReadOnlyList<string>? headerOrder = null)
    {
        var offsets = new Dictionary<string, (long Begin, long End)>();
        long position = 0;
        foreach (var tensor in tensors)
        {
            offsets[tensor.Name] = (position, position + tensor.Data.Length);
            position += tensor.Data.Length;
        }
        var byName = tensors.ToDictionary(t => t.Name);
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            if (metadata is not null)
            {
                json.WriteStartObject("__metadata__");
                foreach (var (key, value) in metadata) json.WriteString(key, value);
                json.WriteEndObject();
            }
            foreach (var name in headerOrder ?? tensors.Select(t => t.Name).ToList())
            {
                var tensor = byName[name];
                json.WriteStartObject(tensor.Name);
                json.WriteString("dtype", tensor.DType);
                json.WriteStartArray("shape");
                foreach (var dimension in tensor.Shape) json.WriteNumberValue(dimension);
                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(offsets[name].Begin);
                json.WriteNumberValue(offsets[name].End);
                json.WriteEndArray();
                json.WriteEndObject();
            }
            json.WriteEndObject();
        }
        return Encoding.UTF8.GetString(buffer.ToArray());
    }

    /// <summary>The concatenated data block of <paramref name="tensors"/>, in order.</summary>
    public static byte[] DataBlock(IEnumerable<RawTensor> tensors) => tensors.SelectMany(t => t.Data).ToArray();

    /// <summary>A well-formed file. The header is padded with spaces to a multiple of 8 unless <paramref name="pad"/> is false.</summary>
    public static byte[] Build(IReadOnlyList<RawTensor> tensors, IReadOnlyDictionary<string, string>? metadata = null,
        IReadOnlyList<string>? headerOrder = null, bool pad = true)
    {
        var header = HeaderJson(tensors, metadata, headerOrder);
        if (pad)
        {
            var length = Encoding.UTF8.GetByteCount(header);
            header += new string(' ', (8 - length % 8) % 8);
        }
        return Assemble(header, DataBlock(tensors));
    }

    /// <summary>Any file: the given header bytes and data, with the length prefix set to the header's length unless overridden.</summary>
    public static byte[] Assemble(byte[] header, byte[] data, ulong? lengthPrefix = null)
    {
        using var buffer = new MemoryStream();
        using (var writer = new BinaryWriter(buffer, Encoding.UTF8, leaveOpen: true))
        {
            Span<byte> prefix = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(prefix, lengthPrefix ?? (ulong)header.Length);
            writer.Write(prefix);
            writer.Write(header);
            writer.Write(data);
        }
        return buffer.ToArray();
    }

    /// <summary>Any file from a header given as text (encoded as UTF-8, written as is: it may be malformed JSON).</summary>
    public static byte[] Assemble(string header, byte[] data, ulong? lengthPrefix = null) =>
        Assemble(Encoding.UTF8.GetBytes(header), data, lengthPrefix);

    /// <summary>Writes a well-formed file and returns its path.</summary>
    public static string WriteFile(string path, IReadOnlyList<RawTensor> tensors, IReadOnlyDictionary<string, string>? metadata = null,
        IReadOnlyList<string>? headerOrder = null)
    {
        File.WriteAllBytes(path, Build(tensors, metadata, headerOrder));
        return path;
    }

    /// <summary>Writes a file whose header is the given JSON text (any text) followed by <paramref name="data"/>.</summary>
    public static string WriteFile(string path, string headerJson, byte[] data, ulong? lengthPrefix = null)
    {
        File.WriteAllBytes(path, Assemble(headerJson, data, lengthPrefix));
        return path;
    }

    /// <summary>
    /// Writes a sharded model folder: shard i (0-based) to <paramref name="shardFileNames"/>[i] or the standard
    /// model-0000i-of-0000N.safetensors name, and an index whose weight_map lists every tensor of every shard, unless
    /// <paramref name="weightMap"/> replaces it (to craft inconsistent indexes). Returns the shard paths.
    /// </summary>
    public static IReadOnlyList<string> WriteShardedFolder(string folder, IReadOnlyList<IReadOnlyList<RawTensor>> shards,
        IReadOnlyDictionary<string, string>? metadata = null, IReadOnlyList<string>? shardFileNames = null,
        IReadOnlyDictionary<string, string>? weightMap = null)
    {
        Directory.CreateDirectory(folder);
        var names = shardFileNames ?? shards.Select((_, i) => ShardFileName(i + 1, shards.Count)).ToList();
        var map = new Dictionary<string, string>();
        var paths = new List<string>();
        for (var i = 0; i < shards.Count; i++)
        {
            paths.Add(WriteFile(Path.Combine(folder, names[i]), shards[i], metadata));
            foreach (var tensor in shards[i]) map[tensor.Name] = names[i];
        }
        WriteIndex(folder, weightMap ?? map, shards.Sum(s => s.Sum(t => (long)t.Data.Length)));
        return paths;
    }

    /// <summary>Writes model.safetensors.index.json with the given weight map (entries in the order given).</summary>
    public static string WriteIndex(string folder, IReadOnlyDictionary<string, string> weightMap, long totalSize)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true }))
        {
            json.WriteStartObject();
            json.WriteStartObject("metadata");
            json.WriteNumber("total_size", totalSize);
            json.WriteEndObject();
            json.WriteStartObject("weight_map");
            foreach (var (tensor, file) in weightMap) json.WriteString(tensor, file);
            json.WriteEndObject();
            json.WriteEndObject();
        }
        var path = Path.Combine(folder, IndexFileName);
        File.WriteAllBytes(path, buffer.ToArray());
        return path;
    }
}

/// <summary>Little-endian encoders for tensor data, independent of torch.</summary>
public static class RawData
{
    public static byte[] F64(params double[] values) => Encode(values, 8, (span, v) => BinaryPrimitives.WriteDoubleLittleEndian(span, v));
    public static byte[] F32(params float[] values) => Encode(values, 4, (span, v) => BinaryPrimitives.WriteSingleLittleEndian(span, v));
    public static byte[] F16(params Half[] values) => Encode(values, 2, (span, v) => BinaryPrimitives.WriteHalfLittleEndian(span, v));

    /// <summary>bfloat16 given as its 16-bit patterns (the top half of the float32 pattern).</summary>
    public static byte[] BF16Bits(params ushort[] bits) => Encode(bits, 2, (span, v) => BinaryPrimitives.WriteUInt16LittleEndian(span, v));

    public static byte[] I64(params long[] values) => Encode(values, 8, (span, v) => BinaryPrimitives.WriteInt64LittleEndian(span, v));
    public static byte[] I32(params int[] values) => Encode(values, 4, (span, v) => BinaryPrimitives.WriteInt32LittleEndian(span, v));
    public static byte[] I16(params short[] values) => Encode(values, 2, (span, v) => BinaryPrimitives.WriteInt16LittleEndian(span, v));
    public static byte[] I8(params sbyte[] values) => values.Select(v => unchecked((byte)v)).ToArray();
    public static byte[] U8(params byte[] values) => values.ToArray();
    public static byte[] Bool(params bool[] values) => values.Select(v => v ? (byte)1 : (byte)0).ToArray();

    /// <summary>The float32 value a bfloat16 bit pattern stands for.</summary>
    public static float BF16ToSingle(ushort bits) => BitConverter.Int32BitsToSingle(bits << 16);

    /// <summary>Reproducible pseudo-random bytes.</summary>
    public static byte[] Random(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    private static byte[] Encode<T>(T[] values, int size, SpanWriter<T> write)
    {
        var bytes = new byte[values.Length * size];
        for (var i = 0; i < values.Length; i++) write(bytes.AsSpan(i * size, size), values[i]);
        return bytes;
    }

    private delegate void SpanWriter<in T>(Span<byte> destination, T value);
}
