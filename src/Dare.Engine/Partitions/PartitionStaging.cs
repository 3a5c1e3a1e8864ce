using System.Security.Cryptography;
using System.Text.Json;
using Dare.Engine.Safetensors;

namespace Dare.Engine.Partitions;

/// <summary>
/// The staging folder of a partitioned export, <c>.&lt;name&gt;.dare-partitions</c> beside the destination (so its shards
/// are renamed, not copied, into the output): plan.json (the <see cref="PartitionPlan"/>, its fingerprint and the
/// partition count, written once by whichever partition comes first), and per finished partition a folder
/// <c>part-IIIII-of-NNNNN</c> holding its shards and partition.json (each shard's size and SHA-256, the fingerprint).
/// A partition writes into a private <c>.part-IIIII-*</c> folder and renames it into place only once sealed, so a
/// killed partition leaves nothing that counts; running it again redoes that part only. The completion (the last
/// partition to seal, or Complete-DareExport) takes complete.lock atomically, verifies every part, moves the shards
/// into the single-process export's temporary folder and publishes through <see cref="CheckpointWriter.Commit"/>.
/// </summary>
public sealed class PartitionStaging
{
    public const string PlanFileName = "plan.json";
    public const string RecordFileName = "partition.json";
    public const string LockFileName = "complete.lock";
    public const string FolderSuffix = ".dare-partitions";

    private PartitionStaging(string destination, string folder, PartitionPlan plan, int count)
    {
        Destination = destination;
        Folder = folder;
        Plan = plan;
        Count = count;
    }

    public string Destination { get; }
    public string Folder { get; }
    public PartitionPlan Plan { get; }
    public int Count { get; }

    /// <summary>The staging folder of <paramref name="destination"/>: hidden, beside it.</summary>
    public static string FolderFor(string destination)
    {
        destination = Path.TrimEndingDirectorySeparator(Path.GetFullPath(destination));
        return Path.Combine(Path.GetDirectoryName(destination)!, $".{Path.GetFileName(destination)}{FolderSuffix}");
    }

    /// <summary>
    /// Joins the staging folder for <paramref name="partition"/> of <paramref name="plan"/>: creates it and its plan.json if
    /// this is the first partition, else refuses (PartitionPlanMismatch) a plan or partition count other than the staged one.
    /// </summary>
    public static PartitionStaging Join(string destination, PartitionPlan plan, ExportPartition partition)
    {
        destination = Path.TrimEndingDirectorySeparator(Path.GetFullPath(destination));
        var folder = FolderFor(destination);
        Directory.CreateDirectory(folder);
        var planPath = Path.Combine(folder, PlanFileName);
        if (!File.Exists(planPath))
        {
            var temporary = Path.Combine(folder, $".plan-{Guid.NewGuid():N}.json");
            WriteDurably(temporary, plan.StagingRecord(partition.Count));
            try
            {
                File.Move(temporary, planPath, overwrite: false); // the first partition's plan wins; the others compare against it
            }
            catch (IOException) when (File.Exists(planPath))
            {
                File.Delete(temporary);
            }
        }
        var staged = Read(destination, folder);
        if (staged.Plan.Fingerprint != plan.Fingerprint || staged.Count != partition.Count)
        {
            var what = staged.Plan.Fingerprint != plan.Fingerprint
                ? $"its plan (fingerprint {Short(plan.Fingerprint)}) differs from the one staged there (fingerprint {Short(staged.Plan.Fingerprint)}): other tensors, dtypes, shard size, recipe or seed"
                : $"it is one of {partition.Count} partitions, but {staged.Count} are staged there";
            throw new DareException(DareErrorId.PartitionPlanMismatch, DareErrorKind.InvalidData,
                $"Partition {partition} of '{destination}' cannot join the staging folder '{folder}': {what}. Run every partition with the same " +
                $"plan and count, or delete '{folder}' to start the partitioned export over.") { FilePath = folder };
        }
        return staged;
    }

    /// <summary>Opens the staging folder of <paramref name="destination"/> as found (for the completion); null when there is none.</summary>
    public static PartitionStaging? Open(string destination)
    {
        destination = Path.TrimEndingDirectorySeparator(Path.GetFullPath(destination));
        var folder = FolderFor(destination);
        return File.Exists(Path.Combine(folder, PlanFileName)) ? Read(destination, folder) : null;
    }

    private static PartitionStaging Read(string destination, string folder)
    {
        var path = Path.Combine(folder, PlanFileName);
        var (plan, count, fingerprint) = PartitionPlan.ReadStagingRecord(path);
        if (plan.Fingerprint != fingerprint)
        {
            throw new DareException(DareErrorId.PartitionCorrupt, DareErrorKind.InvalidData,
                $"The partition plan '{path}' does not match its own fingerprint (edited or damaged). Delete '{folder}' and run every partition again.") { FilePath = path };
        }
        return new PartitionStaging(destination, folder, plan, count);
    }

