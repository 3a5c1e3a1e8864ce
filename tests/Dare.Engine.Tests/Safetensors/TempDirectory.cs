namespace Dare.Engine.Tests.Safetensors;

/// <summary>A fresh folder under the system temp path (or <paramref name="root"/>), deleted (recursively) on dispose.</summary>
public sealed class TempDirectory(string? root = null) : IDisposable
{
    public string Path { get; } = Create(root ?? System.IO.Path.GetTempPath());

    private static string Create(string root)
    {
        var path = System.IO.Path.Combine(root, "dare-tests-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(path);
        return path;
    }

    /// <summary>A path inside the folder (nothing is created).</summary>
    public string this[string relative] => System.IO.Path.Combine(Path, relative);

    /// <summary>Creates (and returns) a sub-folder.</summary>
    public string CreateFolder(string relative)
    {
        var folder = this[relative];
        Directory.CreateDirectory(folder);
        return folder;
    }

    public void Dispose()
    {
        try
        {
            if (Directory.Exists(Path)) Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
            // Best effort: a temp folder left behind must not fail a test.
        }
    }
}
