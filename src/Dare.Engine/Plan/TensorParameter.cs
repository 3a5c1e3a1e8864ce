using System.Text.RegularExpressions;

namespace Dare.Engine.Merge;

/// <summary>Where a tensor sits in the model, for parameters that vary by tensor name or layer.</summary>
public readonly record struct TensorPosition(string Name, int? LayerIndex, int LayerCount)
{
    /// <summary>Whether the tensor is an input embedding (before the layers; only the pre-#534 gradient rule asks).</summary>
    public bool IsEmbedding { get; init; }

    /// <summary>Where a tensor sits by the common naming schemes (the table's generic row), e.g. model.layers.12.mlp.up_proj.weight.</summary>
    public static TensorPosition Of(string name, int layerCount) => ModelArchitecture.Generic.Position(name, layerCount);

    /// <summary>Layers in the model: by its architecture's config key (num_hidden_layers, n_layer, …), else the highest layer index + 1.</summary>
    public static int LayerCountOf(Safetensors.Checkpoint model) => ModelLayout.Of(model).LayerCount;

    internal static bool LooksLikeEmbedding(string name) =>
        name.Contains("embed_tokens", StringComparison.Ordinal) || name.Contains("wte", StringComparison.Ordinal) || name.Contains("embed_in", StringComparison.Ordinal)
        || name.Contains("word_embeddings", StringComparison.Ordinal);
}

/// <summary>A model's architecture (from its config.json) with its layer count: positions of tensor names for per-tensor parameters.</summary>
public sealed record ModelLayout(ModelArchitecture Architecture, int LayerCount)
{
    public static ModelLayout Of(Safetensors.Checkpoint model)
    {
        var architecture = ModelArchitecture.Of(model.Config);
        return new ModelLayout(architecture, architecture.LayerCount(model));
    }

    public TensorPosition Position(string name) => Architecture.Position(name, LayerCount);
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

/// <summary>Where a gradient puts tensors outside the decoder layers (embeddings, final norm, head).</summary>
public enum GradientOutsideLayers
{
    /// <summary>t = 0 for every tensor outside the layers (mergekit since its #534, 2025-03; the default).</summary>
    Zero,
    /// <summary>Before mergekit's #534: t = 0 for the input embeddings, t = 1 for the tensors after the layers.</summary>
    EmbeddingsFirstOthersLast,
}

/// <summary>
/// A list of values spread evenly across the layers and interpolated linearly, as mergekit's gradients are: layer i
/// of n sits at t = i/(n − 1) (t = 1 when there is a single layer), and the value there is
/// (1 − f)·v[k] + f·v[k+1] with k = ⌊t·(m − 1)⌋, f = t·(m − 1) − k for m values. Tensors outside the layers take
/// t = 0 (mergekit 0.1.4), or with <see cref="GradientOutsideLayers.EmbeddingsFirstOthersLast"/> t = 0 for the
/// embeddings and t = 1 for the rest (the earlier rule).
/// </summary>
public sealed record GradientParameter(IReadOnlyList<double> Points) : TensorParameter
{
    public GradientOutsideLayers OutsideLayers { get; init; }

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
            t = OutsideLayers == GradientOutsideLayers.Zero || position.IsEmbedding ? 0 : 1;
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
