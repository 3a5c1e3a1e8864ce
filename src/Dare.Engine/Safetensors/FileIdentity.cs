using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Dare.Engine.Safetensors;

/// <summary>What kind of thing a path names (after following symlinks).</summary>
public enum FileKind
{
    Missing,
    Regular,
    Directory,
    Fifo,
    Socket,
    CharacterDevice,
    BlockDevice,
    Other,
}

/// <summary>
/// Who a file is: device, inode, size and modification time, read once when a checkpoint is opened. A plan built
/// from the checkpoint reads its data later (lazily, maybe much later); comparing identities then tells whether the
/// file was replaced or rewritten in between, in which case its recorded header offsets no longer mean anything.
/// On Linux the values come from statx (a layout that is the same on every architecture); elsewhere device and
/// inode are 0 and size plus modification time stand for the identity.
/// </summary>
public readonly partial record struct FileIdentity(ulong Device, ulong Inode, long Size, long ModifiedTicks)
{
    public override string ToString() => $"device {Device}, inode {Inode}, {Size} bytes, modified {new DateTime(ModifiedTicks, DateTimeKind.Utc):O}";

    /// <summary>The kind and identity of the file <paramref name="path"/> names (symlinks followed). Never opens it, so never blocks.</summary>
    public static (FileKind Kind, FileIdentity Identity) Stat(string path)
    {
        if (OperatingSystem.IsLinux() && TryStatx(AtCurrentDirectory, path, 0, out var kind, out var identity)) return (kind, identity);
        if (System.IO.Directory.Exists(path)) return (FileKind.Directory, default);
        var info = new FileInfo(path);
        if (!info.Exists) return (FileKind.Missing, default);
        return (FileKind.Regular, new FileIdentity(0, 0, info.Length, info.LastWriteTimeUtc.Ticks));
    }

    /// <summary>The identity of the file an open handle refers to (fstat: what will actually be read).</summary>
    public static FileIdentity Of(SafeFileHandle handle)
    {
        if (OperatingSystem.IsLinux())
        {
            var added = false;
            try
            {
                handle.DangerousAddRef(ref added);
                if (TryStatx((int)handle.DangerousGetHandle(), "", EmptyPath, out _, out var identity)) return identity;
            }
            finally
            {
                if (added) handle.DangerousRelease();
            }
        }
        return new FileIdentity(0, 0, RandomAccess.GetLength(handle), File.GetLastWriteTimeUtc(handle).Ticks);
    }

    private const int AtCurrentDirectory = -100; // AT_FDCWD
    private const int EmptyPath = 0x1000; // AT_EMPTY_PATH: stat the descriptor itself
    private const uint BasicStats = 0x7ff; // STATX_BASIC_STATS
    private const int NoEntry = 2, NotDirectory = 20; // ENOENT, ENOTDIR

    /// <summary>statx into a 256-byte struct statx; false when the call is unavailable (then the caller falls back to .NET).</summary>
    private static unsafe bool TryStatx(int directory, string path, int flags, out FileKind kind, out FileIdentity identity)
    {
        kind = FileKind.Missing;
        identity = default;
        var buffer = stackalloc byte[256];
        int result;
        try
        {
            result = statx(directory, path, flags, BasicStats, buffer);
        }
        catch (Exception ex) when (ex is EntryPointNotFoundException or DllNotFoundException)
        {
            return false;
        }
        if (result != 0)
        {
            var errno = Marshal.GetLastPInvokeError();
            if (errno is NoEntry or NotDirectory) return true; // missing: kind stays Missing
            return false; // ENOSYS (old kernel, seccomp) and the like: let .NET answer
        }
        var mode = *(ushort*)(buffer + 28);
        kind = (mode & 0xF000) switch
        {
            0x8000 => FileKind.Regular,
            0x4000 => FileKind.Directory,
            0x1000 => FileKind.Fifo,
            0xC000 => FileKind.Socket,
            0x2000 => FileKind.CharacterDevice,
            0x6000 => FileKind.BlockDevice,
            _ => FileKind.Other,
        };
        var inode = *(ulong*)(buffer + 32);
        var size = *(long*)(buffer + 40);
        var modifiedSeconds = *(long*)(buffer + 112);
        var modifiedNanoseconds = *(uint*)(buffer + 120);
        var device = ((ulong)*(uint*)(buffer + 136) << 32) | *(uint*)(buffer + 140);
        var ticks = DateTime.UnixEpoch.Ticks + modifiedSeconds * TimeSpan.TicksPerSecond + modifiedNanoseconds / 100;
        identity = new FileIdentity(device, inode, size, ticks);
        return true;
    }

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static unsafe partial int statx(int directory, string path, int flags, uint mask, byte* buffer);
}

/// <summary>Model data and config are read only from regular files: a FIFO, socket or device would block or never end.</summary>
public static partial class RegularFile
{
    /// <summary>Stats <paramref name="path"/> (without opening it) and throws NotRegularFile unless it is missing or a regular file.</summary>
    public static (FileKind Kind, FileIdentity Identity) Check(string path, string role)
    {
        var (kind, identity) = FileIdentity.Stat(path);
        if (kind is FileKind.Missing or FileKind.Regular) return (kind, identity);
        throw new DareException(DareErrorId.NotRegularFile, DareErrorKind.InvalidData,
            $"'{path}' ({role}) is a {Describe(kind)}, not a regular file; Dare reads model data and config only from regular files.") { FilePath = path };
    }

    /// <summary>The canonical path with every symlink resolved (realpath on Unix); the full path when that fails.</summary>
    public static unsafe string RealPath(string path)
    {
        var full = Path.GetFullPath(path);
        if (OperatingSystem.IsWindows()) return new FileInfo(full).ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? full;
        var resolved = realpath(full, IntPtr.Zero);
        if (resolved == IntPtr.Zero) return full;
        try
        {
            return Marshal.PtrToStringUTF8(resolved) ?? full;
        }
        finally
        {
            Marshal.FreeHGlobal(resolved); // malloc'd by realpath; FreeHGlobal is free() on Unix
        }
    }

    [LibraryImport("libc", StringMarshalling = StringMarshalling.Utf8)]
    private static partial IntPtr realpath(string path, IntPtr resolved);

    public static string Describe(FileKind kind) => kind switch
    {
        FileKind.Fifo => "named pipe (FIFO)",
        FileKind.Socket => "socket",
        FileKind.CharacterDevice => "character device",
        FileKind.BlockDevice => "block device",
        FileKind.Directory => "directory",
        FileKind.Missing => "missing file",
        _ => "special file",
    };
}
