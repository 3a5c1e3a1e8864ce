using System.Globalization;
using Dare.Engine.Safetensors;

namespace Dare.Engine.Merge;

/// <summary>The common DARE mistakes the guidance warns about where they happen.</summary>
public enum GuidanceWarningId
{
    /// <summary>Two vectors of a merge share seed and mask stream: identical masks, interference not reduced.</summary>
    SharedMask,
    /// <summary>DARE without rescale: the merged update shrinks by 1 − p.</summary>
    NoRescale,
    /// <summary>Embeddings or head dropped at the layers' rate (or higher).</summary>
    EmbeddingDropRate,
    /// <summary>A drop rate of 0.95 or more on a model under 13B parameters.</summary>
    HighDropRate,
    /// <summary>DARE on one model with no merge: say what the export is.</summary>
    SingleModelDare,
}

/// <summary>One guidance warning; <see cref="Inputs"/> are the positions of the task vectors it is about.</summary>
public sealed record GuidanceWarning(GuidanceWarningId Id, string Message, IReadOnlyList<int> Inputs)
{
    public override string ToString() => Message;
}

/// <summary>
/// Checks a plan against the DARE guidance and says what would go wrong, without reading any tensor data. The same
/// checks serve the cmdlets (each where the mistake is made) and recipes (with the recipe's locations).
/// </summary>
public static class MergeMistakes
{
    /// <summary>The highest drop rate the guidance gives below 13B parameters; at or above it small models lose what they learned.</summary>
    public const double HighDropRate = 0.95;

    /// <summary>Mistakes in one vector's drop step: no rescale, embeddings at the layers' rate, ≥ 0.95 on a small model.</summary>
    public static IReadOnlyList<GuidanceWarning> OfDropStep(TaskVector vector, int position = 0)
    {
        var warnings = new List<GuidanceWarning>();
        if (vector.IsMerged || vector.Dare is not { } dare) return warnings;
        var inputs = new[] { position };
        var rates = dare.DropRate.PossibleValues.Where(r => r > 0).ToList();
        if (rates.Count == 0) return warnings;
        if (dare.Rescale == DareRescale.None)
        {
            var p = rates.Max();
            warnings.Add(new GuidanceWarning(GuidanceWarningId.NoRescale,
                $"DARE without rescaling (-Rescale None, rescale: false) keeps the survivors as they are, so the merged update shrinks by 1 − p (to {F(1 - p)} of δ at p = {F(p)}). " +
                "Use the default InverseKeep (× 1/(1 − p)) or L1.", inputs));
        }
        var layout = ModelLayout.Of(vector.Base);
        var tensors = vector.Base.Tensors.Where(t => t.DType.IsMergeable()).Select(t => (Info: t, Position: layout.Position(t.Name))).ToList();
        var layerRates = tensors.Where(t => t.Position.LayerIndex is not null).Select(t => dare.DropRate.Resolve(t.Position)).ToList();
        if (layerRates.Count > 0)
        {
            var lowestLayer = layerRates.Min();
            var vocabulary = tensors.Where(t => (t.Position.IsEmbedding || layout.Architecture.IsVocabularyTensor(t.Info.Name)) && vector.Input.Open(t.Info) is not null)
                .Select(t => (t.Info.Name, Rate: dare.DropRate.Resolve(t.Position))).Where(t => t.Rate > 0 && t.Rate >= lowestLayer).ToList();
            if (vocabulary.Count > 0)
            {
                warnings.Add(new GuidanceWarning(GuidanceWarningId.EmbeddingDropRate,
                    $"DARE drops {string.Join(", ", vocabulary.Select(v => $"'{v.Name}' at {F(v.Rate)}"))}, as much as the transformer layers (lowest {F(lowestLayer)}). " +
                    "Embeddings and the output head should get a lower rate (their rows are per token; a rare token's few changed entries are easily all dropped): " +
                    $"-DropRateOverride @{{ '*embed_tokens*' = {F(Suggested(lowestLayer))}; '*lm_head*' = {F(Suggested(lowestLayer))} }}, or a drop_rate filter in a recipe.", inputs));
            }
        }
        var parameters = vector.ParameterCount;
        var highest = layerRates.Count > 0 ? layerRates.Max() : rates.Max();
        if (highest >= HighDropRate && DareAdvisor.SizeClassOf(parameters) == ModelSizeClass.Size7B)
        {
            warnings.Add(new GuidanceWarning(GuidanceWarningId.HighDropRate,
                $"A drop rate of {F(highest)} on a model of {parameters.ToString("N0", CultureInfo.InvariantCulture)} parameters (under 13B): the guidance gives at most 0.90–0.95 " +
                "at this size (0.85–0.90 for 500–2K fine-tuning steps), and small models lose what they learned above it. Get-DareRecommendation measures the inputs and suggests a rate.", inputs));
        }
        return warnings;
    }

