using System.Security.Cryptography;
using System.Text.Json.Nodes;
using Dare.Engine.Merge;
using Dare.Engine.Recipes;
using Dare.Engine.Safetensors;
using Dare.Engine.Tests.Merge;
using Xunit;
using YamlDotNet.RepresentationModel;

namespace Dare.Engine.Tests.Vocabulary;

/// <summary>An output looks like a merge people publish: model card, mergekit_config.yml in the user's terms, the base's LICENSE, no local paths in the header.</summary>
public sealed class PublishedOutputTests : IDisposable
{
    private readonly TestModels _models = new();

    public void Dispose() => _models.Dispose();

    private const string DareTiesRecipe = "merge_method: dare_ties\nbase_model: ./base\nmodels:\n  - model: ./chat\n    parameters: { weight: 1, density: 0.53 }\n  - model: ./code\n    parameters: { weight: 0.5, density: 0.3 }\nrandom_seed: 3\n";

    private Checkpoint MergeByRecipe(string yaml = DareTiesRecipe)
    {
        var random = new Random(41);
        var family = ModelFamily.Llama2 with { Hidden = 4 };
        var tokenizer = TestTokenizer.Llama(16);
        var (_, baseValues) = ShapedModels.Write(_models, "base", family, 16, tokenizer, random);
        File.WriteAllText(Path.Combine(_models.PathOf("base"), "LICENSE"), "LLAMA 2 COMMUNITY LICENSE AGREEMENT (test copy)\n");
        ShapedModels.FineTune(_models, "chat", family, 16, tokenizer, baseValues, random);
        ShapedModels.FineTune(_models, "code", family, 16, tokenizer, baseValues, random);
        var plan = RecipePlanner.Plan(RecipeParser.ParseText(yaml, _models.Root), new RecipePlanOptions { OutputPath = _models.PathOf("merged") }).Plans[0];
        new MergeExecutor().Export(plan.Vector, plan.Export);
        return Checkpoint.Open(_models.PathOf("merged"));
    }

    [Fact]
    public void The_mergekit_config_keeps_dare_ties_its_densities_and_the_paths_as_written()
    {
        var output = MergeByRecipe();
        var yaml = new YamlStream();
        yaml.Load(new StringReader(File.ReadAllText(Path.Combine(output.Directory, ModelCardWriter.MergekitConfigFileName))));
        var root = (YamlMappingNode)yaml.Documents[0].RootNode;
        Assert.Equal("dare_ties", root["merge_method"].ToString());
        Assert.Equal("./base", root["base_model"].ToString());
        var models = (YamlSequenceNode)root["models"];
        Assert.Equal(new[] { "./chat", "./code" }, models.Select(m => ((YamlMappingNode)m)["model"].ToString()));
        Assert.Equal(new[] { "0.53", "0.3" }, models.Select(m => ((YamlMappingNode)((YamlMappingNode)m)["parameters"])["density"].ToString()));
        Assert.DoesNotContain("drop_rate", File.ReadAllText(Path.Combine(output.Directory, ModelCardWriter.MergekitConfigFileName)));
    }

    [Fact]
    public void The_mergekit_config_of_a_della_linear_merge_keeps_its_method_densities_and_epsilons()
    {
        var output = MergeByRecipe("merge_method: della_linear\nbase_model: ./base\nmodels:\n  - model: ./chat\n    parameters: { weight: 1, density: 0.5, epsilon: 0.1 }\n" +
            "  - model: ./code\n    parameters: { weight: 0.5, density: 0.7, epsilon: 0.2 }\nrandom_seed: 3\n");
        var yaml = new YamlStream();
        yaml.Load(new StringReader(File.ReadAllText(Path.Combine(output.Directory, ModelCardWriter.MergekitConfigFileName))));
        var root = (YamlMappingNode)yaml.Documents[0].RootNode;
        Assert.Equal("della_linear", root["merge_method"].ToString());
        var parameters = ((YamlSequenceNode)root["models"]).Select(m => (YamlMappingNode)((YamlMappingNode)m)["parameters"]).ToList();
        Assert.Equal(new[] { "0.5", "0.7" }, parameters.Select(p => p["density"].ToString()));
        Assert.Equal(new[] { "0.1", "0.2" }, parameters.Select(p => p["epsilon"].ToString()));
    }

