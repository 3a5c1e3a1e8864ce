using System.Globalization;
using Dare.Engine.Safetensors;

namespace Dare.Engine.Partitions;

/// <summary>
/// One part of an export split over <see cref="Count"/> independent processes: "i/N", i counted from 0 (as Slurm's
/// SLURM_ARRAY_TASK_ID with --array=0-(N-1) and Kubernetes' JOB_COMPLETION_INDEX count). A partition writes whole
/// shards of the export's shard plan; which ones follows from the plan alone, so processes agree without talking.
/// </summary>
public readonly record struct ExportPartition(int Index, int Count)
{
    /// <summary>More partitions than this is surely a typo (each is a process with its own staging folder).</summary>
    public const int MaxCount = 100_000;

    /// <summary>Parses "i/N" (0 ≤ i &lt; N).</summary>
    public static ExportPartition Parse(string text)
    {
        var parts = (text ?? "").Split('/');
        if (parts.Length == 2
            && int.TryParse(parts[0].Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var index)
            && int.TryParse(parts[1].Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var count)
            && count is >= 1 and <= MaxCount && index < count)
        {
            return new ExportPartition(index, count);
        }
        throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument,
            $"-Partition '{text}' is not a partition: write i/N with N from 1 to {MaxCount} and i counted from 0 to N-1 (e.g. 0/4 ... 3/4; " +
            "Slurm: \"$env:SLURM_ARRAY_TASK_ID/N\" with --array=0-(N-1); Kubernetes: \"$env:JOB_COMPLETION_INDEX/N\").");
    }

    public override string ToString() => $"{Index}/{Count}";

    /// <summary>
    /// The partition of each shard (by position): shards balanced by bytes, largest first, each to the partition
    /// with the fewest bytes so far (ties: the lower partition). With fewer shards than partitions some are empty.
    /// </summary>
    public static int[] Assign(IReadOnlyList<PlannedShard> shards, int count)
    {
        var owner = new int[shards.Count];
        var load = new long[count];
        var order = Enumerable.Range(0, shards.Count).OrderByDescending(i => shards[i].TensorBytes).ThenBy(i => i);
        foreach (var shard in order)
        {
            var lightest = 0;
            for (var p = 1; p < count; p++)
            {
                if (load[p] < load[lightest]) lightest = p;
            }
            owner[shard] = lightest;
            load[lightest] += shards[shard].TensorBytes;
        }
        return owner;
    }

    /// <summary>This partition's shards, in plan order.</summary>
    public IReadOnlyList<PlannedShard> ShardsOf(IReadOnlyList<PlannedShard> shards)
    {
        var owner = Assign(shards, Count);
        var index = Index;
        return shards.Where((_, i) => owner[i] == index).ToList();
    }
}
