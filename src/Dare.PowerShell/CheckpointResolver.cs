using System.Management.Automation;
using Dare.Engine;
using Dare.Engine.Adapters;
using Dare.Engine.Merge;
using Dare.Engine.Safetensors;

namespace Dare.PowerShell;

/// <summary>
/// Turns what users pass as a model — a Checkpoint, a path (wildcards allowed unless literal), a FileSystemInfo from
/// Get-ChildItem, an ExportResult from Export-Safetensors, or any object with a PSPath or LiteralPath property — into
/// checkpoints. Runs inside the cmdlet (not as an argument transformation) so that a bad path is reported with its
/// stable Dare ErrorId (PathNotFound, NotFileSystemPath, ...).
/// </summary>
internal static class CheckpointResolver
{
    public static IReadOnlyList<Checkpoint> Resolve(SessionState session, object? input, bool allowMany, bool literal = false)
    {
        var value = input is PSObject ps ? ps.BaseObject : input;
        string path;
        switch (value)
        {
            case Checkpoint checkpoint:
                return new[] { checkpoint };
            case FileSystemInfo info:
                return new[] { Checkpoint.Open(info.FullName) };
            case ExportResult exported:
                return new[] { Checkpoint.Open(exported.Path) };
            case string text:
                path = text;
                break;
            default:
                // Objects that name an item the way providers do (Get-Item output, Select-Object results): exact paths.
                if (LiteralPathOf(input) is { } named)
                {
                    path = named;
                    literal = true;
                    break;
                }
                throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument,
                    $"Cannot use a {value?.GetType().Name ?? "null"} as a model; give a path, a folder, a Checkpoint from Import-Safetensors or the result of Export-Safetensors.");
        }
        // org/name or org/name@revision that is not a local path: the Hugging Face cache's snapshot (offline).
        if (HubCache.LooksLikeId(path) && !session.InvokeProvider.Item.Exists(path, force: true, literalPath: true))
        {
            return new[] { Checkpoint.Open(HubCache.Resolve(path)) };
        }
        var resolved = PathResolver.ResolveExisting(session, path, literal);
        if (resolved.Count != 1 && !allowMany)
        {
            throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument,
                $"'{path}' matches {resolved.Count} items; this parameter takes exactly one model.") { FilePath = path };
        }
        return resolved.Select(Checkpoint.Open).ToList();
    }

    /// <summary>
    /// Like <see cref="Resolve"/>, but a folder holding adapter_config.json (or a file in one) becomes a <see cref="LoraAdapter"/>
    /// rather than a checkpoint, so that an adapter is never read as a model of its own.
    /// </summary>
    public static IReadOnlyList<object> ResolveModelsOrAdapters(SessionState session, object? input, bool literal)
    {
        var value = input is PSObject ps ? ps.BaseObject : input;
        if (value is Checkpoint or ExportResult) return Resolve(session, input, allowMany: true, literal);
        return ResolvePaths(session, input, literal).Select(path => LoraAdapter.IsAdapter(path) ? (object)LoraAdapter.Open(path) : Checkpoint.Open(path)).ToList();
    }

    /// <summary>The file-system paths an input names: a path (wildcards unless literal), a FileSystemInfo, an export's result, or an object with PSPath.</summary>
    public static IReadOnlyList<string> ResolvePaths(SessionState session, object? input, bool literal)
    {
        var value = input is PSObject ps ? ps.BaseObject : input;
        switch (value)
        {
            case string text:
                return PathResolver.ResolveExisting(session, text, literal);
            case FileSystemInfo info:
                return new[] { info.FullName };
            case ExportResult exported:
                return new[] { exported.Path };
            case LoraExportResult adapter:
                return new[] { adapter.Path };
            case Checkpoint checkpoint:
                return new[] { checkpoint.Path };
        }
        if (LiteralPathOf(input) is { } named) return PathResolver.ResolveExisting(session, named, literal: true);
        throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument,
            $"Cannot use a {value?.GetType().Name ?? "null"} as a model or adapter; give a path, a folder, or the result of Export-Safetensors or Export-LoraAdapter.");
    }

    private static string? LiteralPathOf(object? input)
    {
        if (input is null) return null;
        var properties = PSObject.AsPSObject(input).Properties;
        return (properties["PSPath"]?.Value ?? properties["LiteralPath"]?.Value) as string;
    }
}
