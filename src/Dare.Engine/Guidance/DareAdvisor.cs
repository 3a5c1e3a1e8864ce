using System.Globalization;

namespace Dare.Engine.Merge;

/// <summary>Choices for <see cref="DareAdvisor.Measure"/>.</summary>
public sealed record GuidanceOptions
{
    /// <summary>Fine-tuning steps, when known (they cannot be read from the weights).</summary>
    public int? TrainingSteps { get; init; }

    /// <summary>Rows sampled from each tensor for sparsity, cosine and sign conflicts.</summary>
    public int SampleRows { get; init; } = 32;

    /// <summary>Matrices per task vector whose effective rank is computed (one SVD each) to tell LoRA-like deltas.</summary>
    public int RankSamples { get; init; } = 3;
}

/// <summary>
/// Turns the DARE guidance this project follows into recommendations for given task vectors: drop rate by size,
/// fine-tuning steps and kind (LoRA-like or full), lowered for naturally sparse deltas and for embeddings and head;
/// the method by situation (how many vectors, and whether they are measured as diverse or of the same domain); the
/// TIES keep ratio after DARE; the rescale. <see cref="Measure"/> reads the inputs, <see cref="Recommend"/> only
/// applies the table to the measurements, so each can be checked on its own.
/// </summary>
public static class DareAdvisor
{
    /// <summary>Mean pairwise cosine at or above which (with few sign conflicts) vectors count as the same domain.</summary>
    public const double SameDomainCosine = 0.5;

    /// <summary>Sign-conflict rate at or below which (with a high cosine) vectors count as the same domain; independent signs give 0.5.</summary>
    public const double SameDomainConflicts = 0.2;

    /// <summary>Natural sparsity above which DARE is expected to help less, so the rate is lowered by <see cref="SparseShift"/>.</summary>
    public const double SparseEnough = 0.7;
    public const double SparseShift = 0.1;

    /// <summary>How much lower than the layers' the embeddings' and head's drop rate is (a Dare convention: the guidance says only "lower").</summary>
    public const double EmbeddingShift = 0.3;

    /// <summary>Parameter counts where the 13B and 70B rows of the guidance begin.</summary>
    public const long Size13B = 10_000_000_000, Size70B = 40_000_000_000;

    public static ModelSizeClass SizeClassOf(long parameters) =>
        parameters >= Size70B ? ModelSizeClass.Size70B : parameters >= Size13B ? ModelSizeClass.Size13B : ModelSizeClass.Size7B;

    /// <summary>Measures the vectors' raw deltas (drop steps they carry are ignored): sampled rows, and a few SVDs per full fine-tune.</summary>
    public static GuidanceMeasurements Measure(IReadOnlyList<TaskVector> vectors, GuidanceOptions options, MergeExecutor executor, CancellationToken cancellation = default)
    {
        var leaves = vectors.SelectMany(v => v.Leaves).ToList();
        if (leaves.Count == 0)
        {
            throw new DareException(DareErrorId.TaskVectorInvalid, DareErrorKind.InvalidArgument, "Recommendations need at least one task vector, fine-tuned model or adapter.");
        }
        var other = leaves.FirstOrDefault(l => !string.Equals(l.Base.Path, leaves[0].Base.Path, StringComparison.Ordinal));
        if (other is not null)
        {
            throw new DareException(DareErrorId.BaseModelMismatch, DareErrorKind.InvalidArgument,
                $"Recommendations compare task vectors of one base model: '{leaves[0].Name}' is based on '{leaves[0].Base.Path}', '{other.Name}' on '{other.Base.Path}'.");
        }
        var adapters = vectors.SelectMany(v => v.LoraAdapters).ToList();
        var full = leaves.Where(l => l.LoraAdapters.Count == 0).Select(l => TaskVector.FromInput(l.Base, l.Input, l.Name)).ToList();
        var fractions = full.SelectMany(l => MatrixRank.Sample(l, executor, options.RankSamples)).Where(r => r.Rank99 > 0).Select(r => r.Fraction).Order().ToList();
        double? fraction = fractions.Count > 0 ? fractions[fractions.Count / 2] : null;
        var sample = DeltaSample.Measure(leaves, options.SampleRows, cancellation);
        var pairs = sample.Pairs;
        double? cosine = pairs.Count > 0 ? pairs.Average(p => p.Cosine) : null;
        double? conflicts = pairs.Count > 0 ? sample.SignConflictRate : null;
        var relation = leaves.Count == 1 ? TaskVectorRelation.Single
            : cosine >= SameDomainCosine && conflicts <= SameDomainConflicts ? TaskVectorRelation.SameDomain : TaskVectorRelation.Diverse;
        var parameters = leaves[0].ParameterCount;
        return new GuidanceMeasurements
        {
            TaskVectors = leaves.Select(l => l.Name).ToList(),
            ParameterCount = parameters,
            SizeClass = SizeClassOf(parameters),
            TrainingSteps = options.TrainingSteps,
            AdapterRank = adapters.Count > 0 ? adapters.Max(a => a.Rank) : null,
            EffectiveRankFraction = fraction,
            LoraLike = full.Count == 0 || fraction <= TaskVectorStatistics.LowRankFraction,
            NaturalSparsity = sample.NaturalSparsity,
            Pairs = pairs,
            MeanCosine = cosine,
            SignConflictRate = conflicts,
            Layers = sample.Layers,
            Relation = relation,
            SampleRows = options.SampleRows,
            SampledElements = sample.SampledElements,
            SampledTensors = sample.SampledTensors,
        };
    }

