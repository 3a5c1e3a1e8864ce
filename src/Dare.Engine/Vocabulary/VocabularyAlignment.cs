using Dare.Engine.Safetensors;

namespace Dare.Engine.Merge;

/// <summary>Where an output row's embedding comes from for a model that lacks the token (or when the token is forced).</summary>
internal enum RowDefaultKind { Donor, Average, Zero, Mean }

/// <summary>The default of one output row: a donor's row, the average of several rows, zeros, or the mean embedding (padding).</summary>
internal readonly record struct RowDefault(RowDefaultKind Kind, int Participant = -1, int Row = -1, (int Participant, int Row)[]? Rows = null);

/// <summary>
/// The row plan of a merge across vocabularies, by mergekit's rules (mergekit/tokenizer/embed.py): the output
/// vocabulary (the base's, the union, or one model's), and per participant (0 = base, then the models) which of its
/// rows holds each output row's token. A row a participant lacks, or a forced token, takes the row's default: the
/// override's source; else the only participant that has the token; else the base's row; else the average of those
/// that have it; zeros if none has it; rows added by pad_to_multiple_of take each participant's mean embedding.
/// Rows past a tokenizer's tokens (Qwen2.5's padding) are matched by index.
/// </summary>
internal sealed class VocabularyAlignment
{
    public required Checkpoint[] Participants { get; init; }
    public required TokenizerVocabulary[] Vocabularies { get; init; }
    public required ModelArchitecture Architecture { get; init; }
    public required IReadOnlyList<string> Tensors { get; init; }
    public required long OutRows { get; init; }
    public required string?[] OutTokens { get; init; }
    public required int[][] Source { get; init; }
    public required bool[] Forced { get; init; }
    public required RowDefault?[] Defaults { get; init; }
    public required TokenizerChoice Choice { get; init; }

    /// <summary>Output rows that hold a token or a matched padding row (the rows a mean embedding averages).</summary>
    public bool IsMeanRow(long row) => Defaults[row] is { Kind: RowDefaultKind.Mean };

    /// <summary>True when every participant's rows are the base's rows, unchanged: no alignment is needed.</summary>
    public bool IsIdentity { get; private init; }

    /// <summary>A participant's tensor for a base name: its own, or for a head of a tied model its embedding.</summary>
    public TensorInfo? TensorOf(int participant, string name) =>
        Participants[participant].Find(name) ?? Architecture.TiedSource(Participants[participant], name);

    /// <summary>The participant's row for output row <paramref name="row"/>, or -1 when it takes the default.</summary>
    public int OwnRow(int participant, long row) => Forced[row] ? -1 : Source[participant][row];

