namespace Dare.Engine.Safetensors;

public static partial class OutputFolder
{
    /// <summary>
    /// Moves the finished, flushed <paramref name="temporary"/> folder to <paramref name="target"/>. A missing target is
    /// created by one rename that never replaces (another export that got there first is OutputInUse); an existing one
    /// is exchanged with the temporary in one step, after which the old model (now at the temporary name, still marked
    /// by the owner record) is deleted. Without renameat2 the old model is first renamed aside under an owner record
    /// of its own, so an export killed between the two renames is put back by the next one.
    /// </summary>
    internal static void Place(string temporary, string target, bool fillInPlace, Action<string>? warn)
    {
        if (fillInPlace)
        {
            FillMountPoint(temporary, target);
            return;
        }
        var parent = Path.GetDirectoryName(target)!;
        if (!Directory.Exists(target))
        {
            var moved = Posix.RenameNoReplace(temporary, target);
            if (moved.Unsupported) Io(DareErrorId.OutputReplaceFailed, "move the new model into", target, () => Directory.Move(temporary, target));
            else if (!moved.Done) throw RenameFailure(target, moved.Error);
            SyncParent(parent);
            TempFolderOwner.RemoveFor(temporary);
            return;
        }
        var exchanged = Posix.Exchange(temporary, target);
        if (exchanged.Done)
        {
            SyncParent(parent);
            RemoveOld(temporary, Path.GetFileName(target), warn);
            return;
        }
        if (!exchanged.Unsupported) throw RenameFailure(target, exchanged.Error);
        ReplaceWithTwoRenames(temporary, target, warn);
    }

    private static void ReplaceWithTwoRenames(string temporary, string target, Action<string>? warn)
    {
        var parent = Path.GetDirectoryName(target)!;
        string previous = "";
        Io(DareErrorId.OutputReplaceFailed, "move the old model aside from", target, () =>
        {
            previous = TempFolderOwner.ForThisProcess(Path.GetFileName(target), TempFolderRole.Previous).CreateFolderIn(parent, create: false);
            Directory.Move(target, previous);
        });
        try
        {
            Io(DareErrorId.OutputReplaceFailed, "move the new model into", target, () => Directory.Move(temporary, target));
        }
        catch
        {
            Directory.Move(previous, target);
            TempFolderOwner.RemoveFor(previous);
            throw;
        }
        SyncParent(parent);
        TempFolderOwner.RemoveFor(temporary);
        RemoveOld(previous, Path.GetFileName(target), warn);
    }

    /// <summary>Deletes the replaced model; if that fails its owner record says so, and a later export reclaims it.</summary>
    private static void RemoveOld(string folder, string destinationName, Action<string>? warn)
    {
        try
        {
            Directory.Delete(folder, recursive: true);
            TempFolderOwner.RemoveFor(folder);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            try { TempFolderOwner.ForThisProcess(destinationName, TempFolderRole.Replaced).WriteFor(folder, replace: true); }
            catch (Exception again) when (again is IOException or UnauthorizedAccessException) { /* the old record (this live process) stays */ }
            warn?.Invoke($"The new model is in place, but the old one at '{folder}' could not be removed ({ex.Message}); a later export removes it.");
        }
    }

    /// <summary>
    /// A mount point cannot be renamed over, so its temporary folder lies inside it: the new entries are moved up one
    /// by one (each rename replaces a same-named old file in one step), old export files the new model lacks are
    /// deleted, and the temporary folder goes.
    /// </summary>
    private static void FillMountPoint(string temporary, string target)
    {
        var names = Directory.EnumerateFileSystemEntries(temporary).Select(e => Path.GetFileName(e)!).ToHashSet(StringComparer.Ordinal);
        foreach (var name in names)
        {
            var to = Path.Combine(target, name);
            Io(DareErrorId.OutputReplaceFailed, "move the new file into", to, () => File.Move(Path.Combine(temporary, name), to, overwrite: true));
        }
        foreach (var stale in Directory.EnumerateFiles(target).Where(f => !names.Contains(Path.GetFileName(f)) && !TempFolderOwner.IsTempName(Path.GetFileName(f))).ToList())
        {
            Io(DareErrorId.OutputReplaceFailed, "remove the old file", stale, () => File.Delete(stale));
        }
        Io(DareErrorId.OutputReplaceFailed, "flush", target, () => Posix.Fsync(target, directory: true));
        Io(DareErrorId.OutputReplaceFailed, "remove the temporary folder", temporary, () => Directory.Delete(temporary));
        TempFolderOwner.RemoveFor(temporary);
    }

    private static void SyncParent(string parent) =>
        Io(DareErrorId.OutputReplaceFailed, "flush the folder", parent, () => Posix.Fsync(parent, directory: true));

    private static DareException RenameFailure(string target, int error) => error switch
    {
        Posix.EEXIST or Posix.ENOTEMPTY => Failure(DareErrorId.OutputInUse, "move the new model into", target,
            "it was created by another process while this export ran (two exports to one folder?)"),
        Posix.EBUSY => Failure(DareErrorId.OutputReplaceFailed, "replace", target, $"it is busy, a mount point or in use ({Posix.ErrorText(error)})"),
        _ => Failure(DareErrorId.OutputReplaceFailed, "move the new model into", target, Posix.ErrorText(error)),
    };
}