    /// <summary>The recommendations for what was measured: Method, DropRate, EmbeddingDropRate, Rescale, KeepRatio, in that order.</summary>
    public static IReadOnlyList<DareRecommendation> Recommend(GuidanceMeasurements m)
    {
        var (method, usesDare, usesTies, methodReason) = MethodFor(m);
        var layers = LayerRange(m);
        var sparsest = m.NaturalSparsity.DefaultIfEmpty(0).Max();
        if (sparsest > SparseEnough)
        {
            layers = layers with
            {
                Low = Math.Max(0, layers.Low - SparseShift), High = Math.Max(0, layers.High - SparseShift), Alternative = null,
                Reason = layers.Reason + $" Lowered by {F(SparseShift)}: {Percent(sparsest)} of the sampled |δ| is already below 1% of its tensor's max (natural sparsity above {Percent(SparseEnough)}), so DARE has less to remove and helps less.",
            };
        }
        var list = new List<DareRecommendation> { new("Method", method, methodReason) };
        if (usesDare)
        {
            list.Add(new DareRecommendation("DropRate", layers.Text, layers.Reason) { Low = layers.Low, High = layers.High });
            var low = Math.Max(0, layers.Low - EmbeddingShift);
            var high = Math.Max(0, layers.High - EmbeddingShift);
            list.Add(new DareRecommendation("EmbeddingDropRate", Range(low, high),
                $"Embeddings and the output head get a lower drop rate than the transformer layers: their rows are per token, and a rare token's few changed entries are easily all dropped. Dare's convention is the layers' range − {F(EmbeddingShift)}; " +
                "with Invoke-DareDrop give it as -DropRateOverride @{ '*embed_tokens*' = …; '*lm_head*' = … }, in a recipe as a drop_rate filter.") { Low = low, High = high });
            list.Add(new DareRecommendation("Rescale", "InverseKeep",
                "Survivors × 1/(1 − p) (rescale: true) keeps E[DARE(δ)] = δ. Without it (-Rescale None) the merged update shrinks by 1 − p: to a tenth at p = 0.9."));
        }
        else
        {
            list.Add(new DareRecommendation("DropRate", "none", $"No DARE step in the recommended method. If you add one anyway, the guidance's range here is {layers.Text}.") { Low = 0, High = 0 });
            list.Add(new DareRecommendation("EmbeddingDropRate", "none", "No DARE step in the recommended method.") { Low = 0, High = 0 });
            list.Add(new DareRecommendation("Rescale", "not used", "No DARE step in the recommended method."));
        }
        list.Add(usesTies
            ? new DareRecommendation("KeepRatio", "0.5",
                "TIES's keep ratio (density) after DARE: DARE already left about 1 − p of the entries, so keeping half of those is already more aggressive than 0.2 on dense vectors; do not go lower.") { Low = 0.5, High = 0.5 }
            : new DareRecommendation("KeepRatio", "not used", "No TIES step in the recommended method."));
        return list.Select(r => r with { Measurements = m }).ToList();
    }

