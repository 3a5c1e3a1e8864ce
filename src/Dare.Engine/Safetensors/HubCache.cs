using System.Text.RegularExpressions;

namespace Dare.Engine.Safetensors;

/// <summary>
/// Resolves Hugging Face model ids (<c>org/name</c>, <c>org/name@revision</c>) to a snapshot folder of the local
/// Hugging Face cache, offline: HF_HUB_CACHE, else HF_HOME/hub, else XDG_CACHE_HOME/huggingface/hub or
/// ~/.cache/huggingface/hub. A cached repository is <c>models--org--name</c> with <c>refs/&lt;branch&gt;</c> holding a
/// commit and <c>snapshots/&lt;commit&gt;</c> the files. Nothing is downloaded.
/// </summary>
public static partial class HubCache
{
    [GeneratedRegex(@"^(?<org>[A-Za-z0-9][A-Za-z0-9._-]*)/(?<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:@(?<revision>[A-Za-z0-9._/-]+))?$")]
    private static partial Regex IdPattern();

    /// <summary>Whether <paramref name="text"/> has the form of a model id (it may still be a local relative path).</summary>
    public static bool LooksLikeId(string text) => IdPattern().IsMatch(text) && !text.Contains("..", StringComparison.Ordinal);

    /// <summary>The cache folders searched, in order (existing or not).</summary>
    public static IReadOnlyList<string> Folders()
    {
        var folders = new List<string>();
        void Add(string? folder)
        {
            if (!string.IsNullOrEmpty(folder) && !folders.Contains(folder)) folders.Add(folder);
        }
        Add(Environment.GetEnvironmentVariable("HF_HUB_CACHE"));
        if (Environment.GetEnvironmentVariable("HF_HOME") is { Length: > 0 } home) Add(Path.Combine(home, "hub"));
        if (Environment.GetEnvironmentVariable("XDG_CACHE_HOME") is { Length: > 0 } xdg) Add(Path.Combine(xdg, "huggingface", "hub"));
        Add(Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "huggingface", "hub"));
        return folders;
    }

    /// <summary>The snapshot folder of <paramref name="id"/>; a PathNotFound error naming the folders searched when it is not cached.</summary>
    public static string Resolve(string id)
    {
        var match = IdPattern().Match(id);
        if (!match.Success) throw new ArgumentException($"'{id}' is not a model id.", nameof(id));
        var repository = $"models--{match.Groups["org"].Value}--{match.Groups["name"].Value}";
        var revision = match.Groups["revision"].Success ? match.Groups["revision"].Value : "main";
        var searched = Folders();
        foreach (var folder in searched)
        {
            var root = Path.Combine(folder, repository);
            if (!Directory.Exists(root)) continue;
            var commit = revision;
            var reference = Path.Combine(root, "refs", revision);
            if (RegularFile.Check(reference, "cache reference").Kind == FileKind.Regular) commit = File.ReadAllText(reference).Trim();
            var snapshot = Path.Combine(root, "snapshots", commit);
            if (commit.Length > 0 && !commit.Contains("..", StringComparison.Ordinal) && Directory.Exists(snapshot)) return snapshot;
            throw new DareException(DareErrorId.PathNotFound, DareErrorKind.ObjectNotFound,
                $"'{id}' is in the Hugging Face cache '{root}', but not at revision '{revision}' (no snapshots/{commit}); Dare reads the cache offline, so download that revision first.") { FilePath = root };
        }
        throw new DareException(DareErrorId.PathNotFound, DareErrorKind.ObjectNotFound,
            $"'{id}' is neither a local folder nor in the Hugging Face cache (searched {string.Join(", ", searched.Select(f => $"'{f}'"))} for {repository}); Dare reads models offline, so download it first (for example with huggingface-cli download {match.Groups["org"].Value}/{match.Groups["name"].Value}).") { FilePath = id };
    }
}
