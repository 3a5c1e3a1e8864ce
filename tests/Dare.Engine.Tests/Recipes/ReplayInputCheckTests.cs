using System.Security.Cryptography;
using System.Text;
using Dare.Engine.Merge;
using Dare.Engine.Recipes;
using Dare.Engine.Safetensors;
using Xunit;
using YamlDotNet.RepresentationModel;

namespace Dare.Engine.Tests.Recipes;

/// <summary>A replay of dare_recipe.yml checks the inputs it records (file sizes, header hashes) before any work.</summary>
public sealed class ReplayInputCheckTests : IDisposable
{
    private readonly string _root = Path.Combine(Path.GetTempPath(), $"dare-replay-tests-{Guid.NewGuid():N}");
    private readonly LlamaShape _shape = new(HiddenSize: 16, Layers: 2, VocabSize: 32);

    public ReplayInputCheckTests()
    {
        Directory.CreateDirectory(_root);
        var shape = _shape;
        SyntheticModel.Write(PathOf("base"), shape, seed: 1, dtype: SafetensorsDType.F32);
        var @base = Checkpoint.Open(PathOf("base"));
        // "math" in shards, so the record lists several files of one model.
        SyntheticModel.Write(PathOf("math"), shape, 2, @base, dtype: SafetensorsDType.F32, maxShardSize: 4096);
        SyntheticModel.Write(PathOf("code"), shape, 3, @base, dtype: SafetensorsDType.F32);
        const string recipe = "merge_method: dare_ties\nbase_model: ./base\nmodels:\n  - model: ./math\n    parameters: { weight: 1, density: 0.5 }\n" +
            "  - model: ./code\n    parameters: { weight: 0.5, density: 0.3 }\nrandom_seed: 7\n";
        var plan = RecipePlanner.Plan(RecipeParser.ParseText(recipe, _root), new RecipePlanOptions { OutputPath = PathOf("merged") }).Plans[0];
        new MergeExecutor().Export(plan.Vector, plan.Export);
    }

    public void Dispose()
    {
        try { Directory.Delete(_root, recursive: true); }
        catch (IOException) { }
    }

    private string PathOf(string name) => Path.Combine(_root, name);

    private string RecipeFile => Path.Combine(PathOf("merged"), MergeExecutor.RecipeFileName);

    private MergePlan PlanReplay(string output, bool allowChanged = false) =>
        RecipePlanner.Plan(RecipeParser.ParseFile(RecipeFile), new RecipePlanOptions { OutputPath = PathOf(output), AllowChangedInputs = allowChanged }).Plans[0];

    private static IEnumerable<string> WeightFiles(string folder) => Directory.GetFiles(folder, "*.safetensors").Order(StringComparer.Ordinal);

    [Fact]
    public void The_recipe_records_every_input_file_with_its_size_and_header_hash_as_read_here()
    {
        var yaml = new YamlStream();
        yaml.Load(new StringReader(File.ReadAllText(RecipeFile)));
        var recorded = ((YamlSequenceNode)((YamlMappingNode)yaml.Documents[0].RootNode)[InputFingerprints.Key]).Cast<YamlMappingNode>().ToList();
        Assert.Equal(new[] { PathOf("base"), PathOf("math"), PathOf("code") }, recorded.Select(r => r["model"].ToString()));
        foreach (var input in recorded)
        {
            var folder = input["model"].ToString();
            var files = ((YamlSequenceNode)input["files"]).Cast<YamlMappingNode>().ToList();
            Assert.Equal(WeightFiles(folder).Select(Path.GetFileName), files.Select(f => f["file"].ToString()).Order(StringComparer.Ordinal));
            foreach (var file in files)
            {
                var bytes = File.ReadAllBytes(Path.Combine(folder, file["file"].ToString()));
                var headerLength = (int)BitConverter.ToInt64(bytes, 0);
                Assert.Equal(bytes.LongLength.ToString(), file["bytes"].ToString());
                Assert.Equal(Convert.ToHexString(SHA256.HashData(bytes.AsSpan(0, 8 + headerLength))).ToLowerInvariant(), file["header_sha256"].ToString());
            }
        }
        Assert.True(((YamlSequenceNode)recorded[1]["files"]).Children.Count > 1, "the fixture should shard 'math'");
    }

    [Fact]
    public void A_replay_of_unchanged_inputs_is_bit_identical()
    {
        var plan = PlanReplay("replayed");
        Assert.Empty(plan.Warnings);
        new MergeExecutor().Export(plan.Vector, plan.Export);
        var original = WeightFiles(PathOf("merged")).ToList();
        Assert.Equal(original.Select(Path.GetFileName), WeightFiles(PathOf("replayed")).Select(Path.GetFileName));
        foreach (var file in original) Assert.Equal(File.ReadAllBytes(file), File.ReadAllBytes(Path.Combine(PathOf("replayed"), Path.GetFileName(file))));
        Assert.Equal(File.ReadAllText(RecipeFile), File.ReadAllText(Path.Combine(PathOf("replayed"), MergeExecutor.RecipeFileName)));
    }