    [Fact]
    public void A_partitioned_union_vocabulary_export_has_the_single_exports_bytes_card_config_and_vocab_size_included()
    {
        var random = new Random(43);
        var family = ModelFamily.Llama2 with { Hidden = 4 };
        var tokenizer = TestTokenizer.Llama(16);
        var (_, baseValues) = ShapedModels.Write(_models, "base", family, 16, tokenizer, random);
        ShapedModels.FineTune(_models, "chat", family, 18, tokenizer.With(new[] { "<tool>", "<call>" }, _ => true), baseValues, random);
        ShapedModels.FineTune(_models, "code", family, 16, tokenizer, baseValues, random);
        var yaml = "merge_method: della_linear\nbase_model: ./base\nmodels:\n  - model: ./chat\n    parameters: { weight: 1, density: 0.5, epsilon: 0.1 }\n" +
            "  - model: ./code\n    parameters: { weight: 0.5, density: 0.7, epsilon: 0.2 }\nrandom_seed: 3\ntokenizer_source: union\n";
        MergePlan PlanTo(string name, Dare.Engine.Partitions.ExportPartition? partition) =>
            RecipePlanner.Plan(RecipeParser.ParseText(yaml, _models.Root), new RecipePlanOptions { OutputPath = _models.PathOf(name), MaxShardSize = 256, Partition = partition }).Plans[0];
        var single = PlanTo("single", null);
        new MergeExecutor().Export(single.Vector, single.Export);
        Assert.True(Directory.GetFiles(_models.PathOf("single"), "model-*.safetensors").Length >= 3, "the fixture should make several shards");
        foreach (var index in new[] { 1, 0 })
        {
            var part = PlanTo("parts", new Dare.Engine.Partitions.ExportPartition(index, 2));
            new MergeExecutor().Export(part.Vector, part.Export);
        }

        var files = Directory.GetFiles(_models.PathOf("single")).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToList();
        Assert.Equal(files, Directory.GetFiles(_models.PathOf("parts")).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToList());
        Assert.Contains(ModelCardWriter.ModelCardFileName, files);
        Assert.Contains(ModelCardWriter.MergekitConfigFileName, files);
        foreach (var file in files)
        {
            Assert.True(File.ReadAllBytes(Path.Combine(_models.PathOf("single"), file!)).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(_models.PathOf("parts"), file!))), $"{file} differs");
        }
        // The union holds the base's 16 tokens and the two the chat model added.
        Assert.Equal(18, JsonNode.Parse(File.ReadAllText(Path.Combine(_models.PathOf("parts"), "config.json")))!["vocab_size"]!.GetValue<long>());
    }

    [Fact]
    public void A_slice_merge_onto_a_union_vocabulary_keeps_the_stacks_layer_count_and_writes_the_union_size()
    {
        var random = new Random(47);
        var family = ModelFamily.Llama2 with { Hidden = 4 };
        var tokenizer = TestTokenizer.Llama(16);
        var (_, baseValues) = ShapedModels.Write(_models, "base", family, 16, tokenizer, random);
        ShapedModels.FineTune(_models, "chat", family, 18, tokenizer.With(new[] { "<tool>", "<call>" }, _ => true), baseValues, random);
        var yaml = "slices:\n  - sources:\n      - model: ./base\n        layer_range: [0, 1]\n      - model: ./chat\n        layer_range: [1, 2]\n" +
            "merge_method: linear\nparameters: { weight: 1.0 }\ntokenizer_source: union\n";
        var plan = RecipePlanner.Plan(RecipeParser.ParseText(yaml, _models.Root), new RecipePlanOptions { OutputPath = _models.PathOf("stacked") }).Plans[0];
        new MergeExecutor().Export(plan.Vector, plan.Export);
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(_models.PathOf("stacked"), "config.json")))!;
        Assert.Equal(1, config["num_hidden_layers"]!.GetValue<int>());
        Assert.Equal(18, config["vocab_size"]!.GetValue<long>());
        var output = Checkpoint.Open(_models.PathOf("stacked"));
        Assert.Equal(new long[] { 18, 4 }, output.Find("model.embed_tokens.weight")!.Shape);
        Assert.Null(output.Find("model.layers.1.mlp.up_proj.weight"));
    }

    [Fact]
    public void The_model_card_names_the_base_and_the_merged_models_and_holds_the_configuration()
    {
        var output = MergeByRecipe();
        var card = File.ReadAllText(Path.Combine(output.Directory, ModelCardWriter.ModelCardFileName));
        Assert.StartsWith("---\nbase_model:\n- \"./base\"\n- \"./chat\"\n- \"./code\"\n", card);
        Assert.Contains("tags:\n- merge\n", card);
        Assert.Contains("merge_method: dare_ties", card);
        Assert.Equal(File.ReadAllText(Path.Combine(_models.PathOf("base"), "LICENSE")), File.ReadAllText(Path.Combine(output.Directory, "LICENSE")));
    }

    [Fact]
    public void The_header_holds_no_local_path_but_each_inputs_size_and_header_hash()
    {
        var output = MergeByRecipe();
        foreach (var (key, value) in output.Metadata) Assert.DoesNotContain(_models.Root, value);
        var inputs = JsonNode.Parse(output.Metadata["dare_inputs"])!.AsArray();
        Assert.Equal(new[] { "base", "chat", "code" }, inputs.Select(i => i!["name"]!.GetValue<string>()));
        foreach (var input in inputs)
        {
            var file = Path.Combine(_models.PathOf(input!["name"]!.GetValue<string>()), "model.safetensors");
            var bytes = File.ReadAllBytes(file);
            var headerLength = (int)BitConverter.ToInt64(bytes, 0);
            Assert.Equal(bytes.Length, input["bytes"]!.GetValue<long>());
            Assert.Equal(Convert.ToHexString(SHA256.HashData(bytes.AsSpan(0, 8 + headerLength))).ToLowerInvariant(), input["header_sha256"]!.GetValue<string>());
        }
        // The recipe file beside the weights keeps the absolute paths a replay needs.
        Assert.Contains(_models.PathOf("base"), File.ReadAllText(Path.Combine(output.Directory, MergeExecutor.RecipeFileName)));
    }
}
