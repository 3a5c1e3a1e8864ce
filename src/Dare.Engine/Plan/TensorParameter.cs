using System.Text.RegularExpressions;

namespace Dare.Engine.Merge;

/// <summary>Where a tensor sits in the model, for parameters that vary by tensor name or layer.</summary>
public readonly record struct TensorPosition(string Name, int? LayerIndex, int LayerCount)
{
    private static readonly Regex LayerPattern = new(@"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.", RegexOptions.Compiled);

    /// <summary>Finds the layer index in names like model.layers.12.mlp.up_proj.weight.</summary>
    public static TensorPosition Of(string name, int layerCount)
    {
        var match = LayerPattern.Match(name);
        int? layer = match.Success ? int.Parse(match.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture) : null;
        return new TensorPosition(name, layer, layerCount);
    }

    /// <summary>Layers in the model: config.json's num_hidden_layers, else the highest layer index in the tensor names + 1.</summary>
    public static int LayerCountOf(Safetensors.Checkpoint model)
    {
        if (model.ConfigInt("num_hidden_layers") is { } configured and > 0) return (int)configured;
        var highest = model.Tensors.Select(t => Of(t.Name, 0).LayerIndex ?? -1).DefaultIfEmpty(-1).Max();
        return highest + 1;
    }
}

/// <summary>A merge parameter whose value may depend on the tensor: a constant, filter rules, or a gradient across layers.</summary>
public abstract record TensorParameter
{
    public abstract double Resolve(TensorPosition position);

    /// <summary>Every value the parameter can take (for validation and plan summaries).</summary>
    public abstract IEnumerable<double> PossibleValues { get; }

    public static implicit operator TensorParameter(double value) => new ConstantParameter(value);
}

public sealed record ConstantParameter(double Value) : TensorParameter
{
    public override double Resolve(TensorPosition position) => Value;
    public override IEnumerable<double> PossibleValues => new[] { Value };
    public override string ToString() => Value.ToString("R", System.Globalization.CultureInfo.InvariantCulture);
}

/// <summary>How a rule's filter matches tensor names.</summary>
public enum FilterMatch
{
    /// <summary>mergekit semantics: the filter is a substring of the name.</summary>
    Substring,
    /// <summary>PowerShell semantics: a wildcard pattern over the whole name (e.g. *embed_tokens*).</summary>
    Wildcard,
}

/// <summary>One rule of a <see cref="RuleParameter"/>; a rule without a filter is the fallback.</summary>
public sealed record ParameterRule(string? Filter, TensorParameter Value, FilterMatch Match = FilterMatch.Substring)
{
    public bool Matches(string name) => Filter is null || Match switch
    {
        FilterMatch.Substring => name.Contains(Filter, StringComparison.Ordinal),
        _ => WildcardMatches(Filter, name),
    };

    private static bool WildcardMatches(string pattern, string name) =>
        Regex.IsMatch(name, "^" + Regex.Escape(pattern).Replace(@"\*", ".*").Replace(@"\?", ".") + "$", RegexOptions.CultureInvariant);
}

/// <summary>First matching rule wins; with no match the <see cref="Default"/> applies.</summary>
public sealed record RuleParameter(IReadOnlyList<ParameterRule> Rules, TensorParameter Default) : TensorParameter
{
    public override double Resolve(TensorPosition position) =>
        (Rules.FirstOrDefault(r => r.Matches(position.Name))?.Value ?? Default).Resolve(position);

    public override IEnumerable<double> PossibleValues => Rules.SelectMany(r => r.Value.PossibleValues).Concat(Default.PossibleValues).Distinct();

    public override string ToString() => string.Join(", ", Rules.Select(r => $"{r.Filter ?? "*"}={r.Value}")) + $", default={Default}";
}

/// <summary>
/// A list of values spread evenly across the layers and interpolated linearly, as mergekit's gradients are: layer i
/// of n sits at t = i/(n − 1) (t = 1 when there is a single layer), and the value there is
/// (1 − f)·v[k] + f·v[k+1] with k = ⌊t·(m − 1)⌋, f = t·(m − 1) − k for m values. Tensors outside the layers take
/// t = 0 if they come before them (embeddings) and t = 1 otherwise (final norm, lm_head).
/// </summary>
public sealed record GradientParameter(IReadOnlyList<double> Points) : TensorParameter
{
    public override double Resolve(TensorPosition position)
    {
        if (Points.Count == 1) return Points[0];
        double t;
        if (position.LayerIndex is { } layer)
        {
            t = position.LayerCount <= 1 ? 1 : Math.Clamp((double)layer / (position.LayerCount - 1), 0, 1);
        }
        else
        {
            t = position.Name.Contains("embed", StringComparison.Ordinal) ? 0 : 1;
        }
        var scaled = t * (Points.Count - 1);
        var low = (int)scaled;
        var high = Math.Min(Points.Count - 1, low + 1);
        var fraction = scaled - low;
        return (1 - fraction) * Points[low] + fraction * Points[high];
    }

    public override IEnumerable<double> PossibleValues => Points;
    public override string ToString() => "[" + string.Join(", ", Points.Select(p => p.ToString("R", System.Globalization.CultureInfo.InvariantCulture))) + "]";
}
