using Dare.Engine.Merge;
using Dare.Engine.Recipes;
using Dare.Engine.Tests.Recipes;
using Xunit;

namespace Dare.Engine.Tests.Guidance;

/// <summary>Each guidance warning appears when its mistake is made, and not otherwise.</summary>
public sealed class MergeMistakesTests : IClassFixture<RecipeModels>
{
    private readonly RecipeModels _models;

    public MergeMistakesTests(RecipeModels models) => _models = models;

    private static TensorParameter LowerOnVocabulary(double layers, double vocabulary) => new RuleParameter(new[]
    {
        new ParameterRule("*embed_tokens*", vocabulary, FilterMatch.Wildcard),
        new ParameterRule("lm_head*", vocabulary, FilterMatch.Wildcard),
    }, layers);

    private static IEnumerable<GuidanceWarningId> Ids(IEnumerable<GuidanceWarning> warnings) => warnings.Select(w => w.Id);

    [Fact]
    public void A_drop_step_that_follows_the_guidance_gets_no_warning()
    {
        var vector = _models.Vector(_models.Math).WithDare(new DareOptions(LowerOnVocabulary(0.9, 0.5), 1, 0));
        Assert.Empty(MergeMistakes.OfDropStep(vector));
    }

    [Fact]
    public void Rescale_None_warns_that_the_update_shrinks_by_1_minus_p()
    {
        var vector = _models.Vector(_models.Math).WithDare(new DareOptions(LowerOnVocabulary(0.9, 0.5), 1, 0, DareRescale.None));
        var warning = Assert.Single(MergeMistakes.OfDropStep(vector));
        Assert.Equal(GuidanceWarningId.NoRescale, warning.Id);
        Assert.Contains("shrinks by 1 − p (to 0.1 of δ at p = 0.9)", warning.Message);
        Assert.Empty(MergeMistakes.OfDropStep(_models.Vector(_models.Math).WithDare(new DareOptions(LowerOnVocabulary(0.9, 0.5), 1, 0, DareRescale.L1))));
    }

    [Fact]
    public void The_layers_rate_on_embeddings_and_head_warns_and_names_them()
    {
        var vector = _models.Vector(_models.Math).WithDare(new DareOptions(0.9, 1, 0));
        var warning = Assert.Single(MergeMistakes.OfDropStep(vector));
        Assert.Equal(GuidanceWarningId.EmbeddingDropRate, warning.Id);
        Assert.Contains("'model.embed_tokens.weight' at 0.9", warning.Message);
        Assert.Contains("'lm_head.weight' at 0.9", warning.Message);
        // The rate it suggests is the layers' less the recommendation's embedding shift (0.3), not a fixed value.
        Assert.Contains("'*embed_tokens*' = 0.6; '*lm_head*' = 0.6", warning.Message);
        var atHalf = Assert.Single(MergeMistakes.OfDropStep(_models.Vector(_models.Math).WithDare(new DareOptions(0.5, 1, 0)))).Message;
        Assert.Contains("'*embed_tokens*' = 0.2;", atHalf);
        // Lower on the embedding only: the head still warns, alone.
        var headOnly = _models.Vector(_models.Math).WithDare(new DareOptions(new RuleParameter(new[] { new ParameterRule("*embed_tokens*", 0.5, FilterMatch.Wildcard) }, 0.9), 1, 0));
        var message = Assert.Single(MergeMistakes.OfDropStep(headOnly)).Message;
        Assert.DoesNotContain("'model.embed_tokens.weight' at", message);
        Assert.Contains("'lm_head.weight' at 0.9", message);
    }

    [Theory]
    [InlineData(0.95, true)]
    [InlineData(0.99, true)]
    [InlineData(0.94, false)]
    public void A_drop_rate_of_0_95_or_more_on_a_model_under_13B_warns(double rate, bool warns)
    {
        var vector = _models.Vector(_models.Math).WithDare(new DareOptions(LowerOnVocabulary(rate, 0.5), 1, 0));
        Assert.Equal(warns, Ids(MergeMistakes.OfDropStep(vector)).Contains(GuidanceWarningId.HighDropRate));
    }

