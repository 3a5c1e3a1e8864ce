using Dare.Engine.Merge;
using Dare.Engine.Recipes;
using Dare.Engine.Safetensors;
using Xunit;

namespace Dare.Engine.Tests.Recipes;

public class RecipeParserTests
{
    private static RecipeBatch Parse(string yaml) => RecipeParser.ParseText(yaml, "/recipes", "test.yml");

    private static DareException ParseError(string yaml) => Assert.Throws<DareException>(() => Parse(yaml));

    [Fact]
    public void Parses_the_issue_example_into_typed_settings()
    {
        var batch = Parse("""
            merge_method: dare_ties
            base_model: ./llama2-7b
            models:
              - model: ./wizardmath
                parameters: { weight: 1.0, density: 0.1 }
              - model: ./codellama
                parameters:
                  weight: 0.5
                  density:
                    - filter: embed_tokens
                      value: 0.5
                    - value: 0.1
            parameters: { normalize: true, lambda: 1.0, rescale: true, int8_mask: true }
            dtype: float32
            out_dtype: bfloat16
            tokenizer_source: base
            random_seed: 42
            """);

        var recipe = Assert.Single(batch.Recipes);
        Assert.Equal("dare_ties", recipe.Method.Name);
        Assert.Equal("./llama2-7b", recipe.BaseModel);
        Assert.Equal(new[] { "./wizardmath", "./codellama" }, recipe.Models.Select(m => m.Model));
        Assert.Equal(new ConstantParameter(1.0), recipe.Models[0].Parameters.Weight!.Fallback);
        Assert.Equal(new ConstantParameter(0.1), recipe.Models[0].Parameters.Density!.Fallback);
        var density = recipe.Models[1].Parameters.Density!;
        var rule = Assert.Single(density.Rules);
        Assert.Equal(("embed_tokens", FilterMatch.Substring), (rule.Filter, rule.Match));
        Assert.Equal(new ConstantParameter(0.5), rule.Value);
        Assert.Equal(new ConstantParameter(0.1), density.Fallback);
        Assert.Equal((true, 1.0, DareRescale.InverseKeep, true), (recipe.Parameters.Normalize, recipe.Parameters.Lambda, recipe.Parameters.Rescale, recipe.Parameters.Int8Mask));
        Assert.Equal((SafetensorsDType.F32, SafetensorsDType.BF16, 42L), (recipe.DType, recipe.OutDType, recipe.RandomSeed));
        Assert.Equal(SafetensorsDType.BF16, recipe.OutputDType);
    }

    [Fact]
    public void Reads_gradients_wildcard_filters_rescale_kinds_and_the_output_block()
    {
        var recipe = Parse("""
            merge_method: ties
            base_model: base
            models:
              - model: a
                parameters:
                  weight: [0, 0.5, 1]
                  drop_rate: [{ filter: "*embed*", value: 0.2, match: wildcard }, { filter: "*", value: 0.9 }]
                  rescale: l1
                  random_seed: 7
                  mask_stream: 3
            parameters: { sign_method: count, normalize: off }
            output: { path: out/merged, max_shard_size: 500MB, delta_only: yes }
            """).Recipes[0];

        var parameters = recipe.Models[0].Parameters;
        Assert.Equal(new[] { 0, 0.5, 1 }, Assert.IsType<GradientParameter>(parameters.Weight!.Fallback).Points);
        var rule = Assert.Single(parameters.DropRate!.Rules);
        Assert.Equal(("*embed*", FilterMatch.Wildcard), (rule.Filter, rule.Match));
        // mergekit's filter "*" matches every tensor: it is the fallback.
        Assert.Equal(new ConstantParameter(0.9), parameters.DropRate.Fallback);
        Assert.Equal((DareRescale.L1, 7L, 3), (parameters.Rescale, parameters.RandomSeed, parameters.MaskStream));
        Assert.Equal((SignMethod.Count, false), (recipe.Parameters.SignMethod, recipe.Parameters.Normalize));
        Assert.Equal(Path.GetFullPath("/recipes/out/merged"), recipe.OutputPath);
        Assert.Equal((500_000_000L, true), (recipe.MaxShardSize, recipe.DeltaOnly));
    }

    [Fact]
    public void Reports_unknown_keys_with_file_line_column_key_path_and_the_nearest_valid_key()
    {
        var error = ParseError("""
            merge_method: ties
            base_model: base
            models:
              - model: a
                parameters:
                  weight: 1
                  densty: 0.5
            """);

        Assert.Equal(DareErrorId.RecipeUnknownKey, error.ErrorId);
        Assert.StartsWith("test.yml, line 7, column 7 (models[0].parameters.densty): 'densty' is not a recipe key", error.Message);
        Assert.Contains("Did you mean 'density'?", error.Message);
        Assert.Equal("test.yml", error.FilePath);
    }

    [Theory]
    [InlineData("merge_mehtod: ties\nmodels: [a]", "merge_method")]
    [InlineData("merge_method: ties\nmodels: [a]\nbase_modle: b", "base_model")]
    [InlineData("merge_method: ties\nmodels: [a]\nparameters: { normalise: true }", "normalize")]
    [InlineData("merge_method: ties\nmodels: [{ model: a, paramters: { weight: 1 } }]", "parameters")]
    [InlineData("merge_method: ties\nmodels: [a]\noutput: { max_shard: 1GB }", "max_shard_size")]
    [InlineData("merge_method: ties\nmodels: [{ model: a, parameters: { weight: [{ filtre: mlp, value: 1 }] } }]", "filter")]
    public void Suggests_the_nearest_valid_key_at_every_level(string yaml, string suggestion)
    {
        var error = ParseError(yaml);
        Assert.Equal(DareErrorId.RecipeUnknownKey, error.ErrorId);
        Assert.Contains($"Did you mean '{suggestion}'?", error.Message);
    }

