using Dare.Engine.Merge;
using Dare.Engine.Recipes;
using Dare.Engine.Safetensors;
using Dare.Engine.Tests.Merge;
using Xunit;
using YamlDotNet.RepresentationModel;

namespace Dare.Engine.Tests.Recipes;

/// <summary>mergekit_config.yml of slice recipes is written in the user's own terms: slices of sources with model and layer_range as given.</summary>
public sealed class MergekitConfigSlicesTests : IDisposable
{
    private readonly TestModels _models = new();

    public void Dispose() => _models.Dispose();

    /// <summary>Runs the recipe and returns its mergekit_config.yml and the recipe itself, both as YAML trees.</summary>
    private (YamlMappingNode Written, YamlMappingNode Given) Run(string yaml)
    {
        var plan = RecipePlanner.Plan(RecipeParser.ParseText(yaml, _models.Root), new RecipePlanOptions { OutputPath = _models.PathOf("out") }).Plans[0];
        new MergeExecutor().Export(plan.Vector, plan.Export);
        static YamlMappingNode Load(string text)
        {
            var stream = new YamlStream();
            stream.Load(new StringReader(text));
            return (YamlMappingNode)stream.Documents[0].RootNode;
        }
        return (Load(File.ReadAllText(Path.Combine(_models.PathOf("out"), ModelCardWriter.MergekitConfigFileName))), Load(yaml));
    }

    private static IEnumerable<(string Model, string Range)> Sources(YamlMappingNode recipe) =>
        ((YamlSequenceNode)recipe["slices"]).Cast<YamlMappingNode>().SelectMany(slice => ((YamlSequenceNode)slice["sources"]).Cast<YamlMappingNode>())
            .Select(source => (source["model"].ToString(), string.Join(",", ((YamlSequenceNode)source["layer_range"]).Select(n => n.ToString()))));

    [Fact]
    public void A_passthrough_frankenmerge_is_written_as_its_slices_with_models_ranges_and_scales_as_given()
    {
        _models.WriteDecoder("fa", 4, 1);
        _models.WriteDecoder("fb", 5, 2);
        var (written, given) = Run("""
            slices:
              - sources:
                  - model: ./fa
                    layer_range: [0, 3]
              - sources:
                  - model: ./fb
                    layer_range: [1, 4]
                    parameters:
                      scale: 0.5
            merge_method: passthrough
            dtype: float32
            """);
        Assert.Equal("passthrough", written["merge_method"].ToString());
        Assert.False(written.Children.ContainsKey("base_model"), "mergekit's passthrough has no base_model");
        Assert.False(written.Children.ContainsKey("models"));
        Assert.Equal(Sources(given), Sources(written));
        var slices = ((YamlSequenceNode)written["slices"]).Cast<YamlMappingNode>().Select(s => (YamlMappingNode)((YamlSequenceNode)s["sources"])[0]).ToList();
        Assert.False(slices[0].Children.ContainsKey("parameters"));
        Assert.Equal("0.5", ((YamlMappingNode)slices[1]["parameters"])["scale"].ToString());
    }

    [Fact]
    public void A_slerp_over_slices_keeps_its_sources_base_and_t_gradient()
    {
        _models.WriteDecoder("sa", 4, 3);
        _models.WriteDecoder("sb", 4, 4);
        var (written, given) = Run("""
            slices:
              - sources:
                  - model: ./sa
                    layer_range: [0, 4]
                  - model: ./sb
                    layer_range: [0, 4]
            merge_method: slerp
            base_model: ./sa
            parameters:
              t: [0, 0.5, 1]
            dtype: float32
            """);
        Assert.Equal("slerp", written["merge_method"].ToString());
        Assert.Equal("./sa", written["base_model"].ToString());
        Assert.False(written.Children.ContainsKey("models"));
        Assert.Equal(Sources(given), Sources(written));
        Assert.Equal(new[] { "0", "0.5", "1" }, ((YamlSequenceNode)((YamlMappingNode)written["parameters"])["t"]).Select(n => n.ToString()));
    }

    [Fact]
    public void A_plain_passthrough_is_one_model_without_a_base()
    {
        _models.WriteDecoder("only", 2, 5);
        var (written, _) = Run("merge_method: passthrough\nmodels:\n  - model: ./only\n    parameters: { scale: 2 }\ndtype: float32\n");
        Assert.False(written.Children.ContainsKey("base_model"));
        var model = (YamlMappingNode)((YamlSequenceNode)written["models"]).Single();
        Assert.Equal("./only", model["model"].ToString());
        Assert.Equal("2", ((YamlMappingNode)model["parameters"])["scale"].ToString());
    }
}
