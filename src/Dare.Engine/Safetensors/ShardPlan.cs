namespace Dare.Engine.Safetensors;

/// <summary>One output file of a model folder and the tensors it holds, in order.</summary>
public sealed record PlannedShard(string FileName, IReadOnlyList<PlannedTensor> Tensors)
{
    /// <summary>Bytes of tensor data in this shard (the file adds its 8-byte length and JSON header).</summary>
    public long TensorBytes => Tensors.Sum(t => t.ByteLength);

    /// <summary>The size of the shard's file as <see cref="CheckpointWriter"/> writes it with these header entries.</summary>
    public long FileBytes(IReadOnlyDictionary<string, string>? metadata) => 8 + CheckpointWriter.BuildHeader(Tensors, metadata).Length + TensorBytes;
}

/// <summary>
/// How tensors are grouped into shards: in plan order, a new shard whenever the next tensor would take the current one
/// past the limit (a tensor larger than the limit gets a shard of its own). Computed from the plan alone, so every
/// process that exports a part of the same plan agrees on it.
/// </summary>
public static class ShardPlan
{
    public static IReadOnlyList<PlannedShard> Of(IReadOnlyList<PlannedTensor> tensors, long maxShardSize, string singleFileName = Checkpoint.SingleFileName)
    {
        var groups = new List<List<PlannedTensor>> { new() };
        long size = 0;
        foreach (var tensor in tensors)
        {
            if (groups[^1].Count > 0 && size + tensor.ByteLength > maxShardSize)
            {
                groups.Add(new List<PlannedTensor>());
                size = 0;
            }
            groups[^1].Add(tensor);
            size += tensor.ByteLength;
        }
        if (groups.Count == 1) return new[] { new PlannedShard(singleFileName, groups[0]) };
        return groups.Select((g, i) => new PlannedShard($"model-{i + 1:D5}-of-{groups.Count:D5}.safetensors", g)).ToList();
    }
}
