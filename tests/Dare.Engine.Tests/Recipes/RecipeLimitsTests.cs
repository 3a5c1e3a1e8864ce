using System.Collections;
using System.Security.Cryptography;
using System.Text;
using Dare.Engine.Merge;
using Dare.Engine.Recipes;
using Dare.Engine.Safetensors;
using Xunit;

namespace Dare.Engine.Tests.Recipes;

/// <summary>Depth, cycle and size limits on recipes, the mistakes reported together, and the recipe kept out of large headers.</summary>
public class RecipeLimitsTests : IClassFixture<RecipeModels>
{
    private readonly RecipeModels _models;

    public RecipeLimitsTests(RecipeModels models) => _models = models;

    private static DareException ParseError(string yaml) => Assert.Throws<DareException>(() => RecipeParser.ParseText(yaml, "/recipes", "test.yml"));

    [Fact]
    public void Fifty_thousand_nested_brackets_are_refused_at_the_65th_with_line_and_column()
    {
        // Without the limit, YamlDotNet's tree builder recurses once per '[' and overflows the stack (it ends the process).
        var error = ParseError("merge_method: linear\nmodels: " + new string('[', 50_000));

        Assert.Equal(DareErrorId.RecipeInvalid, error.ErrorId);
        // Column of the 65th level: the mapping is level 1, so the 64th '[' (after "models: ", 8 characters) opens it.
        Assert.StartsWith($"test.yml, line 2, column {8 + 64}: nests lists and mappings more than 64 levels deep", error.Message);
    }

    [Theory]
    [InlineData(63, false)]
    [InlineData(64, true)]
    public void Nesting_is_allowed_up_to_64_levels(int brackets, bool refused)
    {
        // The top-level mapping is the first level; each bracket adds one.
        var yaml = "merge_method: linear\nmodels: " + new string('[', brackets) + new string(']', brackets);
        var error = ParseError(yaml);
        Assert.Equal(refused, error.Message.Contains("levels deep"));
    }

    [Theory]
    [InlineData("merge_method: linear\nmodels: &m [a, *m]", "line 2, column 16: uses the alias *m inside the list or mapping it names (a cycle).")]
    // YamlDotNet hashes mapping keys; a key that contains itself overflowed the stack.
    [InlineData("? &k [*k]\n: 1", "line 1, column 3: has a mapping key that is a list or mapping; recipe keys are plain text.")]
    [InlineData("a: &a [x]\n? *a\n: 1", "line 2, column 3: has a mapping key that is a list or mapping")]
    public void Alias_cycles_and_list_keys_are_refused_before_the_tree_is_built(string yaml, string expected)
    {
        var error = ParseError(yaml);
        Assert.Equal(DareErrorId.RecipeInvalid, error.ErrorId);
        Assert.StartsWith($"test.yml, {expected}", error.Message);
    }

