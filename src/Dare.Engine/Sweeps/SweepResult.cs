namespace Dare.Engine.Sweeps;

/// <summary>One point of a sweep: the method, the DARE drop rate p, the TIES keep ratio (dare_ties only) and the seed.</summary>
public sealed record SweepVariant(int Index, string Method, double DropRate, double? KeepRatio, long Seed)
{
    /// <summary>A short label, e.g. "dare_ties p=0.9 k=0.5".</summary>
    public string Label => $"{Method} p={DropRate:0.###}" + (KeepRatio is { } k ? $" k={k:0.###}" : "");

    public override string ToString() => Label;
}

/// <summary>
/// What one variant of Invoke-DareSweep gave: its parameters, the drop rate DARE realised, the evaluator's score and
/// the time taken, or the error that stopped it. <see cref="IsBest"/> and <see cref="KeptPath"/> are set on the winning
/// variant's object when the sweep ends.
/// </summary>
public sealed class SweepResult
{
    internal SweepResult(SweepVariant variant) => Variant = variant;

    public SweepVariant Variant { get; }
    public int Index => Variant.Index;
    public string Method => Variant.Method;
    public double DropRate => Variant.DropRate;
    public double? KeepRatio => Variant.KeepRatio;
    public long Seed => Variant.Seed;

    /// <summary>The fraction of δ entries DARE dropped over every model and tensor (near <see cref="DropRate"/>).</summary>
    public double? RealisedDropRate { get; internal set; }

    /// <summary>The evaluator's score (perplexity by default); null when the variant failed.</summary>
    public double? Score { get; internal set; }

    /// <summary>What the score is: "perplexity" for the default evaluator, else "score".</summary>
    public string ScoreName { get; internal set; } = "score";

    public TimeSpan MergeTime { get; internal set; }
    public TimeSpan EvaluationTime { get; internal set; }

    /// <summary>Whether the variant merged and was scored.</summary>
    public bool Succeeded => Error is null && Score is not null;

    /// <summary>Why the variant failed (the merge or the evaluator), else null.</summary>
    public string? Error { get; internal set; }

    /// <summary>The stable id of the failure (a DareErrorId, or SweepEvaluatorFailed), else null.</summary>
    public string? ErrorId { get; internal set; }

    /// <summary>The exception behind <see cref="Error"/>, for scripts that want the details.</summary>
    public Exception? Exception { get; internal set; }

    /// <summary>Whether this variant had the best score (lowest, or highest with -Maximize). Set when the sweep ends.</summary>
    public bool IsBest { get; internal set; }

    /// <summary>Where the best variant's model was kept (-KeepBest), else null. Set when the sweep ends.</summary>
    public string? KeptPath { get; internal set; }

    public override string ToString() => Succeeded ? $"{Variant.Label}: {ScoreName} {Score:G6}" : $"{Variant.Label}: failed ({Error})";
}
