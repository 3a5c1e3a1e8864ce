using System.Buffers.Binary;
using System.Text;
using System.Text.Json;

namespace Dare.Engine.Tests.Safetensors;

/// <summary>One header entry as the independent parser sees it.</summary>
public sealed record RawEntry(string Name, string DType, long[] Shape, long Begin, long End);

/// <summary>A safetensors file as the independent parser sees it.</summary>
public sealed class RawParsedFile
{
    public required ulong HeaderLength { get; init; }
    public required byte[] HeaderBytes { get; init; }
    public required long DataStart { get; init; }
    public required long DataLength { get; init; }

    /// <summary>Tensor entries in header order.</summary>
    public required IReadOnlyList<RawEntry> Entries { get; init; }

    /// <summary>__metadata__, or null when the header has none.</summary>
    public required IReadOnlyDictionary<string, string>? Metadata { get; init; }

    public required byte[] FileBytes { get; init; }

    public RawEntry this[string name] => Entries.Single(e => e.Name == name);

    /// <summary>The bytes of one tensor, sliced from the data block by its offsets.</summary>
    public byte[] Data(string name)
    {
        var entry = this[name];
        return FileBytes.AsSpan((int)(DataStart + entry.Begin), (int)(entry.End - entry.Begin)).ToArray();
    }
}

/// <summary>
/// A tiny independent safetensors parser (no Dare.Engine code), used to check that files the engine writes follow the
/// format. It is strict where the format is: it throws <see cref="FormatException"/> when the tensors do not tile the data block.
/// </summary>
public static class RawSafetensorsReader
{
    public static RawParsedFile Read(string path)
    {
        var bytes = File.ReadAllBytes(path);
        if (bytes.Length < 8) throw new FormatException($"{path}: shorter than 8 bytes");
        var headerLength = BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        if (headerLength > (ulong)(bytes.Length - 8)) throw new FormatException($"{path}: header length {headerLength} past the end");
        var header = bytes.AsSpan(8, (int)headerLength).ToArray();
        var text = new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(header);
        using var document = JsonDocument.Parse(text);
        var entries = new List<RawEntry>();
        Dictionary<string, string>? metadata = null;
        foreach (var property in document.RootElement.EnumerateObject())
        {
            if (property.Name == "__metadata__")
            {
                metadata = property.Value.EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetString()!);
                continue;
            }
            var value = property.Value;
            var offsets = value.GetProperty("data_offsets").EnumerateArray().Select(o => o.GetInt64()).ToArray();
            if (offsets.Length != 2) throw new FormatException($"{path}: '{property.Name}' has {offsets.Length} offsets");
            entries.Add(new RawEntry(property.Name, value.GetProperty("dtype").GetString()!,
                value.GetProperty("shape").EnumerateArray().Select(d => d.GetInt64()).ToArray(), offsets[0], offsets[1]));
        }
        var dataStart = 8 + (long)headerLength;
        var dataLength = bytes.Length - dataStart;
        long position = 0;
        foreach (var entry in entries.OrderBy(e => e.Begin))
        {
            var expected = entry.Shape.Aggregate(1L, (a, b) => a * b) * RawSafetensors.ElementSizes[entry.DType];
            if (entry.Begin != position || entry.End - entry.Begin != expected)
            {
                throw new FormatException($"{path}: '{entry.Name}' at [{entry.Begin}, {entry.End}) does not continue at {position} with {expected} bytes");
            }
            position = entry.End;
        }
        if (position != dataLength) throw new FormatException($"{path}: tensors cover {position} of {dataLength} data bytes");
        return new RawParsedFile
        {
            HeaderLength = headerLength, HeaderBytes = header, DataStart = dataStart, DataLength = dataLength,
            Entries = entries, Metadata = metadata, FileBytes = bytes,
        };
    }

    /// <summary>The weight_map of a model.safetensors.index.json, in file order, and its metadata.total_size.</summary>
    public static (IReadOnlyList<KeyValuePair<string, string>> WeightMap, long TotalSize) ReadIndex(string path)
    {
        using var document = JsonDocument.Parse(File.ReadAllBytes(path));
        var map = document.RootElement.GetProperty("weight_map").EnumerateObject()
            .Select(p => KeyValuePair.Create(p.Name, p.Value.GetString()!)).ToList();
        return (map, document.RootElement.GetProperty("metadata").GetProperty("total_size").GetInt64());
    }
}
