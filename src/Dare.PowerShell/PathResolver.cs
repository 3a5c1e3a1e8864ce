using System.Management.Automation;
using Dare.Engine;

namespace Dare.PowerShell;

/// <summary>Resolves -Path (wildcards) and -LiteralPath through the PowerShell provider; only FileSystem paths are accepted.</summary>
internal static class PathResolver
{
    /// <summary>Existing file-system paths for the given PowerShell paths. Throws DareException for missing or non-FileSystem paths.</summary>
    public static List<string> ResolveExisting(SessionState session, string path, bool literal)
    {
        ProviderInfo provider;
        List<string> resolved;
        try
        {
            if (literal)
            {
                resolved = new List<string> { session.Path.GetUnresolvedProviderPathFromPSPath(path, out provider, out _) };
            }
            else
            {
                resolved = session.Path.GetResolvedProviderPathFromPSPath(path, out provider).ToList();
            }
        }
        catch (ItemNotFoundException ex)
        {
            throw new DareException(DareErrorId.PathNotFound, DareErrorKind.ObjectNotFound, $"Cannot find path '{path}' because it does not exist.", ex) { FilePath = path };
        }
        catch (Exception ex) when (ex is System.Management.Automation.DriveNotFoundException or ProviderNotFoundException)
        {
            throw new DareException(DareErrorId.NotFileSystemPath, DareErrorKind.InvalidArgument, $"'{path}' is not a file-system path: {ex.Message}", ex) { FilePath = path };
        }
        RequireFileSystem(provider, path);
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

    /// <summary>A file-system path for an output that may not exist yet.</summary>
    public static string ResolveOutput(SessionState session, string path)
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
        if (!string.Equals(provider.Name, "FileSystem", StringComparison.OrdinalIgnoreCase))
        {
            throw new DareException(DareErrorId.NotFileSystemPath, DareErrorKind.InvalidArgument,
                $"'{path}' is on the {provider.Name} provider; Dare reads and writes models on the FileSystem provider only.") { FilePath = path };
        }
    }
}