    private static string Short(string fingerprint) => fingerprint[..12];

    /// <summary>Where a sealed partition's shards and record are.</summary>
    public string PartFolder(int index) => Path.Combine(Folder, $"part-{index:D5}-of-{Count:D5}");

    /// <summary>The shards of each partition, by partition index.</summary>
    public IReadOnlyList<PlannedShard> ShardsOf(int index) => new ExportPartition(index, Count).ShardsOf(Plan.Shards);

    /// <summary>A fresh private folder for <paramref name="partition"/>'s shards, after removing what an earlier, failed run of it left.</summary>
    public string BeginPartition(ExportPartition partition)
    {
        foreach (var stale in Directory.EnumerateDirectories(Folder, $".part-{partition.Index:D5}-*")) Directory.Delete(stale, recursive: true);
        var folder = Path.Combine(Folder, $".part-{partition.Index:D5}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(folder);
        return folder;
    }

    /// <summary>Hashes the partition's shards, writes its record and renames its folder into place (replacing an earlier run's).</summary>
    public void Seal(ExportPartition partition, string folder)
    {
        var shards = ShardsOf(partition.Index);
        var hashes = HashFiles(shards.Select(s => Path.Combine(folder, s.FileName)).ToList());
        using (var buffer = new MemoryStream())
        {
            using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true }))
            {
                json.WriteStartObject();
                json.WriteString("fingerprint", Plan.Fingerprint);
                json.WriteNumber("partition", partition.Index);
                json.WriteNumber("partitions", partition.Count);
                json.WriteStartArray("shards");
                for (var i = 0; i < shards.Count; i++)
                {
                    json.WriteStartObject();
                    json.WriteString("file", shards[i].FileName);
                    json.WriteNumber("bytes", new FileInfo(Path.Combine(folder, shards[i].FileName)).Length);
                    json.WriteString("sha256", hashes[i]);
                    json.WriteEndObject();
                }
                json.WriteEndArray();
                json.WriteEndObject();
            }
            WriteDurably(Path.Combine(folder, RecordFileName), buffer.ToArray());
        }
        OutputFolder.FsyncTree(folder);
        var target = PartFolder(partition.Index);
        if (Directory.Exists(target)) Directory.Delete(target, recursive: true);
        Directory.Move(folder, target);
        Posix.Fsync(Folder, directory: true);
    }

    /// <summary>The partitions not sealed yet.</summary>
    public IReadOnlyList<int> Unsealed() =>
        Enumerable.Range(0, Count).Where(i => !File.Exists(Path.Combine(PartFolder(i), RecordFileName))).ToList();

    /// <summary>Publishes when every partition is sealed and no other process is publishing; null otherwise (the caller's part is done).</summary>
    public CheckpointWriteResult? TryComplete(CheckpointWriteOptions caller)
    {
        if (Unsealed().Count > 0 || !TryLock(out _)) return null;
        return CompleteHoldingLock(caller);
    }

    /// <summary>Publishes (Complete-DareExport): every partition must be sealed and no other process publishing.</summary>
    public CheckpointWriteResult Complete(CheckpointWriteOptions caller)
    {
        var missing = Unsealed();
        if (missing.Count > 0)
        {
            throw new DareException(DareErrorId.PartitionIncomplete, DareErrorKind.ObjectNotFound,
                $"'{Destination}' cannot be completed: partition(s) {string.Join(", ", missing.Take(20))}{(missing.Count > 20 ? ", ..." : "")} of {Count} " +
                $"have not finished (no {RecordFileName} under '{Folder}'). Run them (again), then complete.") { FilePath = Folder };
        }
        if (!TryLock(out var holder))
        {
            throw new DareException(DareErrorId.PartitionCompletionBusy, DareErrorKind.ResourceExists,
                $"'{Destination}' is being completed by {holder} (it holds '{Path.Combine(Folder, LockFileName)}'). If that process is gone, delete the lock file and complete again.")
            { FilePath = Path.Combine(Folder, LockFileName) };
        }
        return CompleteHoldingLock(caller);
    }

    private bool TryLock(out string holder)
    {
        var path = Path.Combine(Folder, LockFileName);
        try
        {
            using var stream = new FileStream(path, FileMode.CreateNew, FileAccess.Write); // O_EXCL: one process wins
            stream.Write(System.Text.Encoding.UTF8.GetBytes($"process {Environment.ProcessId} on {Environment.MachineName}"));
            holder = "";
            return true;
        }
        catch (IOException) when (File.Exists(path))
        {
            try { holder = File.ReadAllText(path); } catch (IOException) { holder = "another process"; }
            return false;
        }
    }

    private CheckpointWriteResult CompleteHoldingLock(CheckpointWriteOptions caller)
    {
        try
        {
            var owner = ExportPartition.Assign(Plan.Shards, Count);
            Verify(owner);
            using var writer = CheckpointWriter.ForStagedShards(Destination, Plan.Tensors, Plan.WriteOptions(caller));
            var moved = new List<(string From, string To)>();
            try
            {
                for (var i = 0; i < Plan.Shards.Count; i++)
                {
                    var from = Path.Combine(PartFolder(owner[i]), Plan.Shards[i].FileName);
                    var to = Path.Combine(writer.TemporaryFolder, Plan.Shards[i].FileName);
                    File.Move(from, to);
                    moved.Add((from, to));
                }
                var result = writer.Commit();
                try { Directory.Delete(Folder, recursive: true); }
                catch (IOException) { caller.Warning?.Invoke($"Published '{Destination}' but could not remove the staging folder '{Folder}'; delete it."); }
                return result;
            }
            catch
            {
                // The staged shards go back, so the completion can be retried (e.g. with -Force) without rerunning any partition.
                foreach (var (from, to) in Enumerable.Reverse(moved))
                {
                    if (File.Exists(to)) File.Move(to, from);
                }
                throw;
            }
        }
        finally
        {
            var lockPath = Path.Combine(Folder, LockFileName);
            if (File.Exists(lockPath)) File.Delete(lockPath);
        }
    }

    /// <summary>Every partition's record names this plan and its shards; every shard has the planned size and its recorded SHA-256.</summary>
    private void Verify(int[] owner)
    {
        var expected = new List<(string Path, string Hash, int Partition)>();
        for (var p = 0; p < Count; p++)
        {
            var recordPath = Path.Combine(PartFolder(p), RecordFileName);
            using var record = JsonDocument.Parse(File.ReadAllBytes(recordPath));
            var root = record.RootElement;
            var fingerprint = root.GetProperty("fingerprint").GetString();
            if (fingerprint != Plan.Fingerprint || root.GetProperty("partition").GetInt32() != p || root.GetProperty("partitions").GetInt32() != Count)
            {
                throw new DareException(DareErrorId.PartitionPlanMismatch, DareErrorKind.InvalidData,
                    $"Partition {p}/{Count} of '{Destination}' was written for another plan (its record '{recordPath}' names fingerprint {fingerprint}, the staged plan is {Plan.Fingerprint}). " +
                    $"Run partition {p}/{Count} again.") { FilePath = recordPath };
            }
            var recorded = root.GetProperty("shards").EnumerateArray()
                .ToDictionary(s => s.GetProperty("file").GetString()!, s => (Bytes: s.GetProperty("bytes").GetInt64(), Hash: s.GetProperty("sha256").GetString()!));
            var planned = Enumerable.Range(0, Plan.Shards.Count).Where(i => owner[i] == p).Select(i => Plan.Shards[i]).ToList();
            foreach (var shard in planned)
            {
                var path = Path.Combine(PartFolder(p), shard.FileName);
                var size = File.Exists(path) ? new FileInfo(path).Length : -1;
                var want = shard.FileBytes(Plan.Metadata);
                if (!recorded.TryGetValue(shard.FileName, out var entry) || size != want || entry.Bytes != want)
                {
                    throw Corrupt(p, path, size < 0 ? "is missing" : $"has {size} bytes, the plan {want}");
                }
                expected.Add((path, entry.Hash, p));
            }
        }
        var actual = HashFiles(expected.Select(e => e.Path).ToList());
        for (var i = 0; i < expected.Count; i++)
        {
            if (actual[i] != expected[i].Hash) throw Corrupt(expected[i].Partition, expected[i].Path, $"has SHA-256 {actual[i]}, its partition recorded {expected[i].Hash}");
        }
    }

    private DareException Corrupt(int partition, string path, string what) =>
        new(DareErrorId.PartitionCorrupt, DareErrorKind.InvalidData,
            $"Shard '{path}' of partition {partition}/{Count} {what}. Run partition {partition}/{Count} of '{Destination}' again, then complete.") { FilePath = path };

    /// <summary>SHA-256 (hex) of each file, several files at once.</summary>
    private static string[] HashFiles(IReadOnlyList<string> paths)
    {
        var hashes = new string[paths.Count];
        Parallel.For(0, paths.Count, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, Environment.ProcessorCount) }, i =>
        {
            using var stream = new FileStream(paths[i], FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20, FileOptions.SequentialScan);
            hashes[i] = Convert.ToHexString(SHA256.HashData(stream)).ToLowerInvariant();
        });
        return hashes;
    }

    private static void WriteDurably(string path, byte[] content)
    {
        using var stream = new FileStream(path, FileMode.CreateNew, FileAccess.Write);
        stream.Write(content);
        stream.Flush(flushToDisk: true);
    }
}