    [Fact]
    public void One_changed_byte_in_an_inputs_header_stops_the_replay_naming_model_and_file_and_writes_nothing()
    {
        var shard = WeightFiles(PathOf("math")).Last();
        var bytes = File.ReadAllBytes(shard);
        // A tensor name's letter changes: the header stays valid JSON of the same length, only its content differs.
        var header = Encoding.UTF8.GetString(bytes, 8, (int)BitConverter.ToInt64(bytes, 0));
        var at = 8 + header.IndexOf("weight", StringComparison.Ordinal);
        bytes[at] = (byte)'W';
        File.WriteAllBytes(shard, bytes);

        var error = Assert.Throws<DareException>(() => PlanReplay("replayed"));
        Assert.Equal(DareErrorId.ReplayInputChanged, error.ErrorId);
        Assert.Contains(PathOf("math"), error.Message);
        Assert.Contains(Path.GetFileName(shard), error.Message);
        Assert.Contains("header", error.Message);
        Assert.Contains("-AllowChangedInputs", error.Message);
        Assert.False(Directory.Exists(PathOf("replayed")));
    }

    [Fact]
    public void A_changed_file_size_stops_the_replay_and_writes_nothing()
    {
        var file = WeightFiles(PathOf("code")).Single();
        var length = new FileInfo(file).Length;
        using (var stream = new FileStream(file, FileMode.Append)) stream.WriteByte(0);

        var error = Assert.Throws<DareException>(() => PlanReplay("replayed"));
        Assert.Equal(DareErrorId.ReplayInputChanged, error.ErrorId);
        Assert.Contains($"is {length + 1} bytes, recorded {length}", error.Message);
        Assert.Contains(PathOf("code"), error.Message);
        Assert.False(Directory.Exists(PathOf("replayed")));
    }

    [Fact]
    public void A_missing_shard_stops_the_replay()
    {
        var shard = WeightFiles(PathOf("math")).First();
        File.Move(shard, shard + ".moved");
        var error = Assert.Throws<DareException>(() => PlanReplay("replayed"));
        Assert.Equal(DareErrorId.ReplayInputChanged, error.ErrorId);
        Assert.Contains($"'{shard}' is missing", error.Message);
    }

    [Fact]
    public void AllowChangedInputs_replays_anyway_with_a_warning_per_difference()
    {
        var file = WeightFiles(PathOf("code")).Single();
        ReshardCode();

        var plan = PlanReplay("replayed", allowChanged: true);
        var warning = Assert.Single(plan.Warnings, w => w.Contains("changed input", StringComparison.Ordinal));
        Assert.Contains(file, warning);
        new MergeExecutor().Export(plan.Vector, plan.Export);
        // The same values in other shards: the tensor data is unchanged (the header records the new input fingerprint).
        Assert.Equal(TensorData(Path.Combine(PathOf("merged"), "model.safetensors")), TensorData(Path.Combine(PathOf("replayed"), "model.safetensors")));
    }

    [Fact]
    public void SkipExisting_keeps_an_output_only_while_its_inputs_are_unchanged()
    {
        var keep = RecipePlanner.Plan(RecipeParser.ParseFile(RecipeFile), new RecipePlanOptions { OutputPath = PathOf("merged"), SkipExisting = true });
        Assert.True(keep.Plans[0].AlreadyWritten);

        ReshardCode();
        var error = Assert.Throws<DareException>(() => RecipePlanner.Plan(RecipeParser.ParseText(StripInputs(File.ReadAllText(RecipeFile)), _root),
            new RecipePlanOptions { OutputPath = PathOf("merged"), SkipExisting = true }));
        Assert.Equal(DareErrorId.OutputExists, error.ErrorId);
        Assert.Contains("changed", error.Message);
    }

    /// <summary>A safetensors file's bytes after its header.</summary>
    private static byte[] TensorData(string file)
    {
        var bytes = File.ReadAllBytes(file);
        return bytes[(8 + (int)BitConverter.ToInt64(bytes, 0))..];
    }

    /// <summary>"code" written again in shards (same values): a re-sharded upload of the same model.</summary>
    private void ReshardCode() =>
        SyntheticModel.Write(PathOf("code"), _shape, 3, Checkpoint.Open(PathOf("base")), dtype: SafetensorsDType.F32, maxShardSize: 4096, force: true);

    /// <summary>The recipe without its dare_inputs section (the documented way to replay changed inputs silently).</summary>
    private static string StripInputs(string yaml) => yaml[..yaml.IndexOf(InputFingerprints.Key + ":", StringComparison.Ordinal)];
}
