using System.Buffers.Binary;
using System.Text;
using System.Text.Json;

namespace Dare.Engine.Safetensors;

/// <summary>
/// The parsed, validated header of one .safetensors file. Opening reads the header only; tensor data stays on disk.
/// Every malformed input is reported as a <see cref="DareException"/> naming the file and, where relevant, the tensor.
/// </summary>
public sealed class SafetensorsFile
{
    /// <summary>Headers above this size are refused (the reference implementation uses the same bound).</summary>
    public const long MaxHeaderBytes = 100L * 1024 * 1024;

    private SafetensorsFile(string path, long headerLength, IReadOnlyList<TensorInfo> tensors, IReadOnlyDictionary<string, string> metadata)
    {
        Path = path;
        HeaderLength = headerLength;
        Tensors = tensors;
        Metadata = metadata;
    }

    public string Path { get; }
    public long HeaderLength { get; }

    /// <summary>Tensors in header order.</summary>
    public IReadOnlyList<TensorInfo> Tensors { get; }

    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>The file's identity when its header was read (recorded in every <see cref="TensorInfo"/>).</summary>
    public FileIdentity Identity { get; private init; }

    public static SafetensorsFile Open(string path)
    {
        var (handle, identity) = OpenChecked(path, expected: null);
        using var opened = handle;
        var fileLength = identity.Size;
        if (fileLength < 8)
        {
            throw Invalid(DareErrorId.SafetensorsFileTooShort, path, $"the file is {fileLength} bytes long, shorter than the 8-byte header length");
        }
        Span<byte> prefix = stackalloc byte[8];
        ReadExactly(handle, prefix, 0, path);
        var headerLength = BinaryPrimitives.ReadUInt64LittleEndian(prefix);
        if (headerLength > MaxHeaderBytes)
        {
            throw Invalid(DareErrorId.SafetensorsHeaderTooLarge, path, $"the header length is {headerLength} bytes, above the {MaxHeaderBytes}-byte limit");
        }
        if ((long)headerLength > fileLength - 8)
        {
            throw Invalid(DareErrorId.SafetensorsHeaderTooLarge, path, $"the header length ({headerLength} bytes) runs past the end of the {fileLength}-byte file");
        }
        var header = new byte[headerLength];
        ReadExactly(handle, header, 8, path);
        var dataStart = 8 + (long)headerLength;
        var (tensors, metadata) = ParseHeader(header, path, dataStart, fileLength - dataStart, identity);
        return new SafetensorsFile(path, (long)headerLength, tensors, metadata) { Identity = identity };
    }

