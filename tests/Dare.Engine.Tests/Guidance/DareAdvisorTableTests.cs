using Dare.Engine.Merge;
using Xunit;

namespace Dare.Engine.Tests.Guidance;

/// <summary>DareAdvisor.Recommend applies the guidance's table to measurements given by hand.</summary>
public sealed class DareAdvisorTableTests
{
    private static GuidanceMeasurements Given(long parameters, int? steps = null, bool lora = false, int models = 2,
        TaskVectorRelation relation = TaskVectorRelation.Diverse, double sparsity = 0.1) => new()
    {
        TaskVectors = Enumerable.Range(0, models).Select(i => $"m{i}").ToList(),
        ParameterCount = parameters,
        SizeClass = DareAdvisor.SizeClassOf(parameters),
        TrainingSteps = steps,
        LoraLike = lora,
        AdapterRank = lora ? 16 : null,
        NaturalSparsity = Enumerable.Repeat(sparsity, models).ToList(),
        Pairs = Array.Empty<TaskVectorPair>(),
        MeanCosine = models > 1 ? (relation == TaskVectorRelation.SameDomain ? 0.9 : 0.02) : null,
        SignConflictRate = models > 1 ? (relation == TaskVectorRelation.SameDomain ? 0.05 : 0.5) : null,
        Layers = Array.Empty<LayerInterference>(),
        Relation = models == 1 ? TaskVectorRelation.Single : relation,
        SampleRows = 32,
        SampledElements = 1000,
        SampledTensors = 3,
    };

    private static DareRecommendation Setting(GuidanceMeasurements m, string setting) => DareAdvisor.Recommend(m).Single(r => r.Setting == setting);

    [Theory]
    [InlineData(6_740_000_000L, 1000, 0.85, 0.90)]   // 7B, 500–2K steps
    [InlineData(6_740_000_000L, 500, 0.85, 0.90)]
    [InlineData(6_740_000_000L, 2000, 0.85, 0.90)]
    [InlineData(6_740_000_000L, 5000, 0.90, 0.95)]   // 7B, 2K–10K steps
    [InlineData(6_740_000_000L, 10000, 0.90, 0.95)]
    [InlineData(13_000_000_000L, 1500, 0.85, 0.90)]  // 13B, 500–2K steps
    [InlineData(70_000_000_000L, 800, 0.90, 0.95)]   // 70B, any steps
    [InlineData(70_000_000_000L, 9000, 0.90, 0.95)]
    public void Drop_rate_follows_the_table_by_size_and_steps(long parameters, int steps, double low, double high)
    {
        var rate = Setting(Given(parameters, steps), "DropRate");
        Assert.Equal((low, high), (rate.Low!.Value, rate.High!.Value));
        var embeddings = Setting(Given(parameters, steps), "EmbeddingDropRate");
        Assert.Equal(low - DareAdvisor.EmbeddingShift, embeddings.Low!.Value, 12);
        Assert.Equal(high - DareAdvisor.EmbeddingShift, embeddings.High!.Value, 12);
    }

    [Theory]
    [InlineData(6_740_000_000L, 1000)]
    [InlineData(70_000_000_000L, 5000)]
    [InlineData(13_000_000_000L, null)]
    public void LoRA_derived_deltas_get_0_70_to_0_85_whatever_the_size(long parameters, int? steps)
    {
        var rate = Setting(Given(parameters, steps, lora: true), "DropRate");
        Assert.Equal((0.70, 0.85), (rate.Low!.Value, rate.High!.Value));
        Assert.Contains("rank up to 16", rate.Reason);
        Assert.Contains("linear", DareAdvisor.Recommend(Given(parameters, steps, lora: true))[0].Value);
    }

    [Fact]
    public void Unknown_steps_show_both_ranges()
    {
        var rate = Setting(Given(6_740_000_000L), "DropRate");
        Assert.Equal("0.85–0.90 (500–2K steps) or 0.90–0.95 (2K–10K steps)", rate.Value);
        Assert.Contains("steps unknown", rate.Reason);
    }

    [Fact]
    public void A_13B_model_beyond_2K_steps_says_the_table_has_no_row_for_it()
    {
        var rate = Setting(Given(13_000_000_000L, 5000), "DropRate");
        Assert.Equal((0.90, 0.95), (rate.Low!.Value, rate.High!.Value));
        Assert.Contains("no 13B row above 2K steps", rate.Reason);
    }

    [Fact]
    public void Natural_sparsity_above_70_percent_lowers_the_rate_and_at_70_percent_does_not()
    {
        Assert.Equal(0.75, Setting(Given(6_740_000_000L, 1000, sparsity: 0.71), "DropRate").Low!.Value, 12);
        Assert.Equal(0.85, Setting(Given(6_740_000_000L, 1000, sparsity: 0.70), "DropRate").Low!.Value, 12);
    }

    [Theory]
    [InlineData(1, TaskVectorRelation.Single, "DARE only", "not used")]
    [InlineData(2, TaskVectorRelation.Diverse, "dare_linear", "not used")]
    [InlineData(2, TaskVectorRelation.SameDomain, "linear (Merge-Linear)", "not used")]
    [InlineData(3, TaskVectorRelation.Diverse, "dare_ties", "0.5")]
    [InlineData(5, TaskVectorRelation.Diverse, "dare_ties", "0.5")]
    [InlineData(4, TaskVectorRelation.SameDomain, "linear (Merge-Linear)", "not used")]
    [InlineData(6, TaskVectorRelation.Diverse, "dare_ties (Invoke-DareDrop | Merge-Ties), DARE mandatory", "0.5")]
    [InlineData(8, TaskVectorRelation.SameDomain, "dare_ties (Invoke-DareDrop | Merge-Ties), DARE mandatory", "0.5")]
    public void Method_follows_the_number_of_models_and_their_measured_relation(int models, TaskVectorRelation relation, string method, string keepRatio)
    {
        var advice = DareAdvisor.Recommend(Given(6_740_000_000L, 1000, models: models, relation: relation));
        Assert.Equal(new[] { "Method", "DropRate", "EmbeddingDropRate", "Rescale", "KeepRatio" }, advice.Select(r => r.Setting));
        Assert.StartsWith(method, advice[0].Value);
        Assert.Equal(keepRatio, advice[4].Value);
        if (keepRatio == "0.5") Assert.Contains("more aggressive than 0.2", advice[4].Reason);
        Assert.All(advice, r => Assert.Same(advice[0].Measurements, r.Measurements));
    }

    [Fact]
    public void At_70B_DARE_is_critical_even_for_models_of_the_same_domain()
    {
        var advice = DareAdvisor.Recommend(Given(70_000_000_000L, 1000, relation: TaskVectorRelation.SameDomain));
        Assert.StartsWith("dare_linear", advice[0].Value);
        Assert.Contains("DARE is critical", advice[0].Reason);
        Assert.Equal("InverseKeep", advice[3].Value);
    }

    [Theory]
    [InlineData(9_999_999_999L, ModelSizeClass.Size7B)]
    [InlineData(10_000_000_000L, ModelSizeClass.Size13B)]
    [InlineData(39_999_999_999L, ModelSizeClass.Size13B)]
    [InlineData(40_000_000_000L, ModelSizeClass.Size70B)]
    public void Size_classes_begin_at_10B_and_40B(long parameters, ModelSizeClass expected) =>
        Assert.Equal(expected, DareAdvisor.SizeClassOf(parameters));
}
