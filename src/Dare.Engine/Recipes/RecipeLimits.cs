using YamlDotNet.Core;
using YamlDotNet.Core.Events;

namespace Dare.Engine.Recipes;

/// <summary>
/// Bounds on what a recipe may be, enforced before anything recursive touches it: YamlDotNet's node tree, our
/// walkers and PowerShell's object conversion all recurse, and a stack overflow ends the whole host (it cannot be
/// caught). A real recipe nests about 7 levels deep and is a few KB long.
/// </summary>
public static class RecipeLimits
{
    /// <summary>Deepest nesting of lists and mappings (or hashtables, objects and arrays) a recipe may have.</summary>
    public const int MaxDepth = 64;

    /// <summary>Longest recipe text, in characters (files: in bytes).</summary>
    public const int MaxTextLength = 4 * 1024 * 1024;

    /// <summary>Reads a recipe file, refusing one longer than <see cref="MaxTextLength"/> before reading it all.</summary>
    public static string ReadFile(string path)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        if (stream.CanSeek && stream.Length > MaxTextLength) throw TooLong(path, $"{stream.Length} bytes");
        using var reader = new StreamReader(stream);
        // The length may not be known (or may grow while reading): read at most one character past the limit.
        var buffer = new char[MaxTextLength + 1];
        var read = 0;
        int count;
        while (read < buffer.Length && (count = reader.Read(buffer, read, buffer.Length - read)) > 0) read += count;
        if (read > MaxTextLength) throw TooLong(path, "more characters");
        return new string(buffer, 0, read);
    }

    /// <summary>Refuses text longer than <see cref="MaxTextLength"/> (e.g. -Yaml, or lines piped in, counted as they come).</summary>
    public static void CheckLength(long length, string source)
    {
        if (length > MaxTextLength) throw TooLong(source, $"{length} characters");
    }

    /// <summary>
    /// Walks the YAML event stream (YamlDotNet's parser keeps its own stack, so this cannot overflow) and refuses
    /// nesting deeper than <see cref="MaxDepth"/>, naming where it happens, before a node tree is built.
    /// </summary>
    public static void CheckYamlDepth(string yaml, string source)
    {
        var parser = new Parser(new StringReader(yaml));
        var depth = 0;
        while (parser.MoveNext())
        {
            switch (parser.Current)
            {
                case MappingStart or SequenceStart:
                    if (++depth > MaxDepth)
                    {
                        var start = parser.Current!.Start;
                        throw RecipeParser.Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, new RecipeLocation(source, (int)start.Line, (int)start.Column, ""),
                            $"nests lists and mappings more than {MaxDepth} levels deep; a recipe needs fewer than 10.");
                    }
                    break;
                case MappingEnd or SequenceEnd:
                    depth--;
                    break;
            }
        }
    }

    private static DareException TooLong(string source, string size) =>
        new(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData,
            $"{source}: is too long ({size}); a recipe may be at most {MaxTextLength / (1024 * 1024)} MB. Recipes are a few KB: give per-tensor values with filters or gradients rather than one entry per tensor.")
        { FilePath = source };
}

/// <summary>
/// Guards a walk over recipe objects (hashtables, objects, lists): refuses nesting deeper than
/// <see cref="RecipeLimits.MaxDepth"/> and containers that contain themselves, naming the key path.
/// </summary>
public sealed class RecipeObjectGuard
{
    private readonly List<object> _open = new();
    private readonly string _source;

    public RecipeObjectGuard(string source) => _source = source;

    /// <summary>Call before walking into <paramref name="container"/> at <paramref name="keyPath"/>; pair with <see cref="Exit"/>.</summary>
    public void Enter(object container, string keyPath)
    {
        var location = new RecipeLocation(_source, 0, 0, keyPath);
        if (_open.Any(o => ReferenceEquals(o, container)))
        {
            throw RecipeParser.Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, location,
                "contains itself (a cycle: this hashtable, object or list is one of its own ancestors); a recipe must be a tree.");
        }
        if (_open.Count >= RecipeLimits.MaxDepth)
        {
            throw RecipeParser.Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, location,
                $"nests hashtables, objects and lists more than {RecipeLimits.MaxDepth} levels deep; a recipe needs fewer than 10.");
        }
        _open.Add(container);
    }

    public void Exit() => _open.RemoveAt(_open.Count - 1);

    public static string Key(string path, object? key) => path.Length == 0 ? $"{key}" : $"{path}.{key}";

    public static string Index(string path, int index) => $"{path}[{index}]";
}
