using System.Runtime.InteropServices;

namespace Dare.Engine.Safetensors;

/// <summary>
/// The few Linux calls .NET does not expose that a safe output needs: an atomic exchange of two folders
/// (renameat2), fsync of folders, real paths, and which device/mount a folder lives on. Elsewhere each call
/// reports "not available" and the callers fall back to what .NET offers.
/// </summary>
internal static unsafe partial class Posix
{
    private const int AT_FDCWD = -100;
    private const uint RENAME_NOREPLACE = 1, RENAME_EXCHANGE = 2;
    private const int O_RDONLY = 0, O_CLOEXEC = 0x80000;

    // O_DIRECTORY's value differs between architectures: x86's 0x10000 is O_DIRECT on Arm (see DirectOutputFile.DirectFlag).
    private static readonly int O_DIRECTORY = RuntimeInformation.ProcessArchitecture is Architecture.Arm64 or Architecture.Arm ? 0x4000 : 0x10000;
    private const uint STATX_BASIC_STATS = 0x7ff, STATX_MNT_ID = 0x1000;
    public const int ENOENT = 2, EEXIST = 17, ENOTEMPTY = 39, EBUSY = 16, EINVAL = 22, ENOSYS = 38, EXDEV = 18;

    /// <summary>Outcome of a rename: done, not offered here (fall back), or failed with an errno.</summary>
    public readonly record struct RenameResult(bool Done, bool Unsupported, int Error);

    /// <summary>Swaps two existing paths in one step (renameat2 RENAME_EXCHANGE).</summary>
    public static RenameResult Exchange(string a, string b) => RenameAt2(a, b, RENAME_EXCHANGE);

    /// <summary>Renames <paramref name="from"/> to <paramref name="to"/>, failing with EEXIST if <paramref name="to"/> exists (even an empty folder).</summary>
    public static RenameResult RenameNoReplace(string from, string to) => RenameAt2(from, to, RENAME_NOREPLACE);

    /// <summary>Tests set this on their thread to take the fallback that systems without renameat2 take.</summary>
    [ThreadStatic]
    internal static bool PretendRenameAt2IsMissing;

    private static RenameResult RenameAt2(string from, string to, uint flags)
    {
        if (!OperatingSystem.IsLinux() || PretendRenameAt2IsMissing) return new RenameResult(false, true, 0);
        try
        {
            if (renameat2(AT_FDCWD, from, AT_FDCWD, to, flags) == 0) return new RenameResult(true, false, 0);
        }
        catch (EntryPointNotFoundException)
        {
            return new RenameResult(false, true, 0); // a C library older than glibc 2.28
        }
        var error = Marshal.GetLastPInvokeError();
        // The kernel or the file system does not offer the flag.
        return error is EINVAL or ENOSYS ? new RenameResult(false, true, error) : new RenameResult(false, false, error);
    }

    /// <summary>Opens <paramref name="path"/> read-only and close-on-exec, with <paramref name="flags"/> added (O_DIRECTORY, O_DIRECT); a descriptor, or −1.</summary>
    internal static int OpenReadOnly(string path, int flags = 0) => open(path, O_RDONLY | O_CLOEXEC | flags);

    /// <summary>Closes a descriptor from <see cref="OpenReadOnly"/>.</summary>
    internal static void Close(int descriptor) => close(descriptor);

    public static string ErrorText(int error) => $"{Marshal.GetPInvokeErrorMessage(error)} (errno {error})";

    /// <summary>Flushes a file or folder (its entries) to the device. Folders are skipped where they cannot be opened.</summary>
    public static void Fsync(string path, bool directory)
    {
        if (!OperatingSystem.IsLinux())
        {
            if (directory) return;
            using var stream = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite);
            stream.Flush(flushToDisk: true);
            return;
        }
        var descriptor = OpenReadOnly(path, directory ? O_DIRECTORY : 0);
        if (descriptor < 0) throw new IOException($"Could not open '{path}' to flush it: {ErrorText(Marshal.GetLastPInvokeError())}.");
        try
        {
            if (fsync(descriptor) != 0) throw new IOException($"Could not flush '{path}' to the device: {ErrorText(Marshal.GetLastPInvokeError())}.");
        }
        finally
        {
            Close(descriptor);
        }
    }

    /// <summary>
    /// The path with every symbolic link resolved; for a path that does not exist yet, its deepest existing folder is
    /// resolved and the rest appended.
    /// </summary>
    public static string RealPath(string path)
    {
        var full = Path.TrimEndingDirectorySeparator(Path.GetFullPath(path));
        if (!OperatingSystem.IsLinux() && !OperatingSystem.IsMacOS()) return full;
        var rest = new Stack<string>();
        var current = full;
        while (true)
        {
            var resolved = realpath(current, null);
            if (resolved != null)
            {
                try
                {
                    var result = Marshal.PtrToStringUTF8((nint)resolved)!;
                    while (rest.Count > 0) result = Path.Combine(result, rest.Pop());
                    return result;
                }
                finally
                {
                    free(resolved);
                }
            }
            var parent = Path.GetDirectoryName(current);
            if (parent is null) return full;
            rest.Push(Path.GetFileName(current));
            current = parent;
        }
    }

    /// <summary>Whether <paramref name="folder"/> is the root of a mount: its device or mount id differs from its parent's.</summary>
    public static bool IsMountPoint(string folder)
    {
        if (!OperatingSystem.IsLinux()) return false;
        var parent = Path.GetDirectoryName(Path.TrimEndingDirectorySeparator(folder));
        if (parent is null) return true;
        if (!TryStat(folder, out var own) || !TryStat(parent, out var above)) return false;
        return own.Device != above.Device || (own.MountId is { } a && above.MountId is { } b && a != b);
    }

    private readonly record struct DeviceOf(ulong Device, ulong? MountId);

    private static bool TryStat(string path, out DeviceOf device)
    {
        device = default;
        var buffer = stackalloc byte[256];
        try
        {
            if (statx(AT_FDCWD, path, 0, STATX_BASIC_STATS | STATX_MNT_ID, buffer) != 0) return false;
        }
        catch (EntryPointNotFoundException)
        {
            return false;
        }
        // struct statx: stx_mask at 0, stx_dev_major at 136, stx_dev_minor at 140, stx_mnt_id at 144 (fixed on every architecture).
        var mask = *(uint*)buffer;
        var dev = ((ulong)*(uint*)(buffer + 136) << 32) | *(uint*)(buffer + 140);
        device = new DeviceOf(dev, (mask & STATX_MNT_ID) != 0 ? *(ulong*)(buffer + 144) : null);
        return true;
    }

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int renameat2(int oldDirectory, string oldPath, int newDirectory, string newPath, uint flags);

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int open(string path, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int fsync(int descriptor);

    [LibraryImport("libc")]
    private static partial int close(int descriptor);

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial byte* realpath(string path, byte* resolved);

    [LibraryImport("libc")]
    private static partial void free(void* pointer);

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int statx(int directory, string path, int flags, uint mask, byte* buffer);
}