    public static VocabularyAlignment Plan(Checkpoint @base, IReadOnlyList<Checkpoint> models, TokenizerChoice choice)
    {
        var architecture = ModelArchitecture.Of(@base.Config);
        var participants = new[] { @base }.Concat(models).ToArray();
        var tensors = @base.Tensors.Where(t => t.Shape.Length == 2 && t.DType.IsMergeable() && architecture.IsVocabularyTensor(t.Name)).Select(t => t.Name).ToList();
        if (tensors.Count == 0 && architecture.IsGeneric) tensors = @base.Tensors.Where(t => t.Shape.Length == 2 && t.DType.IsMergeable() && TensorPosition.LooksLikeEmbedding(t.Name)).Select(t => t.Name).ToList();
        var rows = new long[participants.Length];
        for (var p = 0; p < participants.Length; p++)
        {
            foreach (var name in tensors)
            {
                var own = participants[p].Find(name) ?? architecture.TiedSource(participants[p], name);
                if (own is null) continue;
                var expected = @base.Find(name)!;
                if (own.Shape.Length != 2 || own.Shape[1] != expected.Shape[1])
                {
                    throw new DareException(DareErrorId.TensorShapeMismatch, DareErrorKind.InvalidData,
                        $"Tensor '{name}' has shape {expected.ShapeText} in the base '{@base.Path}' but {own.ShapeText} in '{participants[p].Path}'; only the number of rows (tokens) may differ.")
                    { FilePath = own.File, TensorName = name };
                }
                if (rows[p] != 0 && rows[p] != own.Shape[0])
                {
                    throw new DareException(DareErrorId.VocabularyMismatch, DareErrorKind.InvalidData,
                        $"'{participants[p].Path}' has {rows[p]} embedding rows but {own.Shape[0]} rows in '{name}'.") { FilePath = own.File, TensorName = name };
                }
                rows[p] = own.Shape[0];
            }
        }
        // The common case (fine-tunes that kept the base's tokenizer) needs no token maps: skip parsing them.
        if (choice.IsPlainBase && rows.All(r => r == rows[0]) && models.All(m => TokenizerVocabulary.SameFiles(@base.Directory, m.Directory)))
        {
            return Identity(participants, architecture, tensors, rows[0], choice);
        }
        var vocabularies = participants.Select((m, p) => TokenizerVocabulary.Read(m.Directory, rows[p])).ToArray();
        var outTokens = OutputTokens(choice, participants, vocabularies, rows, out var outRows);
        var source = new int[participants.Length][];
        for (var p = 0; p < participants.Length; p++)
        {
            var vocabulary = vocabularies[p];
            var map = source[p] = new int[outRows];
            for (long r = 0; r < outRows; r++)
            {
                var token = r < outTokens.Length ? outTokens[r] : null;
                // A model without tokenizer files beside a base with them: its rows are matched by index.
                if (vocabulary.ByIndex && !vocabularies[0].ByIndex) map[r] = r < rows[p] ? (int)r : -1;
                else map[r] = token is not null ? vocabulary.RowOf(token, rows[p])
                    : r < rows[p] && (r >= vocabulary.Tokens.Length || vocabulary.Tokens[r] is null) ? (int)r : -1;
            }
        }
        var forced = new bool[outRows];
        var defaults = new RowDefault?[outRows];
        var identity = outRows == rows[0];
        for (long r = 0; r < outRows; r++)
        {
            var token = r < outTokens.Length ? outTokens[r] : null;
            var present = Enumerable.Range(0, participants.Length).Where(p => source[p][r] >= 0).ToArray();
            TokenOverride? tokenOverride = null;
            if (token is not null && choice.Tokens.TryGetValue(token, out var found)) tokenOverride = found;
            forced[r] = tokenOverride?.Force ?? false;
            if (tokenOverride is not null) defaults[r] = OverrideDefault(tokenOverride.Source, token!, participants, vocabularies, rows);
            else if (present.Length == participants.Length) defaults[r] = null;
            else if (present.Length == 1) defaults[r] = new RowDefault(RowDefaultKind.Donor, present[0], source[present[0]][r]);
            else if (present.Length == 0) defaults[r] = new RowDefault(token is null ? RowDefaultKind.Mean : RowDefaultKind.Zero);
            else if (source[0][r] >= 0) defaults[r] = new RowDefault(RowDefaultKind.Donor, 0, source[0][r]);
            else defaults[r] = new RowDefault(RowDefaultKind.Average, Rows: present.Select(p => (p, source[p][r])).ToArray());
            identity &= !forced[r];
            for (var p = 0; p < participants.Length; p++) identity &= source[p][r] == r;
        }
        for (var p = 1; p < participants.Length; p++) identity &= rows[p] == rows[0];
        return new VocabularyAlignment
        {
            Participants = participants, Vocabularies = vocabularies, Architecture = architecture, Tensors = tensors, OutRows = outRows,
            OutTokens = outTokens, Source = source, Forced = forced, Defaults = defaults, Choice = choice, IsIdentity = identity,
        };
    }

