using System.Management.Automation;
using Dare.Engine;
using Dare.Engine.Safetensors;

namespace Dare.PowerShell;

/// <summary>
/// Turns what users pass as a model — a Checkpoint, a path (wildcards allowed) or a FileSystemInfo from
/// Get-ChildItem — into checkpoints. Runs inside the cmdlet (not as an argument transformation) so that a bad path
/// is reported with its stable Dare ErrorId (PathNotFound, NotFileSystemPath, ...).
/// </summary>
internal static class CheckpointResolver
{
    public static IReadOnlyList<Checkpoint> Resolve(SessionState session, object? input, bool allowMany)
    {
        var value = input is PSObject ps ? ps.BaseObject : input;
        string path;
        switch (value)
        {
            case Checkpoint checkpoint:
                return new[] { checkpoint };
            case FileSystemInfo info:
                return new[] { Checkpoint.Open(info.FullName) };
            case string text:
                path = text;
                break;
            default:
                throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument,
                    $"Cannot use a {value?.GetType().Name ?? "null"} as a model; give a path, a folder or a Checkpoint from Import-Safetensors.");
        }
        var resolved = PathResolver.ResolveExisting(session, path, literal: false);
        if (resolved.Count != 1 && !allowMany)
        {
            throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument,
                $"'{path}' matches {resolved.Count} items; this parameter takes exactly one model.") { FilePath = path };
        }
        return resolved.Select(Checkpoint.Open).ToList();
    }
}
