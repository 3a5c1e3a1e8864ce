using System.Collections;
using System.Globalization;
using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using YamlDotNet.Core;
using YamlDotNet.RepresentationModel;

namespace Dare.Engine.Recipes;

/// <summary>
/// Reads mergekit-style YAML recipes (with Dare's extensions) into <see cref="MergeRecipe"/>s. It walks YamlDotNet's
/// node tree rather than deserializing into classes, so every error can name the key, the file, the line and the
/// column. This checks the schema (keys, types, where each key may appear); <see cref="RecipePlanner"/> checks
/// what needs the models or the method (ranges, paths, architectures).
/// </summary>
public static partial class RecipeParser
{
    internal static readonly string[] TopLevelKeys =
        { "merge_method", "base_model", "models", "slices", "parameters", "dtype", "out_dtype", "tokenizer_source", "tokenizer", "gradient_outside_layers", "random_seed", "name", "output", "device", InputFingerprints.Key };

    /// <summary>mergekit keys Dare knows but cannot honour: an error that says so, not an "unknown key".</summary>
    internal static readonly Dictionary<string, string> UnsupportedTopLevelKeys = new()
    {
        ["modules"] = "multi-module merges are not supported; give whole models under 'models:'",
        ["chat_template"] = "chat templates are not written; the base model's chat_template.json/.jinja, if any, is copied",
    };

    internal static readonly string[] ModelKeys = { "model", "lora", "parameters" };
    internal static readonly string[] OutputKeys = { "path", "max_shard_size", "delta_only" };
    internal static readonly string[] FilterEntryKeys = { "filter", "value", "match" };

    /// <summary>Reads a recipe file; relative paths in it resolve against the file's folder.</summary>
    public static RecipeBatch ParseFile(string path)
    {
        var full = Path.GetFullPath(path);
        if (!File.Exists(full))
        {
            throw new DareException(DareErrorId.PathNotFound, DareErrorKind.ObjectNotFound, $"Cannot find the recipe file '{full}'.") { FilePath = full };
        }
        string text;
        try
        {
            text = RecipeLimits.ReadFile(full);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new DareException(DareErrorId.RecipeInvalid, DareErrorKind.ReadError, $"Cannot read the recipe file '{full}': {ex.Message}", ex) { FilePath = full };
        }
        return ParseText(text, Path.GetDirectoryName(full)!, full);
    }

