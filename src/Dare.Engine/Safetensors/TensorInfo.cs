namespace Dare.Engine.Safetensors;

/// <summary>One tensor's header entry: where its bytes are and how to interpret them. No data is held.</summary>
public sealed class TensorInfo
{
    public TensorInfo(string name, SafetensorsDType dtype, long[] shape, string file, long dataOffset, long byteLength)
    {
        Name = name;
        DType = dtype;
        Shape = shape;
        File = file;
        DataOffset = dataOffset;
        ByteLength = byteLength;
    }

    public string Name { get; }
    public SafetensorsDType DType { get; }
    public long[] Shape { get; }

    /// <summary>Full path of the .safetensors file holding the data.</summary>
    public string File { get; }

    /// <summary>Absolute byte offset of the first element within <see cref="File"/>.</summary>
    public long DataOffset { get; }

    public long ByteLength { get; }

    /// <summary>The identity <see cref="File"/> had when its header was read; data is read only from that same file.</summary>
    public FileIdentity? FileIdentity { get; init; }
    /// <summary>For a tensor gathered from rows of others (a base extended to a merged vocabulary): where its rows come from.</summary>
    internal RowAssembly? Assembly { get; init; }

    public long ElementCount => ByteLength / DType.ElementSize();
    public string ShapeText => "[" + string.Join(", ", Shape) + "]";

    public override string ToString() => $"{Name} {DType} {ShapeText}";
}
