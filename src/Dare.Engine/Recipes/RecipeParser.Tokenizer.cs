using Dare.Engine.Merge;
using YamlDotNet.RepresentationModel;

namespace Dare.Engine.Recipes;

/// <summary>A recipe's output vocabulary as written: tokenizer_source, or mergekit's tokenizer: section. Model references stay as the user wrote them.</summary>
public sealed record RecipeTokenizer(TokenizerSourceKind Kind, string? Model, RecipeLocation Location)
{
    public int? PadToMultipleOf { get; init; }

    /// <summary>Per-token overrides; each source's model (null for zeros) as written.</summary>
    public IReadOnlyDictionary<string, (TokenEmbeddingSource Source, bool Force, RecipeLocation Location)> Tokens { get; init; } =
        new Dictionary<string, (TokenEmbeddingSource, bool, RecipeLocation)>(StringComparer.Ordinal);

    /// <summary>True for mergekit's tokenizer: section (written back in that form).</summary>
    public bool IsSection { get; init; }

    /// <summary>The value of tokenizer_source / tokenizer.source.</summary>
    public string SourceText => Kind switch { TokenizerSourceKind.Base => "base", TokenizerSourceKind.Union => "union", _ => Model! };
}

public static partial class RecipeParser
{
    private static readonly string[] TokenizerKeys = { "source", "pad_to_multiple_of", "tokens" };
    private static readonly string[] TokenKeys = { "source", "force" };
    private static readonly string[] TokenSourceKeys = { "kind", "model", "token", "token_id" };

    private static RecipeTokenizer ParseTokenizerSource(YamlNode node, string path, Context context)
    {
        var location = context.At(node, path);
        var text = RequireString(node, location, context);
        return text switch
        {
            "base" => new RecipeTokenizer(TokenizerSourceKind.Base, null, location),
            "union" => new RecipeTokenizer(TokenizerSourceKind.Union, null, location),
            _ => new RecipeTokenizer(TokenizerSourceKind.Model, text, location),
        };
    }

    /// <summary>mergekit's tokenizer: { source, pad_to_multiple_of, tokens: { token: { source, force } } }.</summary>
    private static RecipeTokenizer ParseTokenizerSection(YamlNode node, string path, Context context)
    {
        var map = RequireMapping(node, path, context, "a tokenizer section");
        var keys = ReadKeys(map, path, context, TokenizerKeys, new Dictionary<string, string>());
        var result = keys.TryGetValue("source", out var source) && !IsNull(source.Value)
            ? ParseTokenizerSource(source.Value, Join(path, "source"), context)
            : new RecipeTokenizer(TokenizerSourceKind.Union, null, context.At(node, path)); // mergekit's default source
        int? pad = null;
        if (keys.TryGetValue("pad_to_multiple_of", out var padEntry) && !IsNull(padEntry.Value))
        {
            var padLocation = context.At(padEntry.Value, Join(path, "pad_to_multiple_of"));
            var value = RequireInteger(padEntry.Value, padLocation, context);
            if (value < 1 || value > 1 << 20) throw Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, padLocation, $"must be a whole number from 1 to {1 << 20}; it is {value}.");
            pad = (int)value;
        }
        var tokens = new Dictionary<string, (TokenEmbeddingSource, bool, RecipeLocation)>(StringComparer.Ordinal);
        if (keys.TryGetValue("tokens", out var tokensEntry) && !IsNull(tokensEntry.Value))
        {
            var tokensPath = Join(path, "tokens");
            foreach (var (key, value) in RequireMapping(tokensEntry.Value, tokensPath, context, "a map of tokens").Children)
            {
                var token = RequireString(key, context.At(key, tokensPath), context);
                var tokenPath = Join(tokensPath, token);
                var tokenKeys = ReadKeys(RequireMapping(value, tokenPath, context, "a token's settings"), tokenPath, context, TokenKeys, new Dictionary<string, string>());
                var force = tokenKeys.TryGetValue("force", out var forceEntry) && !IsNull(forceEntry.Value)
                    && RequireBool(forceEntry.Value, context.At(forceEntry.Value, Join(tokenPath, "force")), context);
                if (!tokenKeys.TryGetValue("source", out var sourceEntry) || IsNull(sourceEntry.Value))
                {
                    throw Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, context.At(value, tokenPath), "needs a 'source:' (a model, or { kind: zero }, or { kind: model_token, model, token | token_id }).");
                }
                tokens[token] = (ParseTokenSource(sourceEntry.Value, Join(tokenPath, "source"), context), force, context.At(value, tokenPath));
            }
        }
        return result with { PadToMultipleOf = pad, Tokens = tokens, IsSection = true };
    }

    private static TokenEmbeddingSource ParseTokenSource(YamlNode node, string path, Context context)
    {
        var location = context.At(node, path);
        if (node is YamlScalarNode) return new TokenEmbeddingSource(RequireString(node, location, context));
        var keys = ReadKeys(RequireMapping(node, path, context, "a token source"), path, context, TokenSourceKeys, new Dictionary<string, string>());
        string? Text(string key) => keys.TryGetValue(key, out var entry) && !IsNull(entry.Value) ? RequireString(entry.Value, context.At(entry.Value, Join(path, key)), context) : null;
        switch (Text("kind"))
        {
            case "zero":
                return TokenEmbeddingSource.Zeros;
            case "model_token":
                var model = Text("model") ?? throw Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, location, "kind: model_token needs a 'model:'.");
                int? id = keys.TryGetValue("token_id", out var idEntry) && !IsNull(idEntry.Value)
                    ? (int)RequireInteger(idEntry.Value, context.At(idEntry.Value, Join(path, "token_id")), context) : null;
                var token = Text("token");
                if ((id is null) == (token is null)) throw Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, location, "kind: model_token needs exactly one of 'token:' and 'token_id:'.");
                return new TokenEmbeddingSource(model, Token: token, TokenId: id);
            default:
                throw Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, location, "must be a model, { kind: zero } or { kind: model_token, model, token | token_id }.");
        }
    }

    private static GradientOutsideLayers ParseGradientOutsideLayers(YamlNode node, string path, Context context)
    {
        var location = context.At(node, path);
        return RequireString(node, location, context) switch
        {
            "zero" => GradientOutsideLayers.Zero,
            "legacy" => GradientOutsideLayers.EmbeddingsFirstOthersLast,
            var other => throw Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, location,
                $"'{other}' is not a gradient rule: 'zero' (mergekit 0.1.4: t = 0 for every tensor outside the layers) or 'legacy' (before mergekit #534: the final norm and head at t = 1)."),
        };
    }
}
