namespace Dare.Engine.Recipes;

/// <summary>
/// Collects the mistakes of a recipe so that one run reports all of them, each with its location, instead of the
/// first only. Checks that do not depend on each other run under <see cref="Try"/>; <see cref="ThrowIfAny"/> then
/// stops before anything is planned or written.
/// </summary>
internal sealed class RecipeDiagnostics
{
    /// <summary>Most mistakes listed in one message; the rest are counted.</summary>
    internal const int MaxListed = 20;

    private readonly List<DareException> _mistakes = new();

    public RecipeDiagnostics(string source) => Source = source;

    public string Source { get; }

    public int Count => _mistakes.Count;

    public void Add(DareException mistake) => _mistakes.Add(mistake);

    /// <summary>Runs <paramref name="check"/>; a recipe mistake it throws is recorded and <paramref name="fallback"/> returned.</summary>
    public T Try<T>(Func<T> check, T fallback)
    {
        try
        {
            return check();
        }
        catch (DareException ex)
        {
            _mistakes.Add(ex);
            return fallback;
        }
    }

    public void Try(Action check) => Try(() => { check(); return true; }, false);

    /// <summary>Throws the one mistake as it is, or one exception listing them all (the common ErrorId, else RecipeInvalid).</summary>
    public void ThrowIfAny()
    {
        if (_mistakes.Count == 0) return;
        if (_mistakes.Count == 1) throw _mistakes[0];
        var id = _mistakes.Select(m => m.ErrorId).Distinct().Count() == 1 ? _mistakes[0].ErrorId : DareErrorId.RecipeInvalid;
        var kind = _mistakes.Select(m => m.Kind).Distinct().Count() == 1 ? _mistakes[0].Kind : DareErrorKind.InvalidData;
        var lines = _mistakes.Take(MaxListed).Select(m => $"{Environment.NewLine}  - {m.Message}");
        var more = _mistakes.Count > MaxListed ? $"{Environment.NewLine}  … and {_mistakes.Count - MaxListed} more." : "";
        throw new DareException(id, kind, $"{Source} has {_mistakes.Count} mistakes; nothing was written:{string.Concat(lines)}{more}", _mistakes[0])
        {
            FilePath = _mistakes[0].FilePath,
        };
    }
}
