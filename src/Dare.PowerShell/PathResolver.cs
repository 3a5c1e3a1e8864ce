using System.Management.Automation;
using Dare.Engine;

namespace Dare.PowerShell;

/// <summary>Resolves -Path (wildcards) and -LiteralPath through the PowerShell provider; only FileSystem paths are accepted.</summary>
internal static class PathResolver
{
    /// <summary>Existing file-system paths for the given PowerShell paths. Throws DareException for missing or non-FileSystem paths.</summary>
    public static List<string> ResolveExisting(SessionState session, string path, bool literal)
    {
        // Check the provider first, so that a path on another provider is refused as such even when it does not exist there.
        var unresolved = Unresolved(session, path);
        List<string> resolved;
        if (literal || !WildcardPattern.ContainsWildcardCharacters(path))
        {
            resolved = new List<string> { unresolved };
        }
        else
        {
            try
            {
                resolved = session.Path.GetResolvedProviderPathFromPSPath(path, out var provider).ToList();
                RequireFileSystem(provider, path);
            }
            catch (ItemNotFoundException ex)
            {
                throw new DareException(DareErrorId.PathNotFound, DareErrorKind.ObjectNotFound, $"No file or folder matches '{path}'.", ex) { FilePath = path };
            }
        }
        foreach (var item in resolved)
        {
            if (!File.Exists(item) && !Directory.Exists(item))
            {
                throw new DareException(DareErrorId.PathNotFound, DareErrorKind.ObjectNotFound, $"Cannot find path '{item}' because it does not exist.") { FilePath = item };
            }
        }
        if (resolved.Count == 0)
        {
            throw new DareException(DareErrorId.PathNotFound, DareErrorKind.ObjectNotFound, $"No file or folder matches '{path}'.") { FilePath = path };
        }
        return resolved;
    }

    /// <summary>
    /// A file-system path for an output that may not exist yet. With <paramref name="literal"/> false, a path with
    /// wildcard characters must match exactly one existing item (as Out-File -FilePath does); otherwise it is used as typed.
    /// </summary>
    public static string ResolveOutput(SessionState session, string path, bool literal)
    {
        var unresolved = Unresolved(session, path);
        if (literal || !WildcardPattern.ContainsWildcardCharacters(path)) return unresolved;
        var matches = ResolveExisting(session, path, literal: false);
        if (matches.Count != 1)
        {
            throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument,
                $"The output path '{path}' matches {matches.Count} items; give a path that names one folder, or use -LiteralPath.") { FilePath = path };
        }
        return matches[0];
    }

    private static string Unresolved(SessionState session, string path)
    {
        string resolved;
        ProviderInfo provider;
        try
        {
            resolved = session.Path.GetUnresolvedProviderPathFromPSPath(path, out provider, out _);
        }
        catch (Exception ex) when (ex is System.Management.Automation.DriveNotFoundException or ProviderNotFoundException or NotSupportedException)
        {
            throw new DareException(DareErrorId.NotFileSystemPath, DareErrorKind.InvalidArgument, $"'{path}' is not a file-system path: {ex.Message}", ex) { FilePath = path };
        }
        RequireFileSystem(provider, path);
        return resolved;
    }

    private static void RequireFileSystem(ProviderInfo provider, string path)
    {
        // By type, not by name: a provider registered under another name that derives from FileSystemProvider
        // is still the file system, and a third-party provider named "FileSystem" is not.
        if (!typeof(Microsoft.PowerShell.Commands.FileSystemProvider).IsAssignableFrom(provider.ImplementingType))
        {
            throw new DareException(DareErrorId.NotFileSystemPath, DareErrorKind.InvalidArgument,
                $"'{path}' is on the {provider.Name} provider; Dare reads and writes models on the FileSystem provider only.") { FilePath = path };
        }
    }
}
