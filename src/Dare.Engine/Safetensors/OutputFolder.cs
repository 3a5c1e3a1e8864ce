namespace Dare.Engine.Safetensors;

/// <summary>
/// Where an output goes and what may be replaced there. <see cref="Check"/> refuses, before any work, destinations
/// whose replacement could lose data that Dare did not write; <see cref="Place"/> moves a finished temporary folder
/// into place in one step where the OS offers one (Linux renameat2 RENAME_EXCHANGE), so a kill at any instant leaves
/// the old or the new model at the destination. A symbolic link stays a link (its target folder is replaced); a mount
/// point is filled on its own file system.
/// </summary>
public static partial class OutputFolder
{
    /// <summary>Names a model export may hold besides *.safetensors and the side files: what -Force may replace.</summary>
    public static readonly IReadOnlyList<string> ExportFileNames = new[]
    {
        Checkpoint.IndexFileName, "dare_recipe.yml", "README.md", "mergekit_config.yml", "LICENSE", Adapters.LoraAdapterConfig.FileName,
    }.Concat(CheckpointWriter.SideFiles).ToArray();

    /// <summary>What an output must not replace of these checkpoints: a model's folder, or a single-file model's file.</summary>
    public static IReadOnlyList<string> InputPathsOf(IEnumerable<Checkpoint> checkpoints) =>
        // A stack of slices (Checkpoint.Stack) reads its sources' folders; its own Path only describes it.
        checkpoints.SelectMany(c => c.Slices is { } slices ? slices.Select(s => s.Model.Path) : new[] { c.Path }).Distinct(StringComparer.Ordinal).ToList();

    /// <summary>What an output must not replace of a task vector's inputs: the base, the fine-tuned models and the LoRA adapters' folders.</summary>
    public static IReadOnlyList<string> InputPathsOf(Merge.TaskVector vector) =>
        InputPathsOf(vector.Sources.Prepend(vector.Base)).Concat(vector.LoraAdapters.Select(a => a.Path)).Distinct(StringComparer.Ordinal).ToList();

    /// <summary>
    /// Throws unless <paramref name="destination"/> may be written: OutputExists for a file, or a non-empty folder without
    /// <paramref name="force"/>; OutputNotReplaceable for a folder that is, holds or lies inside a protected path (an
    /// input model's folder; a single-file model's file may only not be held), that is or holds <paramref name="currentLocation"/>, that is the home folder or a file-system root,
    /// or (with <paramref name="force"/>) that holds anything a model export does not.
    /// </summary>
    public static void Check(string destination, bool force, IEnumerable<string>? protectedPaths = null, string? currentLocation = null)
    {
        destination = Path.TrimEndingDirectorySeparator(Path.GetFullPath(destination));
        if (File.Exists(destination))
        {
            throw new DareException(DareErrorId.OutputExists, DareErrorKind.ResourceExists, $"'{destination}' is an existing file; the output must be a folder.") { FilePath = destination };
        }
        var real = Posix.RealPath(destination);
        if (Path.GetPathRoot(real) == real || Path.GetPathRoot(real) == real + Path.DirectorySeparatorChar)
        {
            throw NotReplaceable(destination, "it is a file-system root");
        }
        var home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        if (home.Length > 0 && Same(Posix.RealPath(home), real)) throw NotReplaceable(destination, "it is the home folder");
        if (currentLocation is not null && Posix.RealPath(currentLocation) is var here && (Same(here, real) || Inside(here, real)))
        {
            throw NotReplaceable(destination, Same(here, real) ? "it is the current location" : $"it holds the current location '{here}'");
        }
        foreach (var input in (protectedPaths ?? Array.Empty<string>()).Select(Posix.RealPath))
        {
            if (Same(input, real)) throw NotReplaceable(destination, "it is an input model of this export");
            if (Inside(input, real)) throw NotReplaceable(destination, $"it holds the input model '{input}'");
            if (Inside(real, input)) throw NotReplaceable(destination, $"it lies inside the input model '{input}'");
        }
        if (!Directory.Exists(destination)) return;
        // Dare temporaries inside (a mount point's own, or a killed export's) are reclaimed, not content; a fresh
        // ext4 file system's lost+found at a mount point is kept, not content either.
        var mountPoint = Posix.IsMountPoint(real);
        var entries = Directory.EnumerateFileSystemEntries(destination).Select(e => Path.GetFileName(e)!)
            .Where(e => !TempFolderOwner.IsTempName(e) && !(mountPoint && e == "lost+found")).Order(StringComparer.Ordinal).ToList();
        if (entries.Count == 0) return;
        if (!force)
        {
            throw new DareException(DareErrorId.OutputExists, DareErrorKind.ResourceExists,
                $"'{destination}' already exists and is not empty. Use -Force to replace it (it is replaced only once the new model is complete).") { FilePath = destination };
        }
        var foreign = entries.FirstOrDefault(e => !IsExportEntry(Path.Combine(destination, e)));
        if (foreign is not null)
        {
            throw NotReplaceable(destination, $"it holds '{foreign}', which is not part of a model export. -Force replaces only a folder holding nothing but " +
                "*.safetensors, the index, config, tokenizer and chat-template files, dare_recipe.yml, README.md, mergekit_config.yml, LICENSE and adapter_config.json; move it away or choose another folder");
        }
    }

