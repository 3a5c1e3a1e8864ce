namespace Dare.Engine.Merge;

/// <summary>Which vocabulary the output has (mergekit's tokenizer_source / tokenizer.source).</summary>
public enum TokenizerSourceKind
{
    /// <summary>The base's tokens (and its padding rows); a model's rows for tokens the base lacks are dropped.</summary>
    Base,
    /// <summary>The base's tokens plus every model's added tokens; a merged tokenizer.json is written.</summary>
    Union,
    /// <summary>One model's tokenizer (<see cref="TokenizerChoice.Model"/>).</summary>
    Model,
}

/// <summary>Where an overridden token's embedding comes from: a model's row for the token (or for another token), or zeros.</summary>
public sealed record TokenEmbeddingSource(string? Model, bool Zero = false, string? Token = null, int? TokenId = null)
{
    public static readonly TokenEmbeddingSource Zeros = new(null, Zero: true);
}

/// <summary>An entry of mergekit's tokenizer.tokens: the token's embedding source; with Force, every model takes it (its own row is ignored).</summary>
public sealed record TokenOverride(TokenEmbeddingSource Source, bool Force = false);

/// <summary>The output vocabulary of a merge. <see cref="Model"/> is a checkpoint path, as the models are.</summary>
public sealed record TokenizerChoice(TokenizerSourceKind Kind, string? Model = null)
{
    public static readonly TokenizerChoice Base = new(TokenizerSourceKind.Base);
    public static readonly TokenizerChoice Union = new(TokenizerSourceKind.Union);

    /// <summary>Rows are added (filled with the mean embedding) up to a multiple of this, as mergekit's pad_to_multiple_of.</summary>
    public int? PadToMultipleOf { get; init; }

    /// <summary>Per-token overrides by token text.</summary>
    public IReadOnlyDictionary<string, TokenOverride> Tokens { get; init; } = new Dictionary<string, TokenOverride>(StringComparer.Ordinal);

    public bool IsPlainBase => Kind == TokenizerSourceKind.Base && PadToMultipleOf is null && Tokens.Count == 0;

    public override string ToString() => Kind switch { TokenizerSourceKind.Model => Model!, _ => Kind.ToString().ToLowerInvariant() };
}