    private static (string Method, bool UsesDare, bool UsesTies, string Reason) MethodFor(GuidanceMeasurements m)
    {
        var n = m.TaskVectors.Count;
        var measured = m.MeanCosine is { } c
            ? $"mean pairwise cosine {F(c)}, sign conflicts on {Percent(m.SignConflictRate ?? 0)} of the entries both models change (same domain at cosine ≥ {F(SameDomainCosine)} with conflicts ≤ {Percent(SameDomainConflicts)})"
            : "";
        var big = m.SizeClass == ModelSizeClass.Size70B ? " At 70B and above DARE is critical: the deltas interfere the most there and DARE removes most of it at little cost." : "";
        if (n == 1)
        {
            return ("DARE only: Invoke-DareDrop | Export-Safetensors", true, false,
                "One task vector: nothing to merge. DARE alone writes base + DARE(δ), a sparsified copy of the fine-tune equal to it in expectation (useful to compress or to check how much of δ the model needs)." + big);
        }
        if (m.LoraLike)
        {
            return ("dare_linear (Invoke-DareDrop | Merge-Linear), lower drop rate", true, false,
                $"LoRA-derived deltas ({LoraEvidence(m)}): DARE at a lower rate, then linear." + big);
        }
        if (n >= 6)
        {
            return ("dare_ties (Invoke-DareDrop | Merge-Ties), DARE mandatory", true, true,
                $"{n} models: with more than five, DARE + TIES is mandatory; interference grows with every model and TIES's sign election resolves what DARE leaves ({measured})." + big);
        }
        if (m.Relation == TaskVectorRelation.SameDomain && m.SizeClass != ModelSizeClass.Size70B)
        {
            return ("linear (Merge-Linear)", false, false, $"{n} models of the same domain ({measured}): plain linear interpolation; there is little interference for DARE or TIES to remove.");
        }
        if (n >= 3)
        {
            return ("dare_ties (Invoke-DareDrop | Merge-Ties)", true, true, $"{n} models of mixed domains ({measured}): DARE + TIES, whose sign election resolves the conflicts." + big);
        }
        return ("dare_linear (Invoke-DareDrop | Merge-Linear)", true, false,
            $"2 {(m.Relation == TaskVectorRelation.SameDomain ? "models of the same domain" : "diverse full fine-tunes")} ({measured}): DARE + linear." + big);
    }

    private static string LoraEvidence(GuidanceMeasurements m)
    {
        var parts = new List<string>();
        if (m.AdapterRank is { } rank) parts.Add($"adapters of rank up to {rank}");
        if (m.EffectiveRankFraction is { } f) parts.Add($"sampled matrices hold 99% of their energy in {Percent(f)} of their rank (LoRA-like at ≤ {Percent(TaskVectorStatistics.LowRankFraction)})");
        return string.Join("; ", parts);
    }

    private sealed record RateRange(double Low, double High, string Reason)
    {
        /// <summary>A second range shown beside the first when the steps are unknown (the first is then 500–2K steps').</summary>
        public (double Low, double High, string Note)? Alternative { get; init; }
        public string Text => Alternative is { } a ? $"{Range(Low, High)} (500–2K steps) or {Range(a.Low, a.High)} ({a.Note})" : Range(Low, High);
    }

    /// <summary>The guidance's table: 7B 500–2K steps 0.85–0.90, 2K–10K 0.90–0.95; 13B 500–2K 0.85–0.90; 70B any 0.90–0.95; LoRA 0.70–0.85.</summary>
    private static RateRange LayerRange(GuidanceMeasurements m)
    {
        var size = $"{m.ParameterCount:N0} parameters, {m.SizeText}";
        if (m.LoraLike) return new RateRange(0.70, 0.85, $"LoRA-derived deltas ({LoraEvidence(m)}): 0.70–0.85, whatever the size; a low-rank δ holds its update in fewer independent entries.");
        if (m.SizeClass == ModelSizeClass.Size70B) return new RateRange(0.90, 0.95, $"{size}: 0.90–0.95 for any number of fine-tuning steps.");
        var row13 = m.SizeClass == ModelSizeClass.Size13B;
        const string beyond13 = "the guidance has no 13B row above 2K steps; the 7B row for 2K–10K steps is shown";
        if (m.TrainingSteps is not { } steps)
        {
            return new RateRange(0.85, 0.90, $"{size}; fine-tuning steps unknown (give -TrainingSteps): 0.85–0.90 for 500–2K steps, 0.90–0.95 for 2K–10K steps{(row13 ? $" ({beyond13})" : "")}.")
            { Alternative = (0.90, 0.95, "2K–10K steps") };
        }
        var stepsText = steps.ToString("N0", CultureInfo.InvariantCulture);
        if (steps <= 2000)
        {
            var below = steps < 500 ? " (below the table's 500; its lowest row is used)" : "";
            return new RateRange(0.85, 0.90, $"{size}, {stepsText} fine-tuning steps{below}: the 500–2K row, 0.85–0.90.");
        }
        var above = steps > 10000 ? " (above the table's 10K; its highest row is used)" : "";
        return new RateRange(0.90, 0.95, $"{size}, {stepsText} fine-tuning steps{above}: {(row13 ? beyond13 : "the 2K–10K row")}, 0.90–0.95.");
    }

    private static string Range(double low, double high) => low == high ? F(low) : $"{F(low)}–{F(high)}";
    private static string F(double value) => value.ToString("0.00", CultureInfo.InvariantCulture);
    private static string Percent(double value) => (value * 100).ToString("0.#", CultureInfo.InvariantCulture) + "%";
}
