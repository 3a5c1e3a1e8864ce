using YamlDotNet.Core;
using YamlDotNet.Core.Events;

namespace Dare.Engine.Recipes;

/// <summary>
/// Bounds on what a recipe may be, enforced before anything recursive touches it: YamlDotNet's node tree, our
/// walkers and PowerShell's object conversion all recurse, and a stack overflow ends the whole host (it cannot be
/// caught), and aliases or shared objects can make a small recipe stand for billions of values. A real recipe
/// nests about 7 levels deep, holds a few hundred values and is a few KB long.
/// </summary>
public static class RecipeLimits
{
    /// <summary>Deepest nesting of lists and mappings (or hashtables, objects and arrays) a recipe may have.</summary>
    public const int MaxDepth = 64;

    /// <summary>Longest recipe text, in characters (files: in bytes).</summary>
    public const int MaxTextLength = 4 * 1024 * 1024;

    /// <summary>Most values (scalars, lists, mappings; an alias counts as what it repeats) a recipe may hold.</summary>
    public const long MaxValues = 100_000;

    /// <summary>Reads a recipe file, refusing one longer than <see cref="MaxTextLength"/> before reading it all.</summary>
    public static string ReadFile(string path)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        if (stream.CanSeek && stream.Length > MaxTextLength) throw TooLong(path, $"{stream.Length} bytes");
        using var reader = new StreamReader(stream);
        // The length may not be known (or may grow while reading): stop as soon as the text is past the limit.
        var text = new System.Text.StringBuilder();
        var buffer = new char[64 * 1024];
        int count;
        while ((count = reader.Read(buffer, 0, buffer.Length)) > 0)
        {
            text.Append(buffer, 0, count);
            if (text.Length > MaxTextLength) throw TooLong(path, $"over {MaxTextLength} characters");
        }
        return text.ToString();
    }

    /// <summary>Refuses text longer than <see cref="MaxTextLength"/> (e.g. -Yaml, or lines piped in, counted as they come).</summary>
    public static void CheckLength(long length, string source)
    {
        if (length > MaxTextLength) throw TooLong(source, $"{length} characters");
    }

    /// <summary>
    /// Walks the YAML event stream (YamlDotNet's parser keeps its own stack, so this cannot overflow) before a node
    /// tree is built, and refuses, naming the line and column: nesting deeper than <see cref="MaxDepth"/>; an alias
    /// inside the list or mapping it names (a cycle: YamlDotNet hashes such keys forever); a mapping key that is a
    /// list or mapping (never a recipe key; hashing one is where cycles and alias bombs bite); and more than
    /// <see cref="MaxValues"/> values once aliases are expanded (a few KB of aliases can stand for billions).
    /// </summary>
    public static void CheckYamlStructure(string yaml, string source)
    {
        var parser = new Parser(new StringReader(yaml));
        var open = new Stack<OpenCollection>();
        var sizes = new Dictionary<string, long>(StringComparer.Ordinal); // expanded values per finished anchor
        long values = 0;
        while (parser.MoveNext())
        {
            var current = parser.Current!;
            Exception Refuse(string message) => RecipeParser.Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData,
                new RecipeLocation(source, (int)current.Start.Line, (int)current.Start.Column, ""), message);
            switch (current)
            {
                case DocumentStart:
                    sizes.Clear();
                    break;
                case MappingEnd or SequenceEnd:
                    var closed = open.Pop();
                    if (closed.Anchor is { } name) sizes[name] = values - closed.ValuesBefore;
                    break;
                case AnchorAlias alias:
                    var target = alias.Value.Value;
                    if (open.Any(c => c.Anchor == target)) throw Refuse($"uses the alias *{target} inside the list or mapping it names (a cycle).");
                    var size = sizes.GetValueOrDefault(target, 1);
                    if (open.TryPeek(out var parent) && parent.TakeKey() && size > 1) throw Refuse("has a mapping key that is a list or mapping; recipe keys are plain text.");
                    values += size;
                    break;
                case NodeEvent node:
                    if (open.TryPeek(out var container) && container.TakeKey() && node is not Scalar) throw Refuse("has a mapping key that is a list or mapping; recipe keys are plain text.");
                    values++;
                    var anchor = node.Anchor.IsEmpty ? null : node.Anchor.Value;
                    if (node is Scalar && anchor is not null) sizes[anchor] = 1;
                    if (node is MappingStart or SequenceStart)
                    {
                        if (open.Count >= MaxDepth) throw Refuse($"nests lists and mappings more than {MaxDepth} levels deep; a recipe needs fewer than 10.");
                        open.Push(new OpenCollection(node is MappingStart, anchor, values - 1));
                    }
                    break;
            }
            if (values > MaxValues) throw Refuse($"holds more than {MaxValues:N0} values (aliases count as the values they repeat); a recipe needs a few hundred.");
        }
    }

    /// <summary>A list or mapping not yet closed; a mapping alternates between expecting a key and a value.</summary>
    private sealed class OpenCollection
    {
        private readonly bool _isMapping;
        private bool _expectingKey = true;

        public OpenCollection(bool isMapping, string? anchor, long valuesBefore)
        {
            _isMapping = isMapping;
            Anchor = anchor;
            ValuesBefore = valuesBefore;
        }

        public string? Anchor { get; }
        public long ValuesBefore { get; }

        /// <summary>Called for each node inside: whether it is a mapping key.</summary>
        public bool TakeKey()
        {
            if (!_isMapping) return false;
            var isKey = _expectingKey;
            _expectingKey = !_expectingKey;
            return isKey;
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
    private long _values;

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

    /// <summary>
    /// Call for every value walked. The same object may appear many times (that is no cycle), so a few objects can
    /// stand for billions of values; the walk stops at <see cref="RecipeLimits.MaxValues"/>.
    /// </summary>
    public void Count(string keyPath)
    {
        if (++_values <= RecipeLimits.MaxValues) return;
        throw RecipeParser.Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, new RecipeLocation(_source, 0, 0, keyPath),
            $"is past the recipe's {RecipeLimits.MaxValues:N0}th value (objects used several times count each time); a recipe needs a few hundred.");
    }

    public static string Key(string path, object? key) => path.Length == 0 ? $"{key}" : $"{path}.{key}";

    public static string Index(string path, int index) => $"{path}[{index}]";
}