    /// <summary>Reads recipe YAML text; relative paths resolve against <paramref name="baseDirectory"/>.</summary>
    public static RecipeBatch ParseText(string yaml, string baseDirectory, string source = "YAML text")
    {
        RecipeLimits.CheckLength(yaml.Length, source);
        var stream = new YamlStream();
        try
        {
            // Structure first: building the node tree recurses once per level and hashes keys, and a stack overflow ends the host.
            RecipeLimits.CheckYamlStructure(yaml, source);
            stream.Load(new StringReader(yaml));
        }
        catch (YamlException ex)
        {
            var location = new RecipeLocation(source, (int)ex.Start.Line, (int)ex.Start.Column, "");
            throw Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, location, $"is not valid YAML: {Innermost(ex).Message}", ex);
        }
        catch (Exception ex) when (ex is ArgumentException or InvalidOperationException) // e.g. a repeated key, or some unclosed flow collections
        {
            throw Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, new RecipeLocation(source, 0, 0, ""), $"is not valid YAML: {ex.Message}", ex);
        }
        var roots = stream.Documents.Select(d => d.RootNode).Where(r => !IsNull(r)).ToList();
        return Parse(roots, new Context(source, hasMarks: true), baseDirectory);
    }

    /// <summary>
    /// Reads a recipe given as objects (dictionaries, lists, strings, numbers, booleans), e.g. a PowerShell hashtable;
    /// a list at the top is a batch. Relative paths resolve against <paramref name="baseDirectory"/>.
    /// </summary>
    public static RecipeBatch ParseObject(object? recipe, string baseDirectory, string source = "recipe object")
    {
        return Parse(RecipeObjectReader.Roots(recipe, source), new Context(source, hasMarks: false), baseDirectory);
    }

    private static RecipeBatch Parse(List<YamlNode> roots, Context context, string baseDirectory)
    {
        if (roots.Count == 0)
        {
            throw Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, new RecipeLocation(context.Source, 0, 0, ""), "is empty; a recipe needs at least merge_method and models.");
        }
        var recipes = new List<MergeRecipe>();
        var mistakes = context.Diagnostics;
        for (var i = 0; i < roots.Count; i++)
        {
            // Positions in a file already say which document; an object batch needs the index in the key path.
            var prefix = roots.Count > 1 && !context.HasMarks ? $"[{i}]" : "";
            var recipe = mistakes.Try(() => ParseRecipe(roots[i], i, prefix, context, baseDirectory), null);
            if (recipe is not null) recipes.Add(recipe);
        }
        if (roots.Count > 1)
        {
            foreach (var recipe in recipes.Where(r => r.Name is null))
            {
                mistakes.Add(Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, recipe.Location,
                    "has no 'name:'. In a file of several recipes (a batch) each needs a name, so later ones can use its output as a model."));
            }
            foreach (var duplicate in recipes.Where(r => r.Name is not null).GroupBy(r => r.Name, StringComparer.Ordinal).Where(g => g.Count() > 1))
            {
                mistakes.Add(Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, duplicate.Last().Location, $"repeats the name '{duplicate.Key}'; recipe names in a batch must be unique."));
            }
        }
        mistakes.ThrowIfAny();
        return new RecipeBatch { Source = context.Source, BaseDirectory = Path.GetFullPath(baseDirectory), Recipes = recipes, Warnings = context.Warnings };
    }

    private static MergeRecipe ParseRecipe(YamlNode root, int index, string path, Context context, string baseDirectory)
    {
        // Each key is checked on its own (mistakes are collected, see RecipeDiagnostics); a recipe with any is never run.
        var mistakes = context.Diagnostics;
        var documentLocation = context.At(root, path);
        var map = RequireMapping(root, path, context, "a recipe");
        var keys = ReadKeys(map, path, context, TopLevelKeys, UnsupportedTopLevelKeys);

        var method = MergeMethods.FindRecipeForm("linear")!;
        var methodLocation = documentLocation;
        if (!keys.TryGetValue("merge_method", out var methodEntry))
        {
            if (!context.Suggested.Contains(Join(path, "merge_method")))
            {
                mistakes.Add(Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, documentLocation, $"has no 'merge_method:' (one of {string.Join(", ", MethodNames)})."));
            }
        }
        else
        {
            methodLocation = context.At(methodEntry.Value, Join(path, "merge_method"));
            method = mistakes.Try(() => ParseMethod(methodEntry.Value, methodLocation, context), method);
        }

        var models = new List<RecipeModelEntry>();
        var modelsPath = Join(path, "models");
        IReadOnlyList<RecipeSlice>? slices = null;
        if (keys.TryGetValue("slices", out var slicesEntry))
        {
            slices = mistakes.Try(() => ParseSlices(slicesEntry.Value, Join(path, "slices"), context), Array.Empty<RecipeSlice>());
            if (keys.ContainsKey("models")) mistakes.Add(Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, context.At(slicesEntry.Key, Join(path, "slices")), "and 'models:' are both given; a recipe takes one of them (as in mergekit)."));
        }
        else if (!keys.TryGetValue("models", out var modelsEntry) || IsNull(modelsEntry.Value))
        {
            if (!context.Suggested.Contains(modelsPath)) mistakes.Add(Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, documentLocation, "has no 'models:' list (or 'slices:')."));
        }
        else if (modelsEntry.Value is not YamlSequenceNode modelsNode || modelsNode.Children.Count == 0)
        {
            mistakes.Add(Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, context.At(modelsEntry.Value, modelsPath), "must be a non-empty list of '- model: <path>' entries."));
        }
        else
        {
            models = modelsNode.Children.Select((node, i) => mistakes.Try(() => ParseModel(node, $"{modelsPath}[{i}]", context), null))
                .OfType<RecipeModelEntry>().ToList();
        }

        string? Text(string key) => keys.TryGetValue(key, out var entry) && !IsNull(entry.Value)
            ? mistakes.Try(() => RequireString(entry.Value, context.At(entry.Value, Join(path, key)), context), null)
            : null;
        RecipeLocation? LocationOf(string key) => keys.TryGetValue(key, out var entry) ? context.At(entry.Value, Join(path, key)) : null;

        RecipeTokenizer? tokenizer = null;
        if (keys.TryGetValue("tokenizer_source", out var sourceEntry) && !IsNull(sourceEntry.Value))
        {
            tokenizer = mistakes.Try(() => ParseTokenizerSource(sourceEntry.Value, Join(path, "tokenizer_source"), context), null);
        }
        if (keys.TryGetValue("tokenizer", out var tokenizerEntry) && !IsNull(tokenizerEntry.Value))
        {
            if (tokenizer is not null)
            {
                mistakes.Add(Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, context.At(tokenizerEntry.Value, Join(path, "tokenizer")),
                    "and tokenizer_source are both given; use one (tokenizer: { source: ... } holds the same choice)."));
            }
            else tokenizer = mistakes.Try(() => ParseTokenizerSection(tokenizerEntry.Value, Join(path, "tokenizer"), context), null);
        }
        var gradientRule = keys.TryGetValue("gradient_outside_layers", out var ruleEntry) && !IsNull(ruleEntry.Value)
            ? mistakes.Try(() => ParseGradientOutsideLayers(ruleEntry.Value, Join(path, "gradient_outside_layers"), context), GradientOutsideLayers.Zero)
            : GradientOutsideLayers.Zero;

        var name = Text("name");
        var parameters = keys.TryGetValue("parameters", out var globalEntry)
            ? mistakes.Try(() => ParseParameters(globalEntry.Value, Join(path, "parameters"), context, perModel: false), RecipeParameters.Empty)
            : RecipeParameters.Empty;

        long? seed = null;
        if (keys.TryGetValue("random_seed", out var seedEntry) && !IsNull(seedEntry.Value))
        {
            seed = mistakes.Try<long?>(() => RequireInteger(seedEntry.Value, context.At(seedEntry.Value, Join(path, "random_seed")), context), null);
        }

        var (outputPath, outputLocation, maxShard, deltaOnly) = keys.TryGetValue("output", out var outputEntry)
            ? mistakes.Try(() => ParseOutput(outputEntry.Value, Join(path, "output"), context, baseDirectory), (null, null, null, false))
            : (null, null, null, false);
        var dtype = mistakes.Try(() => ParseDType(Text("dtype"), LocationOf("dtype"), compute: true), null);
        var outDType = mistakes.Try(() => ParseDType(Text("out_dtype"), LocationOf("out_dtype"), compute: false), null);
        var device = mistakes.Try(() => ParseDevice(Text("device"), LocationOf("device")), null);

        return new MergeRecipe
        {
            Index = index,
            Name = name,
            Method = method,
            Location = documentLocation,
            MethodLocation = methodLocation,
            BaseModel = Text("base_model"),
            BaseModelLocation = LocationOf("base_model"),
            Models = models,
            Slices = slices,
            Parameters = parameters,
            DType = dtype,
            OutDType = outDType,
            RandomSeed = seed,
            OutputPath = outputPath,
            OutputPathLocation = outputLocation,
            MaxShardSize = maxShard,
            DeltaOnly = deltaOnly,
            Tokenizer = tokenizer,
            GradientOutsideLayers = gradientRule,
            Device = device,
            RecordedInputs = keys.TryGetValue(InputFingerprints.Key, out var inputsEntry) && !IsNull(inputsEntry.Value)
                ? mistakes.Try(() => ParseRecordedInputs(inputsEntry.Value, Join(path, InputFingerprints.Key), context), null) : null,
        };
    }

    private static RecipeForm ParseMethod(YamlNode node, RecipeLocation location, Context context)
    {
        var methodName = RequireString(node, location, context);
        if (MergeMethods.FindRecipeForm(methodName) is { } method) return method;
        var why = UnsupportedMethods.Contains(methodName)
            ? $"mergekit's '{methodName}' is not supported by Dare."
            : $"'{methodName}' is not a merge method.{Suggestion(methodName, MethodNames)}";
        throw Error(DareErrorId.RecipeUnsupported, DareErrorKind.NotImplemented, location,
            $"{why} Dare merges with: {string.Join(", ", MethodNames)}.");
    }

    private static SafetensorsDType? ParseDType(string? text, RecipeLocation? location, bool compute)
    {
        if (text is null) return null;
        var dtype = text switch
        {
            "float32" => SafetensorsDType.F32,
            "bfloat16" => SafetensorsDType.BF16,
            "float16" => SafetensorsDType.F16,
            _ => (SafetensorsDType?)null,
        };
        if (dtype is null)
        {
            var why = compute ? "Dare computes in float32 and writes bfloat16, float16 or float32" : "Dare writes bfloat16, float16 or float32";
            throw Error(DareErrorId.RecipeUnsupported, DareErrorKind.NotImplemented, location!, $"'{text}' is not supported: {why}.");
        }
        return dtype;
    }

    private static RecipeModelEntry? ParseModel(YamlNode node, string path, Context context)
    {
        // mergekit also accepts a bare string here; treat it as '- model: <string>'.
        if (node is YamlScalarNode && !IsNull(node))
        {
            return WithLora(new RecipeModelEntry { Model = RequireString(node, context.At(node, path), context), Location = context.At(node, path) });
        }
        var map = RequireMapping(node, path, context, "a model entry ('- model: <path>')");
        var keys = ReadKeys(map, path, context, ModelKeys, new Dictionary<string, string>());
        if (!keys.TryGetValue("model", out var modelEntry) || IsNull(modelEntry.Value))
        {
            // Misspelt: reported as such already; the entry is left out (the recipe does not run).
            if (context.Suggested.Contains(Join(path, "model"))) return null;
            throw Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, context.At(node, path), "has no 'model:' path.");
        }
        var location = context.At(modelEntry.Value, Join(path, "model"));
        var entry = new RecipeModelEntry
        {
            Model = RequireString(modelEntry.Value, location, context),
            Location = location,
            Parameters = keys.TryGetValue("parameters", out var p) ? ParseParameters(p.Value, Join(path, "parameters"), context, perModel: true) : RecipeParameters.Empty,
        };
        if (!keys.TryGetValue("lora", out var loraEntry) || IsNull(loraEntry.Value)) return WithLora(entry);
        var loraLocation = context.At(loraEntry.Value, Join(path, "lora"));
        if (entry.Model.Contains('+'))
        {
            throw Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, loraLocation, "gives an adapter, and so does the model's '+'; give it once.");
        }
        return new RecipeModelEntry
        {
            Model = entry.Model, Location = entry.Location, Parameters = entry.Parameters,
            Lora = RequireString(loraEntry.Value, loraLocation, context), LoraLocation = loraLocation,
        };
    }

    private static (string?, RecipeLocation?, long?, bool) ParseOutput(YamlNode node, string path, Context context, string baseDirectory)
    {
        if (IsNull(node)) return (null, null, null, false);
        var map = RequireMapping(node, path, context, "an output block ({ path, max_shard_size, delta_only })");
        var keys = ReadKeys(map, path, context, OutputKeys, new Dictionary<string, string>());
        string? outputPath = null;
        RecipeLocation? outputLocation = null;
        long? maxShard = null;
        var deltaOnly = false;
        if (keys.TryGetValue("path", out var pathEntry) && !IsNull(pathEntry.Value))
        {
            outputLocation = context.At(pathEntry.Value, Join(path, "path"));
            outputPath = Path.GetFullPath(Path.Combine(baseDirectory, RequireString(pathEntry.Value, outputLocation, context)));
        }
        if (keys.TryGetValue("max_shard_size", out var shardEntry) && !IsNull(shardEntry.Value))
        {
            var location = context.At(shardEntry.Value, Join(path, "max_shard_size"));
            try
            {
                maxShard = ByteSize.Parse(RequireString(shardEntry.Value, location, context));
            }
            catch (DareException ex)
            {
                throw Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, location, ex.Message, ex);
            }
        }
        if (keys.TryGetValue("delta_only", out var deltaEntry) && !IsNull(deltaEntry.Value))
        {
            deltaOnly = RequireBool(deltaEntry.Value, context.At(deltaEntry.Value, Join(path, "delta_only")), context);
        }
        return (outputPath, outputLocation, maxShard, deltaOnly);
    }

    /// <summary>The mapping's entries by key; unknown keys fail with the nearest valid key, known-unsupported ones with why.</summary>
    private static Dictionary<string, KeyValuePair<YamlNode, YamlNode>> ReadKeys(YamlMappingNode map, string path, Context context,
        string[] validKeys, Dictionary<string, string> unsupported)
    {
        var result = new Dictionary<string, KeyValuePair<YamlNode, YamlNode>>(StringComparer.Ordinal);
        foreach (var entry in map.Children)
        {
            // A bad key is recorded and skipped, so the other keys are still checked.
            if (entry.Key is not YamlScalarNode { Value: { } key })
            {
                context.Diagnostics.Add(Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, context.At(entry.Key, path), "has a key that is not plain text."));
                continue;
            }
            var location = context.At(entry.Key, Join(path, key));
            if (unsupported.TryGetValue(key, out var why))
            {
                context.Diagnostics.Add(Error(DareErrorId.RecipeUnsupported, DareErrorKind.NotImplemented, location, $"'{key}' is not supported: {why}."));
                continue;
            }
            if (!validKeys.Contains(key, StringComparer.Ordinal))
            {
                var where = path.Length == 0 ? "at the top level" : $"in '{path}'";
                // A misspelt required key is reported once, as misspelt, not also as missing.
                if (Nearest(key, validKeys) is { } nearest) context.Suggested.Add(Join(path, nearest));
                context.Diagnostics.Add(Error(DareErrorId.RecipeUnknownKey, DareErrorKind.InvalidData, location,
                    $"'{key}' is not a recipe key {where}.{Suggestion(key, validKeys)} Valid keys there: {string.Join(", ", validKeys)}."));
                continue;
            }
            result[key] = entry;
        }
        return result;
    }

    private static YamlMappingNode RequireMapping(YamlNode node, string path, Context context, string what) =>
        node as YamlMappingNode ?? throw Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, context.At(node, path), $"must be {what} (a mapping of keys to values).");

    private static string RequireString(YamlNode node, RecipeLocation location, Context context)
    {
        if (node is YamlScalarNode { Value: { } text } && !IsNull(node)) return text;
        throw Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, location, "must be a single value, not a list or mapping.");
    }

    private static double RequireNumber(YamlNode node, RecipeLocation location, Context context)
    {
        var text = RequireString(node, location, context);
        if (double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var value) && double.IsFinite(value)) return value;
        throw Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, location, $"must be a finite number, not '{text}'.");
    }

    private static long RequireInteger(YamlNode node, RecipeLocation location, Context context)
    {
        var text = RequireString(node, location, context);
        if (long.TryParse(text, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var value)) return value;
        throw Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, location, $"must be a whole number, not '{text}'.");
    }

    private static bool RequireBool(YamlNode node, RecipeLocation location, Context context)
    {
        var text = RequireString(node, location, context);
        if (TryBool(text, out var value)) return value;
        throw Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, location, $"must be true or false, not '{text}'.");
    }

    // YAML 1.1 booleans, as mergekit's PyYAML reads them.
    private static bool TryBool(string text, out bool value)
    {
        switch (text.ToLowerInvariant())
        {
            case "true" or "yes" or "on":
                value = true;
                return true;
            case "false" or "no" or "off":
                value = false;
                return true;
            default:
                value = false;
                return false;
        }
    }

    private static bool IsNull(YamlNode node) =>
        node is YamlScalarNode scalar && scalar.Style is ScalarStyle.Plain or ScalarStyle.Any && scalar.Value is null or "" or "~" or "null" or "Null" or "NULL";

    private static string Join(string path, string key) => path.Length == 0 ? key : $"{path}.{key}";

    private static Exception Innermost(Exception ex) => ex.InnerException is YamlException inner ? Innermost(inner) : ex;

    internal static DareException Error(DareErrorId id, DareErrorKind kind, RecipeLocation location, string message, Exception? inner = null) =>
        new(id, kind, $"{location}: {message}", inner) { FilePath = location.Source };

    private sealed class Context
    {
        public Context(string source, bool hasMarks)
        {
            Source = source;
            HasMarks = hasMarks;
        }

        public string Source { get; }
        public bool HasMarks { get; }
        public List<string> Warnings { get; } = new();
        public RecipeDiagnostics Diagnostics => _diagnostics ??= new RecipeDiagnostics(Source);

        /// <summary>Key paths that an unknown key was taken to be a misspelling of.</summary>
        public HashSet<string> Suggested { get; } = new(StringComparer.Ordinal);
        private RecipeDiagnostics? _diagnostics;

        public RecipeLocation At(YamlNode node, string path) =>
            HasMarks ? new RecipeLocation(Source, (int)node.Start.Line, (int)node.Start.Column, path) : new RecipeLocation(Source, 0, 0, path);
    }
}