    /// <summary>The plan when every participant's rows are the base's (same tokenizer files, same row count).</summary>
    private static VocabularyAlignment Identity(Checkpoint[] participants, ModelArchitecture architecture, IReadOnlyList<string> tensors, long rows, TokenizerChoice choice) => new()
    {
        Participants = participants, Vocabularies = Array.Empty<TokenizerVocabulary>(), Architecture = architecture, Tensors = tensors, OutRows = rows,
        OutTokens = Array.Empty<string?>(), Source = Array.Empty<int[]>(), Forced = Array.Empty<bool>(), Defaults = Array.Empty<RowDefault?>(),
        Choice = choice, IsIdentity = true,
    };

    /// <summary>Output row → token (null for padding rows), and the number of output rows.</summary>
    private static string?[] OutputTokens(TokenizerChoice choice, Checkpoint[] participants, TokenizerVocabulary[] vocabularies, long[] rows, out long outRows)
    {
        string?[] tokens;
        switch (choice.Kind)
        {
            case TokenizerSourceKind.Base:
                tokens = vocabularies[0].Tokens.Take((int)Math.Min(rows[0], vocabularies[0].Tokens.Length)).ToArray();
                outRows = rows[0];
                break;
            case TokenizerSourceKind.Model:
                var owner = Array.FindIndex(participants, m => string.Equals(m.Path, Path.GetFullPath(choice.Model!), StringComparison.Ordinal));
                if (owner < 0)
                {
                    throw new DareException(DareErrorId.VocabularyMismatch, DareErrorKind.InvalidArgument,
                        $"The tokenizer source '{choice.Model}' is not one of the merged models or the base; name one of them.") { FilePath = choice.Model };
                }
                tokens = vocabularies[owner].Tokens.Take((int)Math.Min(rows[owner], vocabularies[owner].Tokens.Length)).ToArray();
                outRows = rows[owner];
                break;
            default:
                var list = vocabularies[0].Tokens.Take((int)Math.Min(rows[0], vocabularies[0].Tokens.Length)).ToList();
                var known = new HashSet<string>(list.Where(t => t is not null)!, StringComparer.Ordinal);
                for (var p = 1; p < participants.Length; p++)
                {
                    if (vocabularies[p].ByIndex && !vocabularies[0].ByIndex) continue;
                    foreach (var (token, id) in vocabularies[p].Ids.Where(e => e.Value < rows[p]).OrderBy(e => e.Value))
                    {
                        if (known.Add(token)) list.Add(token);
                    }
                }
                tokens = list.ToArray();
                outRows = Math.Max(rows[0], tokens.Length);
                break;
        }
        if (choice.PadToMultipleOf is { } multiple and > 1 && outRows % multiple != 0) outRows = (outRows / multiple + 1) * multiple;
        return tokens;
    }

    private static RowDefault OverrideDefault(TokenEmbeddingSource source, string token, Checkpoint[] participants, TokenizerVocabulary[] vocabularies, long[] rows)
    {
        if (source.Zero) return new RowDefault(RowDefaultKind.Zero);
        var p = Array.FindIndex(participants, m => string.Equals(m.Path, Path.GetFullPath(source.Model!), StringComparison.Ordinal));
        if (p < 0)
        {
            throw new DareException(DareErrorId.VocabularyMismatch, DareErrorKind.InvalidArgument,
                $"The embedding source '{source.Model}' of token '{token}' is not one of the merged models or the base.") { FilePath = source.Model };
        }
        var row = source.TokenId ?? vocabularies[p].RowOf(source.Token ?? token, rows[p]);
        if (row < 0 || row >= rows[p])
        {
            throw new DareException(DareErrorId.VocabularyMismatch, DareErrorKind.InvalidArgument,
                $"'{participants[p].Path}' has no row for token '{source.Token ?? token}'{(source.TokenId is { } id ? $" (id {id})" : "")}, which the tokenizer settings name as the source of '{token}'.") { FilePath = participants[p].Path };
        }
        return new RowDefault(RowDefaultKind.Donor, p, row);
    }
}
