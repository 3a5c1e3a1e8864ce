using System.Globalization;

namespace Dare.Engine.Merge;

/// <summary>Where a parameter may be given.</summary>
public enum ParameterScope
{
    /// <summary>Per model, with a merge-wide fallback (weight, density, drop_rate, rescale).</summary>
    Either,
    /// <summary>Once for the whole merge (normalize, lambda, sign_method, t).</summary>
    Merge,
    /// <summary>Per model only (mask_stream; random_seed is also a top-level recipe key).</summary>
    Model,
}

public enum ParameterKind { Number, Boolean, Integer, Choice }

/// <summary>An interval of allowed numbers, written the way messages and help state it.</summary>
public sealed record NumberRange(double Min, bool MinInclusive, double Max, bool MaxInclusive)
{
    public static NumberRange Fraction { get; } = new(0, false, 1, true);
    public static NumberRange Probability { get; } = new(0, true, 1, false);
    public static NumberRange NonNegative { get; } = new(0, true, double.PositiveInfinity, false);

    public bool Contains(double value) =>
        (MinInclusive ? value >= Min : value > Min) && (MaxInclusive ? value <= Max : value < Max);

    /// <summary>"0 &lt; name &lt;= 1", "name >= 0".</summary>
    public string Rule(string name)
    {
        var low = double.IsNegativeInfinity(Min) ? null : $"{Format(Min)} {(MinInclusive ? "<=" : "<")} ";
        var high = double.IsPositiveInfinity(Max) ? null : $" {(MaxInclusive ? "<=" : "<")} {Format(Max)}";
        if (low is not null && high is null) return $"{name} {(MinInclusive ? ">=" : ">")} {Format(Min)}";
        return $"{low}{name}{high}";
    }

    /// <summary>"(0, 1]", "[0, 1)".</summary>
    public override string ToString() =>
        $"{(MinInclusive ? "[" : "(")}{Format(Min)}, {(double.IsPositiveInfinity(Max) ? "∞" : Format(Max))}{(MaxInclusive ? "]" : ")")}";

    internal static string Format(double value) => value.ToString("R", CultureInfo.InvariantCulture);
}

/// <summary>
/// A parameter of a merge method or transform, declared once: its recipe key (mergekit's name), its cmdlet
/// parameter, type, range, default, where it may be given and whether it may vary by tensor. Recipes, cmdlet
/// validation, plan summaries, the recipe writer and help all read it from here.
/// </summary>
public sealed record ParameterSpec(string Key, ParameterKind Kind, ParameterScope Scope, string Description)
{
    /// <summary>How plan summaries name it (default: the key).</summary>
    public string Label { get => _label ?? Key; init => _label = value; }
    private readonly string? _label;

    /// <summary>The cmdlet parameter that sets it (null when no cmdlet does).</summary>
    public string? CmdletName { get; init; }

    /// <summary>Whether a recipe may give filter rules or a gradient (a value per tensor).</summary>
    public bool VariesByTensor { get; init; }

    /// <summary>Allowed numbers; null for any finite number.</summary>
    public NumberRange? Range { get; init; }

    /// <summary>The value recipes use when none is given (mergekit's default); null when the value is required or depends on the method.</summary>
    public object? Default { get; init; }

    /// <summary>The cmdlet's default where it differs from <see cref="Default"/> (its help states both).</summary>
    public object? CmdletDefault { get; init; }

    /// <summary>
    /// What is wrong with <paramref name="value"/> as <paramref name="name"/> (the key, or the cmdlet parameter) in the
    /// user's terms, or null when it is allowed: non-finite numbers are never allowed.
    /// </summary>
    public string? Problem(double value, string? name = null)
    {
        name ??= Key;
        if (!double.IsFinite(value)) return $"{name} must be a finite number, not {NumberRange.Format(value)}";
        if (Range is { } range && !range.Contains(value)) return $"{name} must satisfy {range.Rule(name)}; {NumberRange.Format(value)} does not";
        return null;
    }

    /// <summary>Throws a <see cref="DareException"/> (InvalidParameter) when <paramref name="value"/> is not allowed.</summary>
    public void Check(double value, string? name = null)
    {
        if (Problem(value, name) is { } problem)
        {
            throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument, problem + ".");
        }
    }

    /// <summary>Checks every value a per-tensor parameter can take.</summary>
    public void Check(TensorParameter parameter, string? name = null)
    {
        foreach (var value in parameter.PossibleValues) Check(value, name);
    }
}
