namespace Dare.Engine.Evaluation;

/// <summary>What Measure-Perplexity measured: the mean negative log-likelihood per scored token and its exponential.</summary>
public sealed record PerplexityResult
{
    /// <summary>The model's short name (its folder name).</summary>
    public required string Model { get; init; }

    /// <summary>The model folder or file.</summary>
    public required string Path { get; init; }

    /// <summary>The text file measured, when the text came from a file.</summary>
    public string? TextPath { get; init; }

    /// <summary>Tokens scored: every token of a window after its first (the first has no context to predict it from).</summary>
    public long Tokens { get; init; }

    /// <summary>Non-overlapping windows of at most <see cref="ContextLength"/> tokens the text was cut into.</summary>
    public int Windows { get; init; }

    public int ContextLength { get; init; }

    /// <summary>Mean negative log-likelihood per scored token, in nats.</summary>
    public double NegativeLogLikelihood { get; init; }

    /// <summary>exp(<see cref="NegativeLogLikelihood"/>).</summary>
    public double Perplexity { get; init; }

    /// <summary>The compute type: bfloat16 or float32.</summary>
    public required string DType { get; init; }

    public required string Device { get; init; }

    public TimeSpan Elapsed { get; init; }

    public override string ToString() => $"{Model}: perplexity {Perplexity:G6} over {Tokens} tokens";
}

/// <summary>Progress of a perplexity run: which batch of windows and which layer.</summary>
public readonly record struct PerplexityProgress(int WindowsDone, int Windows, int Layer, int Layers)
{
    /// <summary>0–100 over all (batch, layer) steps.</summary>
    public int Percent => Windows == 0 ? 100 : (int)Math.Min(100, 100.0 * (WindowsDone + (double)Layer / Math.Max(1, Layers + 1)) / Windows);
}
