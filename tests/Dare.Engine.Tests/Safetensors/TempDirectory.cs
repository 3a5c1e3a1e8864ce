namespace Dare.Engine.Tests.Safetensors;

/// <summary>A fresh folder under the system temp path, deleted (recursively) on dispose.</summary>
public sealed class TempDirectory : IDisposable
{
    public TempDirectory()
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "dare-tests-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

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