    [Fact]
    public void An_alias_bomb_is_refused_by_its_expanded_size()
    {
        // Ten levels of nine aliases each stand for 9^10 (3.5 billion) values in 300 bytes.
        var yaml = new StringBuilder("a0: &a0 [x]\n");
        for (var level = 1; level <= 10; level++) yaml.Append($"a{level}: &a{level} [{string.Join(", ", Enumerable.Repeat($"*a{level - 1}", 9))}]\n");
        var clock = System.Diagnostics.Stopwatch.StartNew();

        var error = ParseError(yaml.ToString());

        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(5), $"took {clock.Elapsed}");
        Assert.Contains("holds more than 100,000 values (aliases count as the values they repeat)", error.Message);
    }

    [Fact]
    public void Aliases_that_repeat_a_block_still_work()
    {
        var recipe = RecipeParser.ParseText("merge_method: linear\nmodels:\n  - model: a\n    parameters: &p { weight: 0.5 }\n  - model: b\n    parameters: *p\n", "/r").Recipes[0];
        Assert.All(recipe.Models, m => Assert.Equal(new ConstantParameter(0.5), m.Parameters.Weight!.Fallback));
    }

    [Fact]
    public void Objects_repeated_into_billions_of_values_are_refused()
    {
        var numbers = Enumerable.Repeat((object)1.0, 1000).ToList();
        var tens = Enumerable.Repeat((object)numbers, 1000).ToList();
        var recipe = new Hashtable { ["merge_method"] = "linear", ["models"] = Enumerable.Repeat((object)tens, 1000).ToList() };

        var error = Assert.Throws<DareException>(() => RecipeParser.ParseObject(recipe, "/here"));

        Assert.Equal(DareErrorId.RecipeInvalid, error.ErrorId);
        Assert.Contains("is past the recipe's 100,000th value", error.Message);
    }

    [Fact]
    public void A_dictionary_that_contains_itself_is_refused_with_its_key_path()
    {
        var model = new Dictionary<string, object?> { ["model"] = "a" };
        var parameters = new Hashtable { ["weight"] = 1 };
        model["parameters"] = parameters;
        parameters["again"] = model;
        var recipe = new Dictionary<string, object?> { ["merge_method"] = "linear", ["models"] = new List<object?> { model } };

        var error = Assert.Throws<DareException>(() => RecipeParser.ParseObject(recipe, "/here"));

        Assert.Equal(DareErrorId.RecipeInvalid, error.ErrorId);
        Assert.StartsWith("recipe object (models[0].parameters.again): contains itself", error.Message);
    }

    [Fact]
    public void A_list_that_contains_itself_and_a_deep_chain_are_refused()
    {
        var list = new ArrayList { 1.0 };
        list.Add(list);
        var cyclic = new Hashtable { ["merge_method"] = "linear", ["models"] = new ArrayList { new Hashtable { ["model"] = "a", ["parameters"] = new Hashtable { ["weight"] = list } } } };
        Assert.Contains("(models[0].parameters.weight[1]): contains itself", Assert.Throws<DareException>(() => RecipeParser.ParseObject(cyclic, "/here")).Message);

        var deep = new Hashtable();
        var inner = deep;
        for (var i = 0; i < 10_000; i++) inner = (Hashtable)(inner["x"] = new Hashtable());
        var error = Assert.Throws<DareException>(() => RecipeParser.ParseObject(new Hashtable { ["merge_method"] = "linear", ["models"] = deep }, "/here"));
        Assert.Equal(DareErrorId.RecipeInvalid, error.ErrorId);
        // 64 levels open (the recipe, then models and 62 x's); the 65th is refused.
        Assert.Contains($"(models{string.Concat(Enumerable.Repeat(".x", 63))}): nests", error.Message);
    }

    [Fact]
    public void The_same_dictionary_used_twice_is_not_a_cycle()
    {
        var shared = new Hashtable { ["weight"] = 0.5 };
        var recipe = new Hashtable
        {
            ["merge_method"] = "linear",
            ["models"] = new ArrayList { new Hashtable { ["model"] = "a", ["parameters"] = shared }, new Hashtable { ["model"] = "b", ["parameters"] = shared } },
        };
        var parsed = RecipeParser.ParseObject(recipe, "/here").Recipes[0];
        Assert.All(parsed.Models, m => Assert.Equal(new ConstantParameter(0.5), m.Parameters.Weight!.Fallback));
    }

    [Fact]
    public void Text_over_4_MB_is_refused()
    {
        var text = "merge_method: linear\nmodels: [a]\n" + new string('#', RecipeLimits.MaxTextLength);
        var error = ParseError(text);
        Assert.Equal(DareErrorId.RecipeInvalid, error.ErrorId);
        Assert.StartsWith($"test.yml: is too long ({text.Length} characters); a recipe may be at most 4 MB", error.Message);
    }

    [Fact]
    public void A_file_over_4_MB_is_refused_by_its_length_before_it_is_read()
    {
        var file = Path.Combine(_models.Directory, "huge.yml");
        // A sparse 50 MB file of zero bytes: refused from its length, so nothing near 50 MB is ever read or held.
        using (var stream = File.Create(file)) stream.SetLength(50L << 20);
        var before = GC.GetAllocatedBytesForCurrentThread();

        var error = Assert.Throws<DareException>(() => RecipeParser.ParseFile(file));

        Assert.True(GC.GetAllocatedBytesForCurrentThread() - before < 1 << 20, "refusing the file allocated over 1 MB");
        Assert.Equal(DareErrorId.RecipeInvalid, error.ErrorId);
        Assert.Contains($"is too long ({50L << 20} bytes)", error.Message);
        Assert.Equal(file, error.FilePath);
    }

    [Fact]
    public void Several_mistakes_are_reported_together_each_with_its_location()
    {
        var error = ParseError("""
            merge_method: ties
            base_model: base
            models:
              - model: a
                parameters: { wieght: 1, density: x }
              - model: b
                parameters: { weight: 1, normalize: true }
            dtype: int4
            """);

        Assert.Equal(DareErrorId.RecipeInvalid, error.ErrorId);
        var lines = error.Message.Split('\n').Select(l => l.Trim()).ToList();
        Assert.StartsWith("test.yml has 4 mistakes; nothing was written:", lines[0]);
        var expected = new[]
        {
            "- test.yml, line 5, column 19 (models[0].parameters.wieght): 'wieght' is not a recipe key",
            "- test.yml, line 5, column 39 (models[0].parameters.density): must be a finite number, not 'x'.",
            "- test.yml, line 7, column 30 (models[1].parameters.normalize): 'normalize' applies to the whole merge",
            "- test.yml, line 8, column 8 (dtype): 'int4' is not supported",
        };
        Assert.Equal(expected.Length, lines.Count - 1);
        for (var i = 0; i < expected.Length; i++) Assert.StartsWith(expected[i], lines[i + 1]);
    }

    [Fact]
    public void A_misspelt_required_key_is_one_mistake_with_its_own_error_id()
    {
        var error = ParseError("merge_mehtod: ties\nmodels: [{ modle: a }]");
        Assert.Equal(DareErrorId.RecipeUnknownKey, error.ErrorId);
        Assert.Contains("has 2 mistakes", error.Message);
        Assert.Contains("Did you mean 'merge_method'?", error.Message);
        Assert.Contains("Did you mean 'model'?", error.Message);
        Assert.DoesNotContain("has no", error.Message);
    }

    [Fact]
    public void The_planner_reports_every_bad_value_and_missing_model_together()
    {
        var yaml = $"""
            merge_method: dare_ties
            base_model: {_models.Base.Path}
            models:
              - model: {_models.Math.Path}
                parameters: {"{"} weight: 1, density: 1.5 {"}"}
              - model: ./nowhere
                parameters: {"{"} weight: 1, drop_rate: 1 {"}"}
            """;
        var batch = RecipeParser.ParseText(yaml, _models.Directory, "test.yml");
        var output = Path.Combine(_models.Directory, "never");

        var error = Assert.Throws<DareException>(() => RecipePlanner.Plan(batch, new RecipePlanOptions { OutputPath = output }));

        Assert.Contains("has 3 mistakes", error.Message);
        Assert.Contains("line 5, column 39 (models[0].parameters.density): density must satisfy 0 < density <= 1; 1.5 does not.", error.Message);
        Assert.Contains("(models[1].parameters.drop_rate): drop_rate must satisfy 0 <= drop_rate < 1; 1 does not.", error.Message);
        Assert.Contains("line 6, column 12 (models[1].model): './nowhere' resolves to", error.Message);
        Assert.False(Directory.Exists(output));
    }

    [Fact]
    public void A_recipe_over_64_KB_is_kept_out_of_the_header_and_named_by_its_SHA_256()
    {
        var recipe = "# a long recipe\n" + string.Concat(Enumerable.Range(0, 3000).Select(i => $"# line {i} of a recipe much longer than a header should hold\n"));
        Assert.True(recipe.Length > 64 * 1024);
        var destination = Path.Combine(_models.Directory, "long-recipe");

        new MergeExecutor().Export(_models.Vector(_models.Math), new ExportOptions { Destination = destination, RecipeYaml = recipe });

        // The file is the recipe followed by the record of its inputs (dare_inputs), which the hash does not cover.
        var file = File.ReadAllText(Path.Combine(destination, MergeExecutor.RecipeFileName));
        Assert.StartsWith(recipe, file);
        Assert.Contains(InputFingerprints.Key + ":", file[recipe.Length..]);
        var onDisk = Encoding.UTF8.GetBytes(file[..recipe.Length]);
        var header = ReadHeaderMetadata(Path.Combine(destination, "model.safetensors"));
        var note = header["dare_recipe"];
        Assert.True(note.Length < 1024, $"the header keeps {note.Length} characters of recipe");
        Assert.Contains(Convert.ToHexString(SHA256.HashData(onDisk)).ToLowerInvariant(), note);
        Assert.Contains(MergeExecutor.RecipeFileName, note);
        Assert.Equal(note, Checkpoint.Open(destination).Metadata["dare_recipe"]);
    }

    [Fact]
    public void A_recipe_up_to_64_KB_is_stored_whole_in_the_header()
    {
        var recipe = "# short\n" + new string('#', 64 * 1024 - 9) + "\n";
        Assert.Equal(64 * 1024, recipe.Length);
        var destination = Path.Combine(_models.Directory, "short-recipe");

        new MergeExecutor().Export(_models.Vector(_models.Math), new ExportOptions { Destination = destination, RecipeYaml = recipe });

        Assert.Equal(recipe, ReadHeaderMetadata(Path.Combine(destination, "model.safetensors"))["dare_recipe"]);
    }

    // The __metadata__ object read straight from the file's JSON header (not through Dare's reader).
    private static Dictionary<string, string> ReadHeaderMetadata(string file)
    {
        var bytes = File.ReadAllBytes(file);
        var length = (int)BitConverter.ToUInt64(bytes, 0);
        using var json = System.Text.Json.JsonDocument.Parse(bytes.AsMemory(8, length));
        return json.RootElement.GetProperty("__metadata__").EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetString()!);
    }
}
