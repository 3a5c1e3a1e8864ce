namespace Dare.Engine.Merge;

/// <summary>How the task vectors relate, as measured: the situation the method recommendation follows.</summary>
public enum TaskVectorRelation
{
    /// <summary>One task vector: nothing to merge.</summary>
    Single,
    /// <summary>High cosine and few sign conflicts: the vectors move the same way (plain interpolation suffices).</summary>
    SameDomain,
    /// <summary>Low or negative cosine, or many sign conflicts: the vectors interfere (what DARE and TIES reduce).</summary>
    Diverse,
}

/// <summary>The model's size class of the DARE guidance: under 10B parameters the 7B rows, under 40B the 13B rows, else the 70B rows.</summary>
public enum ModelSizeClass { Size7B, Size13B, Size70B }

/// <summary>What <see cref="DareAdvisor"/> measured, behind every recommendation.</summary>
public sealed record GuidanceMeasurements
{
    public required IReadOnlyList<string> TaskVectors { get; init; }

    /// <summary>Floating-point parameters of the base model.</summary>
    public required long ParameterCount { get; init; }
    public required ModelSizeClass SizeClass { get; init; }

    /// <summary>Fine-tuning steps as given (-TrainingSteps); null: unknown (they cannot be read from the weights).</summary>
    public int? TrainingSteps { get; init; }

    /// <summary>The largest LoRA rank of the adapters among the inputs (null: none is an adapter).</summary>
    public int? AdapterRank { get; init; }

    /// <summary>The median over the sampled matrices of Rank99 / min(rows, columns) (see <see cref="MatrixRank"/>); null when none was sampled.</summary>
    public double? EffectiveRankFraction { get; init; }

    /// <summary>Whether the deltas are LoRA-derived: an adapter among the inputs, or sampled matrices of low effective rank.</summary>
    public required bool LoraLike { get; init; }

    /// <summary>Per task vector (in order), the fraction of sampled |δ| below 1% of its tensor's max.</summary>
    public required IReadOnlyList<double> NaturalSparsity { get; init; }

    public required IReadOnlyList<TaskVectorPair> Pairs { get; init; }

    /// <summary>Mean pairwise cosine over the sampled entries (null for a single vector).</summary>
    public double? MeanCosine { get; init; }

    /// <summary>Among sampled entries non-zero in at least two vectors: the share whose signs disagree (null for a single vector).</summary>
    public double? SignConflictRate { get; init; }

    public required IReadOnlyList<LayerInterference> Layers { get; init; }
    public required TaskVectorRelation Relation { get; init; }

    /// <summary>Rows sampled from each tensor (evenly spaced; all of them in a tensor with fewer).</summary>
    public required int SampleRows { get; init; }

    /// <summary>Entries sampled per task vector, and the tensors they came from.</summary>
    public required long SampledElements { get; init; }
    public required int SampledTensors { get; init; }

    public string SizeText => SizeClass switch { ModelSizeClass.Size7B => "7B class (< 10B)", ModelSizeClass.Size13B => "13B class (10B-40B)", _ => "70B class (>= 40B)" };

    public override string ToString() =>
        $"{TaskVectors.Count} task vector(s), {ParameterCount:N0} parameters ({SizeText}), LoRA-like: {LoraLike}, relation: {Relation}";
}

/// <summary>One recommended setting, with its value (a range where the guidance gives one) and why.</summary>
public sealed record DareRecommendation(string Setting, string Value, string Reason)
{
    /// <summary>The range's ends when the value is a number or range (the first range when two are shown); null otherwise.</summary>
    public double? Low { get; init; }
    public double? High { get; init; }

    /// <summary>Everything measured, shared by the recommendations of one call.</summary>
    public GuidanceMeasurements Measurements { get; init; } = null!;

    public override string ToString() => $"{Setting}: {Value}";
}