    /// <summary>Vectors of one merge whose DARE (or DELLA) masks share seed and stream, so every model drops the same entries.</summary>
    public static IReadOnlyList<GuidanceWarning> OfMerge(IReadOnlyList<TaskVector> inputs)
    {
        var masks = inputs.Select((v, i) => (Vector: v, Index: i, Key: MaskOf(v))).Where(m => m.Key is not null).GroupBy(m => m.Key!.Value);
        var warnings = new List<GuidanceWarning>();
        foreach (var group in masks.Where(g => g.Count() > 1))
        {
            var (seed, stream) = group.Key;
            warnings.Add(new GuidanceWarning(GuidanceWarningId.SharedMask,
                $"{string.Join(" and ", group.Select(m => $"'{m.Vector.Name}'"))} share drop seed {seed} and mask stream {stream}: their masks are the same, so every model drops the same entries " +
                "and the interference between them is not reduced. Drop them in one Invoke-DareDrop call (each vector then gets its own stream), give each its own -Seed, or set mask_stream (or random_seed) per model in a recipe.",
                group.Select(m => m.Index).ToList()));
        }
        return warnings;
    }

    /// <summary>A single model with DARE and no merge, about to be written: what the export holds.</summary>
    public static GuidanceWarning? OfExport(TaskVector vector)
    {
        var leaves = vector.Leaves;
        if (leaves.Count != 1 || leaves[0].Dare is not { } dare) return null;
        var rates = string.Join(", ", dare.DropRate.PossibleValues.Select(F));
        return new GuidanceWarning(GuidanceWarningId.SingleModelDare,
            $"'{leaves[0].Name}' is one model with DARE and nothing to merge it with: the export is base + DARE(δ), that fine-tune with {rates} of its delta entries dropped " +
            (dare.Rescale == DareRescale.None ? "and the rest kept as they are: a sparsified copy whose update is shrunk by 1 − p, not a merge. " : "and the rest rescaled: a sparsified copy equal to it in expectation, not a merge. ") +
            "To merge, pipe two or more task vectors through Merge-Linear or Merge-Ties first.", new[] { 0 });
    }

    /// <summary>Every check for a whole plan (a recipe's): each input's drop step, shared masks, and a single model with DARE.</summary>
    public static IReadOnlyList<GuidanceWarning> OfPlan(TaskVector merged)
    {
        var leaves = merged.Leaves;
        var warnings = leaves.SelectMany((leaf, i) => OfDropStep(leaf, i)).Concat(OfMerge(leaves)).ToList();
        if (OfExport(merged) is { } single) warnings.Add(single);
        return warnings;
    }

    /// <summary>The embeddings' rate to suggest for layers dropped at <paramref name="layerRate"/>: Get-DareRecommendation's convention.</summary>
    private static double Suggested(double layerRate) => Math.Round(Math.Max(0, layerRate - DareAdvisor.EmbeddingShift), 2);

    private static (long Seed, int Stream)? MaskOf(TaskVector vector) =>
        vector.Dare is { } dare ? (dare.Seed, dare.Stream) : vector.Della is { } della ? (della.Seed, della.Stream) : null;

    private static string F(double value) => value.ToString("0.###", CultureInfo.InvariantCulture);
}
