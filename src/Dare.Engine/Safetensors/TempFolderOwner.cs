using System.Globalization;
using System.Security.Cryptography;

namespace Dare.Engine.Safetensors;

/// <summary>
/// The owner record of a Dare temporary folder: a small file <c>.dare-XXXXXXXX.owner</c> beside the folder
/// <c>.dare-XXXXXXXX</c>, holding the writing process's id, boot id and start time and the destination's name.
/// It lives beside the folder, not inside it, so the atomic exchange never carries it into the destination and it
/// outlives the folder's contents. A later export removes folders whose owner process is gone (another boot, no such
/// process, or a process id reused by a younger process); a folder of a live process is never touched.
/// </summary>
internal sealed record TempFolderOwner(int ProcessId, string BootId, string StartTime, string DestinationName, TempFolderRole Role)
{
    public const string Prefix = ".dare-";
    public const string RecordSuffix = ".owner";

    /// <summary>The current process's record for a folder that will become <paramref name="destinationName"/>.</summary>
    public static TempFolderOwner ForThisProcess(string destinationName, TempFolderRole role) =>
        new(Environment.ProcessId, CurrentBootId() ?? "", StartTimeOf(Environment.ProcessId) ?? "", destinationName, role);

    /// <summary>Whether <paramref name="name"/> is a Dare temporary folder (".dare-" and 8 hex digits) or its owner record.</summary>
    public static bool IsTempName(string name)
    {
        var stem = name.EndsWith(RecordSuffix, StringComparison.Ordinal) ? name[..^RecordSuffix.Length] : name;
        return stem.Length == Prefix.Length + 8 && stem.StartsWith(Prefix, StringComparison.Ordinal) && stem[Prefix.Length..].All(Uri.IsHexDigit);
    }

    /// <summary>
    /// Picks a free name in <paramref name="parent"/>, writes (and flushes) this record for it, then creates the empty
    /// folder unless <paramref name="create"/> is false (the name is then reserved for a rename).
    /// </summary>
    public string CreateFolderIn(string parent, bool create = true)
    {
        for (var attempt = 0; ; attempt++)
        {
            var folder = Path.Combine(parent, Prefix + Convert.ToHexString(RandomNumberGenerator.GetBytes(4)).ToLowerInvariant());
            if (Directory.Exists(folder) || File.Exists(folder)) continue;
            try
            {
                WriteFor(folder);
            }
            catch (IOException) when (File.Exists(folder + RecordSuffix) && attempt < 16)
            {
                continue; // another process took this name first
            }
            if (!create) return folder;
            try
            {
                Directory.CreateDirectory(folder);
            }
            catch
            {
                File.Delete(folder + RecordSuffix); // no folder, no record
                throw;
            }
            return folder;
        }
    }

    /// <summary>Writes this record as the owner of <paramref name="folder"/> (which need not exist yet); fails if one exists unless <paramref name="replace"/>.</summary>
    public void WriteFor(string folder, bool replace = false)
    {
        var text = string.Join('\n',
            $"pid={ProcessId.ToString(CultureInfo.InvariantCulture)}", $"boot_id={BootId}", $"start_time={StartTime}",
            $"role={Role.ToString().ToLowerInvariant()}", $"destination={DestinationName}", "");
        using (var stream = new FileStream(folder + RecordSuffix, replace ? FileMode.Create : FileMode.CreateNew, FileAccess.Write))
        {
            stream.Write(System.Text.Encoding.UTF8.GetBytes(text));
            stream.Flush(flushToDisk: true);
        }
        Posix.Fsync(Path.GetDirectoryName(folder)!, directory: true);
    }

    /// <summary>Removes the record of <paramref name="folder"/> (after the folder itself is gone or in place).</summary>
    public static void RemoveFor(string folder) => File.Delete(folder + RecordSuffix);

    /// <summary>Reads the record of <paramref name="folder"/>; null when there is none or it cannot be parsed.</summary>
    public static TempFolderOwner? ReadFor(string folder)
    {
        string[] lines;
        try { lines = File.ReadAllLines(folder + RecordSuffix); }
        catch (IOException) { return null; }
        catch (UnauthorizedAccessException) { return null; }
        var fields = lines.Select(l => l.Split('=', 2)).Where(p => p.Length == 2).GroupBy(p => p[0]).ToDictionary(g => g.Key, g => g.First()[1]);
        if (!fields.TryGetValue("pid", out var pid) || !int.TryParse(pid, NumberStyles.None, CultureInfo.InvariantCulture, out var processId)) return null;
        var role = fields.GetValueOrDefault("role") switch { "previous" => TempFolderRole.Previous, "replaced" => TempFolderRole.Replaced, _ => TempFolderRole.Temporary };
        return new TempFolderOwner(processId, fields.GetValueOrDefault("boot_id", ""), fields.GetValueOrDefault("start_time", ""), fields.GetValueOrDefault("destination", ""), role);
    }

    /// <summary>Whether the process that wrote this record still runs (unknown counts as running).</summary>
    public bool IsAlive()
    {
        var bootId = CurrentBootId();
        if (bootId is not null && BootId.Length > 0 && bootId != BootId) return false;
        if (OperatingSystem.IsLinux())
        {
            var start = StartTimeOf(ProcessId);
            if (start is null) return false;
            return StartTime.Length == 0 || start == StartTime;
        }
        try
        {
            using var process = System.Diagnostics.Process.GetProcessById(ProcessId);
            return !process.HasExited;
        }
        catch (ArgumentException)
        {
            return false;
        }
    }

    private static string? CurrentBootId()
    {
        try { return File.ReadAllText("/proc/sys/kernel/random/boot_id").Trim(); }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException) { return null; }
    }

    /// <summary>Field 22 of /proc/PID/stat (start time in clock ticks since boot); null when there is no such process.</summary>
    private static string? StartTimeOf(int processId)
    {
        string stat;
        try { stat = File.ReadAllText($"/proc/{processId.ToString(CultureInfo.InvariantCulture)}/stat"); }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException) { return null; }
        // The command name (field 2) may hold spaces and parentheses; the fields after its last ')' are plain.
        var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        return fields.Length > 19 ? fields[19] : null;
    }
}

internal enum TempFolderRole
{
    /// <summary>A new output being written; removed when its owner is gone.</summary>
    Temporary,

    /// <summary>The old destination moved aside during a two-rename replace; put back if the destination is missing.</summary>
    Previous,

    /// <summary>An old model its process replaced but could not delete: garbage whether or not that process still runs.</summary>
    Replaced,
}
