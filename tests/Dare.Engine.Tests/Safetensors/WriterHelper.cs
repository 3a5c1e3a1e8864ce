using Dare.Engine.Safetensors;

namespace Dare.Engine.Tests.Safetensors;

/// <summary>Drives <see cref="CheckpointWriter"/> with the raw tensors the independent writer also uses.</summary>
public static class WriterHelper
{
    public static PlannedTensor Plan(RawTensor tensor) => new(tensor.Name, Enum.Parse<SafetensorsDType>(tensor.DType), tensor.Shape);

    public static List<PlannedTensor> Plan(IEnumerable<RawTensor> tensors) => tensors.Select(Plan).ToList();

    /// <summary>Writes every tensor in order, appending its bytes in pieces of at most <paramref name="chunk"/> bytes.</summary>
    public static unsafe void WriteAll(CheckpointWriter writer, IEnumerable<RawTensor> tensors, int chunk = int.MaxValue)
    {
        foreach (var tensor in tensors) WriteOne(writer, tensor, chunk);
    }

    public static unsafe void WriteOne(CheckpointWriter writer, RawTensor tensor, int chunk = int.MaxValue, int? stopAfterBytes = null)
    {
        writer.BeginTensor(tensor.Name);
        var length = stopAfterBytes ?? tensor.Data.Length;
        fixed (byte* data = tensor.Data)
        {
            for (var offset = 0; offset < length; offset += chunk)
            {
                writer.Append(data + offset, Math.Min(chunk, length - offset));
            }
        }
    }

    /// <summary>Plans, writes and commits a checkpoint in one go.</summary>
    public static CheckpointWriteResult Write(string destination, IReadOnlyList<RawTensor> tensors, CheckpointWriteOptions? options = null)
    {
        using var writer = CheckpointWriter.Create(destination, Plan(tensors), options ?? new CheckpointWriteOptions());
        WriteAll(writer, tensors);
        return writer.Commit();
    }

    /// <summary>Entries beside <paramref name="destination"/> that look like the writer's temporary folders (".dare-*") or their owner records.</summary>
    public static string[] LeftoversBeside(string destination) =>
        Directory.GetFileSystemEntries(Path.GetDirectoryName(Path.GetFullPath(destination))!)
            .Where(p => Path.GetFileName(p).StartsWith(".dare-", StringComparison.Ordinal))
            .Order(StringComparer.Ordinal).ToArray();

    /// <summary>Every file under a folder with its bytes, for before/after comparisons.</summary>
    public static SortedDictionary<string, byte[]> Snapshot(string folder) =>
        new(Directory.GetFiles(folder, "*", SearchOption.AllDirectories)
            .ToDictionary(f => Path.GetRelativePath(folder, f), File.ReadAllBytes), StringComparer.Ordinal);
}