    [Fact]
    public void Vectors_sharing_seed_and_stream_warn_at_the_merge_and_distinct_streams_do_not()
    {
        var rate = LowerOnVocabulary(0.9, 0.5);
        var math = _models.Vector(_models.Math).WithDare(new DareOptions(rate, 7, 0));
        var code = _models.Vector(_models.Code).WithDare(new DareOptions(rate, 7, 0));
        var chat = _models.Vector(_models.Chat).WithDare(new DareOptions(rate, 7, 1));
        var warning = Assert.Single(MergeMistakes.OfMerge(new[] { math, code, chat }));
        Assert.Equal(GuidanceWarningId.SharedMask, warning.Id);
        Assert.Equal(new[] { 0, 1 }, warning.Inputs);
        Assert.Contains("'math' and 'code' share drop seed 7 and mask stream 0", warning.Message);
        Assert.Empty(MergeMistakes.OfMerge(new[] { math, chat }));
        // Same stream, other seed: other masks.
        Assert.Empty(MergeMistakes.OfMerge(new[] { math, _models.Vector(_models.Code).WithDare(new DareOptions(rate, 8, 0)) }));
    }

    [Fact]
    public void A_single_model_with_DARE_and_no_merge_is_explained_at_export()
    {
        var dropped = _models.Vector(_models.Math).WithDare(new DareOptions(LowerOnVocabulary(0.9, 0.5), 1, 0));
        var warning = MergeMistakes.OfExport(dropped);
        Assert.NotNull(warning);
        Assert.Contains("base + DARE(δ)", warning!.Message);
        Assert.Null(MergeMistakes.OfExport(_models.Vector(_models.Math)));
        var merged = TaskVector.Combine(new[] { dropped, _models.Vector(_models.Code).WithDare(new DareOptions(0.9, 1, 1)) },
            new MergeOptions(MergeMethod.Linear, new TensorParameter[] { 1.0, 1.0 }, true));
        Assert.Null(MergeMistakes.OfExport(merged));
    }

    private MergePlan Plan(string yaml) =>
        RecipePlanner.Plan(RecipeParser.ParseText(yaml, _models.Directory), new RecipePlanOptions { OutputPath = Path.Combine(_models.Directory, "out-" + Guid.NewGuid().ToString("N")), DefaultSeed = 3 }).Plans[0];

    private const string Vocabulary = "\n    - filter: embed_tokens\n      value: 0.5\n    - filter: lm_head\n      value: 0.5\n    - value: 0.9";

    [Fact]
    public void A_recipe_that_follows_the_guidance_plans_without_guidance_warnings()
    {
        var plan = Plan($"merge_method: ties\nbase_model: base\nmodels:\n  - model: math\n  - model: code\nparameters:\n  weight: 1\n  density: 0.5\n  drop_rate:{Vocabulary}\n");
        Assert.Empty(plan.Guidance);
        Assert.Empty(plan.Warnings);
    }

    [Fact]
    public void Recipe_mistakes_are_reported_at_the_keys_that_make_them()
    {
        var yaml = "merge_method: ties\nbase_model: base\nmodels:\n  - model: math\n    parameters: { mask_stream: 4 }\n  - model: code\n    parameters: { mask_stream: 4 }\n" +
            $"parameters:\n  weight: 1\n  density: 0.5\n  rescale: false\n  drop_rate:{Vocabulary}\n";
        var guidance = Plan(yaml).Guidance;
        Assert.Equal(2, guidance.Count);
        var rescale = Assert.Single(guidance, g => g.Contains("without rescaling"));
        Assert.Contains("line 11", rescale); // the global rescale key
        var shared = Assert.Single(guidance, g => g.Contains("share drop seed 3 and mask stream 4"));
        Assert.Contains("line 7", shared); // the second model's mask_stream
    }

    [Fact]
    public void A_recipe_with_one_model_and_DARE_is_explained_at_merge_method()
    {
        var plan = Plan($"merge_method: dare_linear\nbase_model: base\nmodels:\n  - model: math\nparameters:\n  weight: 1\n  drop_rate:{Vocabulary}\n");
        var single = Assert.Single(plan.Guidance);
        Assert.Contains("line 1", single);
        Assert.Contains("one model with DARE and nothing to merge it with", single);
    }
}