    /// <summary>
    /// Opens <paramref name="path"/> for reading after checking, without opening it, that it is a regular file (a FIFO
    /// would block the open forever), and returns the identity of what was opened. With <paramref name="expected"/>
    /// both the path and the open handle must still be that file (InputChanged otherwise); without it the two must
    /// agree with each other (nothing swapped the file between the check and the open).
    /// </summary>
    internal static (Microsoft.Win32.SafeHandles.SafeFileHandle Handle, FileIdentity Identity) OpenChecked(string path, FileIdentity? expected)
    {
        var (kind, atPath) = RegularFile.Check(path, "model data");
        if (kind == FileKind.Missing)
        {
            throw new DareException(DareErrorId.PathNotFound, DareErrorKind.ObjectNotFound, $"Cannot find '{path}'.") { FilePath = path };
        }
        if (expected is { } recorded && atPath != recorded) throw Changed(path, recorded, atPath);
        var handle = OpenRead(path);
        try
        {
            var opened = FileIdentity.Of(handle);
            if (opened != (expected ?? atPath)) throw Changed(path, expected ?? atPath, opened);
            return (handle, opened);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    private static DareException Changed(string path, FileIdentity recorded, FileIdentity now) =>
        new(DareErrorId.InputChanged, DareErrorKind.InvalidData,
            $"'{path}' changed after it was opened (then: {recorded}; now: {now}), so the tensor offsets read from its header no longer apply. " +
            "Nothing was written; open the model again (Import-Safetensors, Get-TaskVector) and rebuild the plan.") { FilePath = path };

    internal static Microsoft.Win32.SafeHandles.SafeFileHandle OpenRead(string path)
    {
        try
        {
            return File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.RandomAccess);
        }
        catch (Exception ex) when (ex is FileNotFoundException or DirectoryNotFoundException)
        {
            throw new DareException(DareErrorId.PathNotFound, DareErrorKind.ObjectNotFound, $"Cannot find '{path}'.", ex) { FilePath = path };
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new DareException(DareErrorId.SafetensorsReadFailed, DareErrorKind.ReadError, $"Cannot open '{path}': {ex.Message}", ex) { FilePath = path };
        }
    }

    private static void ReadExactly(Microsoft.Win32.SafeHandles.SafeFileHandle handle, Span<byte> buffer, long offset, string path)
    {
        while (buffer.Length > 0)
        {
            var read = RandomAccess.Read(handle, buffer, offset);
            if (read == 0)
            {
                throw Invalid(DareErrorId.SafetensorsFileTooShort, path, "the file ended before the header did");
            }
            buffer = buffer[read..];
            offset += read;
        }
    }

    private static (List<TensorInfo>, Dictionary<string, string>) ParseHeader(byte[] header, string path, long dataStart, long dataLength, FileIdentity identity)
    {
        JsonDocument document;
        try
        {
            // Strict UTF-8 first: JsonDocument tolerates some invalid sequences inside strings.
            _ = new UTF8Encoding(false, throwOnInvalidBytes: true).GetCharCount(header);
            document = JsonDocument.Parse(header, new JsonDocumentOptions { MaxDepth = 16 });
        }
        catch (Exception ex) when (ex is JsonException or DecoderFallbackException or ArgumentException)
        {
            throw Invalid(DareErrorId.SafetensorsHeaderInvalid, path, $"the header is not valid UTF-8 JSON ({ex.Message})", ex);
        }
        using (document)
        {
            if (document.RootElement.ValueKind != JsonValueKind.Object)
            {
                throw Invalid(DareErrorId.SafetensorsHeaderInvalid, path, $"the header is a JSON {document.RootElement.ValueKind}, not an object");
            }
            var tensors = new List<TensorInfo>();
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            var seen = new HashSet<string>(StringComparer.Ordinal);
            var ranges = new List<(long Begin, long End, string Name)>();
            foreach (var property in document.RootElement.EnumerateObject())
            {
                if (!seen.Add(property.Name))
                {
                    throw Invalid(DareErrorId.SafetensorsDuplicateTensor, path, $"the header lists '{property.Name}' twice", tensor: property.Name);
                }
                if (property.Name == "__metadata__")
                {
                    ReadMetadata(property.Value, metadata, path);
                    continue;
                }
                var (info, begin, end) = ReadTensorEntry(property, path, dataStart, identity);
                tensors.Add(info);
                ranges.Add((begin, end, info.Name));
            }
            CheckCoverage(ranges, dataLength, path);
            return (tensors, metadata);
        }
    }

    private static void ReadMetadata(JsonElement element, Dictionary<string, string> metadata, string path)
    {
        if (element.ValueKind != JsonValueKind.Object)
        {
            throw Invalid(DareErrorId.SafetensorsHeaderInvalid, path, "__metadata__ is not an object of strings");
        }
        foreach (var entry in element.EnumerateObject())
        {
            if (entry.Value.ValueKind != JsonValueKind.String)
            {
                throw Invalid(DareErrorId.SafetensorsHeaderInvalid, path, $"__metadata__ entry '{entry.Name}' is not a string");
            }
            metadata[entry.Name] = entry.Value.GetString()!;
        }
    }

    private static (TensorInfo, long Begin, long End) ReadTensorEntry(JsonProperty property, string path, long dataStart, FileIdentity identity)
    {
        var name = property.Name;
        var entry = property.Value;
        if (entry.ValueKind != JsonValueKind.Object)
        {
            throw Invalid(DareErrorId.SafetensorsTensorEntryInvalid, path, $"the entry for tensor '{name}' is not an object", tensor: name);
        }
        if (!entry.TryGetProperty("dtype", out var dtypeElement) || dtypeElement.ValueKind != JsonValueKind.String)
        {
            throw Invalid(DareErrorId.SafetensorsTensorEntryInvalid, path, $"tensor '{name}' has no string 'dtype'", tensor: name);
        }
        if (!entry.TryGetProperty("shape", out var shapeElement) || shapeElement.ValueKind != JsonValueKind.Array)
        {
            throw Invalid(DareErrorId.SafetensorsTensorEntryInvalid, path, $"tensor '{name}' has no 'shape' array", tensor: name);
        }
        if (!entry.TryGetProperty("data_offsets", out var offsetsElement) || offsetsElement.ValueKind != JsonValueKind.Array)
        {
            throw Invalid(DareErrorId.SafetensorsTensorEntryInvalid, path, $"tensor '{name}' has no 'data_offsets' array", tensor: name);
        }
        var dtypeText = dtypeElement.GetString()!;
        if (!SafetensorsDTypes.TryParse(dtypeText, out var dtype))
        {
            throw Invalid(DareErrorId.SafetensorsDTypeUnknown, path, $"tensor '{name}' has unknown dtype '{dtypeText}'", tensor: name);
        }

        var shape = new long[shapeElement.GetArrayLength()];
        // The product of the dimensions with zeros counted as 1 must fit in a long: torch computes contiguous strides
        // that way, so [0, 2^32, 2^32] has no elements yet cannot be allocated ("Stride calculation overflowed").
        long extent = 1;
        var empty = false;
        var i = 0;
        foreach (var dimension in shapeElement.EnumerateArray())
        {
            if (dimension.ValueKind != JsonValueKind.Number || !dimension.TryGetInt64(out var size) || size < 0)
            {
                throw Invalid(DareErrorId.SafetensorsShapeInvalid, path, $"tensor '{name}' has shape entry {dimension.GetRawText()}, not a non-negative integer", tensor: name);
            }
            shape[i++] = size;
            empty |= size == 0;
            try { extent = checked(extent * Math.Max(size, 1)); }
            catch (OverflowException)
            {
                throw Invalid(DareErrorId.SafetensorsShapeInvalid, path, $"tensor '{name}' has a shape whose element count overflows", tensor: name);
            }
        }

        var elements = empty ? 0 : extent;

        if (offsetsElement.GetArrayLength() != 2)
        {
            throw Invalid(DareErrorId.SafetensorsOffsetsInvalid, path, $"tensor '{name}' has {offsetsElement.GetArrayLength()} data_offsets, not 2", tensor: name);
        }
        var begin = ReadOffset(offsetsElement[0], name, path);
        var end = ReadOffset(offsetsElement[1], name, path);
        if (end < begin)
        {
            throw Invalid(DareErrorId.SafetensorsOffsetsInvalid, path, $"tensor '{name}' has reversed data_offsets [{begin}, {end}]", tensor: name);
        }
        long expectedBytes;
        try { expectedBytes = checked(elements * dtype.ElementSize()); }
        catch (OverflowException)
        {
            throw Invalid(DareErrorId.SafetensorsShapeInvalid, path, $"tensor '{name}' has a byte size that overflows", tensor: name);
        }
        if (end - begin != expectedBytes)
        {
            throw Invalid(DareErrorId.SafetensorsOffsetsInvalid, path,
                $"tensor '{name}' spans {end - begin} bytes but shape [{string.Join(", ", shape)}] of {dtype} needs {expectedBytes}", tensor: name);
        }
        return (new TensorInfo(name, dtype, shape, path, dataStart + begin, end - begin) { FileIdentity = identity }, begin, end);
    }

    private static long ReadOffset(JsonElement element, string name, string path)
    {
        if (element.ValueKind != JsonValueKind.Number || !element.TryGetInt64(out var value) || value < 0)
        {
            throw Invalid(DareErrorId.SafetensorsOffsetsInvalid, path, $"tensor '{name}' has data offset {element.GetRawText()}, not a non-negative integer", tensor: name);
        }
        return value;
    }

    /// <summary>The tensors' byte ranges must tile the data block exactly: no gaps, no overlaps, nothing past the end.</summary>
    private static void CheckCoverage(List<(long Begin, long End, string Name)> ranges, long dataLength, string path)
    {
        ranges.Sort((a, b) => a.Begin != b.Begin ? a.Begin.CompareTo(b.Begin) : a.End.CompareTo(b.End));
        long position = 0;
        foreach (var (begin, end, name) in ranges)
        {
            if (end > dataLength)
            {
                throw Invalid(DareErrorId.SafetensorsOffsetsInvalid, path, $"tensor '{name}' ends at byte {end} of a {dataLength}-byte data block", tensor: name);
            }
            if (begin < position)
            {
                throw Invalid(DareErrorId.SafetensorsOffsetsInvalid, path, $"tensor '{name}' overlaps the tensor before it (starts at {begin}, previous ends at {position})", tensor: name);
            }
            if (begin > position)
            {
                throw Invalid(DareErrorId.SafetensorsOffsetsInvalid, path, $"bytes {position}..{begin} of the data block belong to no tensor (gap before '{name}')", tensor: name);
            }
            position = end;
        }
        if (position != dataLength)
        {
            throw Invalid(DareErrorId.SafetensorsOffsetsInvalid, path, $"the tensors cover {position} bytes but the data block has {dataLength}");
        }
    }

    private static DareException Invalid(DareErrorId id, string path, string reason, Exception? inner = null, string? tensor = null) =>
        new(id, DareErrorKind.InvalidData, $"'{path}' is not a valid safetensors file: {reason}.", inner) { FilePath = path, TensorName = tensor };
}