    [Theory]
    [InlineData("merge_method: ties\nmodules: {}\nmodels: [a]", "modules", "line 2, column 1")]
    [InlineData("merge_method: ties\nmodels: [a]\nparameters:\n  embed_slerp: true", "parameters.embed_slerp", "line 4, column 3")]
    [InlineData("merge_method: ties\nmodels: [a]\ndtype: float64", "dtype", "line 3, column 8")]
    [InlineData("merge_method: ties\nmodels: [a]\nparameters: { rescale: l2 }", "parameters.rescale", "line 3, column 24")]
    [InlineData("merge_method: ties\nmodels: [a]\nparameters: { normalize: [true, false] }", "parameters.normalize", "line 3, column 26")]
    public void Rejects_what_mergekit_has_but_Dare_does_not_as_unsupported(string yaml, string keyPath, string position)
    {
        var error = ParseError(yaml);
        Assert.Equal(DareErrorId.RecipeUnsupported, error.ErrorId);
        Assert.Equal(DareErrorKind.NotImplemented, error.Kind);
        Assert.Contains($"test.yml, {position} ({keyPath})", error.Message);
    }

    [Theory]
    [InlineData("merge_method: ties\nmodels: [a]\nrandom_seed: 1.5", "random_seed", "whole number")]
    [InlineData("merge_method: ties\nmodels: [{ model: a, parameters: { weight: heavy } }]", "models[0].parameters.weight", "finite number")]
    [InlineData("merge_method: ties\nmodels: [{ model: a, parameters: { weight: [1, { filter: x, value: 1 }] } }]", "models[0].parameters.weight", "not a mix")]
    [InlineData("merge_method: ties\nmodels: [{ model: a, parameters: { normalize: true } }]", "models[0].parameters.normalize", "whole merge")]
    [InlineData("merge_method: ties\nmodels: [a]\nparameters: { mask_stream: 1 }", "parameters.mask_stream", "under a model")]
    [InlineData("merge_method: ties\nmodels: []", "models", "non-empty list")]
    [InlineData("merge_method: ties\nmodels: [a]\nparameters: { normalize: maybe }", "parameters.normalize", "true or false")]
    [InlineData("merge_method: [ties\nmodels: [a]", "", "not valid YAML")]
    public void Rejects_malformed_values_as_invalid_with_their_key_path(string yaml, string keyPath, string reason)
    {
        var error = ParseError(yaml);
        Assert.Equal(DareErrorId.RecipeInvalid, error.ErrorId);
        if (keyPath.Length > 0) Assert.Contains($"({keyPath})", error.Message);
        Assert.Contains(reason, error.Message);
    }

    [Fact]
    public void A_batch_needs_unique_names_and_keeps_document_order()
    {
        var batch = Parse("name: first\nmerge_method: linear\nmodels: [a]\n---\nname: second\nmerge_method: ties\nmodels: [first]\n");
        Assert.Equal(new[] { "first", "second" }, batch.Recipes.Select(r => r.Name));
        Assert.Equal(new[] { 0, 1 }, batch.Recipes.Select(r => r.Index));

        var unnamed = ParseError("merge_method: linear\nmodels: [a]\n---\nname: b\nmerge_method: linear\nmodels: [a]\n");
        Assert.Equal(DareErrorId.RecipeInvalid, unnamed.ErrorId);
        Assert.Contains("line 1, column 1", unnamed.Message);
        var repeated = ParseError("name: a\nmerge_method: linear\nmodels: [x]\n---\nname: a\nmerge_method: linear\nmodels: [x]\n");
        Assert.Contains("repeats the name 'a'", repeated.Message);
    }

    [Fact]
    public void Warns_about_filter_entries_after_the_fallback()
    {
        var batch = Parse("merge_method: ties\nmodels: [{ model: a, parameters: { weight: [{ value: 1 }, { filter: mlp, value: 0 }] } }]");
        var warning = Assert.Single(batch.Warnings);
        Assert.Contains("never applies", warning);
    }

    [Fact]
    public void Object_recipes_go_through_the_same_checks_without_line_numbers()
    {
        var recipe = new Dictionary<string, object?>
        {
            ["merge_method"] = "linear",
            ["models"] = new List<object?> { new Dictionary<string, object?> { ["model"] = "a", ["parameters"] = new Dictionary<string, object?> { ["weight"] = 0.25 } } },
        };
        var parsed = RecipeParser.ParseObject(recipe, "/here").Recipes[0];
        Assert.Equal(new ConstantParameter(0.25), parsed.Models[0].Parameters.Weight!.Fallback);

        recipe["merge_methd"] = "x";
        var error = Assert.Throws<DareException>(() => RecipeParser.ParseObject(recipe, "/here"));
        Assert.Equal(DareErrorId.RecipeUnknownKey, error.ErrorId);
        Assert.StartsWith("recipe object (merge_methd):", error.Message);
    }

    [Theory]
    [InlineData("density", "density", 0)]
    [InlineData("densty", "density", 1)]
    [InlineData("merge_mehtod", "merge_method", 2)]
    [InlineData("", "abc", 3)]
    [InlineData("kitten", "sitting", 3)]
    public void Levenshtein_distance(string a, string b, int distance) => Assert.Equal(distance, RecipeParser.Levenshtein(a, b));
}