    private static bool IsExportEntry(string path)
    {
        var name = Path.GetFileName(path);
        var info = new FileInfo(path);
        if (!info.Exists || info.LinkTarget is not null) return false; // folders, links, devices: never ours
        return name.EndsWith(".safetensors", StringComparison.Ordinal) || ExportFileNames.Contains(name, StringComparer.Ordinal);
    }

    private static DareException NotReplaceable(string destination, string reason) =>
        new(DareErrorId.OutputNotReplaceable, DareErrorKind.ResourceExists, $"'{destination}' cannot be used as the output: {reason}.") { FilePath = destination };

    private static bool Same(string a, string b) => string.Equals(a, b, OperatingSystem.IsWindows() ? StringComparison.OrdinalIgnoreCase : StringComparison.Ordinal);

    /// <summary>Whether <paramref name="path"/> lies strictly inside <paramref name="folder"/>.</summary>
    private static bool Inside(string path, string folder)
    {
        var prefix = Path.TrimEndingDirectorySeparator(folder) + Path.DirectorySeparatorChar;
        return path.StartsWith(prefix, OperatingSystem.IsWindows() ? StringComparison.OrdinalIgnoreCase : StringComparison.Ordinal);
    }

    /// <summary>
    /// The folder that will actually be replaced (a symbolic link's final target) and where its temporary folder goes:
    /// beside it, or inside it when it is a mount point (a folder on another file system cannot be renamed over it).
    /// </summary>
    internal static (string Target, string TempParent, bool FillInPlace) Locate(string destination)
    {
        var target = destination;
        var info = new DirectoryInfo(destination);
        if (info.LinkTarget is not null)
        {
            target = Path.TrimEndingDirectorySeparator(info.ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? destination);
        }
        if (Directory.Exists(target) && Posix.IsMountPoint(target)) return (target, target, true);
        return (target, Path.GetDirectoryName(target)!, false);
    }

    /// <summary>Removes temporary folders (and their owner records) in <paramref name="parent"/> whose owner process is gone, and old models their process replaced but could not delete.</summary>
    internal static void ReclaimOrphans(string parent, Action<string>? warn)
    {
        if (!Directory.Exists(parent)) return;
        foreach (var record in Directory.EnumerateFiles(parent, TempFolderOwner.Prefix + "*" + TempFolderOwner.RecordSuffix))
        {
            var name = Path.GetFileName(record);
            if (!TempFolderOwner.IsTempName(name)) continue;
            var folder = record[..^TempFolderOwner.RecordSuffix.Length];
            if (TempFolderOwner.ReadFor(folder) is not { } owner || (owner.Role != TempFolderRole.Replaced && owner.IsAlive())) continue;
            try
            {
                var destination = Path.Combine(parent, owner.DestinationName);
                if (owner.Role == TempFolderRole.Previous && owner.DestinationName.Length > 0 && Directory.Exists(folder) && !Directory.Exists(destination))
                {
                    // Killed between the two renames of a replace without renameat2: the old model goes back.
                    Directory.Move(folder, destination);
                    File.Delete(record);
                    warn?.Invoke($"Restored '{destination}' from '{folder}', where process {owner.ProcessId} had moved it before it was stopped.");
                    continue;
                }
                var size = Directory.Exists(folder) ? new DirectoryInfo(folder).EnumerateFiles("*", SearchOption.AllDirectories).Sum(f => f.Length) : 0;
                if (Directory.Exists(folder)) Directory.Delete(folder, recursive: true);
                File.Delete(record);
                var why = owner.Role == TempFolderRole.Replaced ? "the old model it replaced but could not delete" : "no longer running";
                warn?.Invoke($"Reclaimed '{folder}' ({ByteSize.Format(size)}), left by process {owner.ProcessId} ({why}) while writing '{owner.DestinationName}'.");
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                warn?.Invoke($"Could not remove the leftover temporary folder '{folder}': {ex.Message}");
            }
        }
    }

    /// <summary>Flushes every file under <paramref name="folder"/>, then the folder itself.</summary>
    internal static void FsyncTree(string folder)
    {
        foreach (var file in Directory.EnumerateFiles(folder)) Posix.Fsync(file, directory: false);
        Posix.Fsync(folder, directory: true);
    }

    /// <summary>Runs a file-system step; a failure becomes a DareException naming the path and the operation.</summary>
    internal static void Io(DareErrorId id, string operation, string path, Action step)
    {
        try
        {
            step();
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw Failure(id, operation, path, ex.Message, ex);
        }
    }

    internal static DareException Failure(DareErrorId id, string operation, string path, string reason, Exception? inner = null) =>
        new(id, id == DareErrorId.OutputInUse ? DareErrorKind.ResourceBusy : DareErrorKind.WriteError,
            $"Could not {operation} '{path}': {reason.TrimEnd('.')}.", inner) { FilePath = path };
}
