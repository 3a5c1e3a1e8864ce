using Dare.Engine.Merge;
using Dare.Engine.Partitions;
using Dare.Engine.Recipes;
using Dare.Engine.Safetensors;
using Dare.Engine.Tests.Merge;
using TorchSharp;
using Xunit;

namespace Dare.Engine.Tests.Partitions;

/// <summary>
/// A partitioned export publishes exactly the folder a single-process export writes: every partition count, every
/// order of completion, whatever the method. Failed, foreign and damaged partitions are handled without redoing the rest.
/// </summary>
public sealed class PartitionedExportTests : IDisposable
{
    // Shard limit 700 bytes: these tensors make 6 shards of unequal sizes (a 2 KB tensor has one of its own).
    private const long ShardLimit = 700;

    private static readonly (string Name, SafetensorsDType DType, long[] Shape)[] Shapes =
    {
        ("model.embed_tokens.weight", SafetensorsDType.BF16, new long[] { 16, 32 }),
        ("model.layers.0.self_attn.q_proj.weight", SafetensorsDType.F32, new long[] { 8, 16 }),
        ("model.layers.0.mlp.up_proj.weight", SafetensorsDType.F32, new long[] { 24, 24 }),
        ("model.layers.1.self_attn.q_proj.weight", SafetensorsDType.BF16, new long[] { 8, 16 }),
        ("model.layers.1.mlp.up_proj.weight", SafetensorsDType.F32, new long[] { 10, 10 }),
        ("model.norm.weight", SafetensorsDType.F32, new long[] { 32 }),
        ("position_ids", SafetensorsDType.I64, new long[] { 40 }),
    };

    private readonly TestModels _models = new();
    private readonly Checkpoint _base;
    private readonly List<TaskVector> _vectors = new();

    public PartitionedExportTests()
    {
        var random = new Random(18);
        var @base = Shapes.ToDictionary(s => s.Name, s => TestModels.RandomFloats(random, (int)s.Shape.Aggregate(1L, (a, b) => a * b)));
        _base = _models.Write("base", Shapes.Select(s => Tensor(s, @base[s.Name])));
        File.WriteAllText(Path.Combine(_base.Directory, "config.json"), "{\"torch_dtype\": \"float32\", \"model_type\": \"llama\"}");
        File.WriteAllText(Path.Combine(_base.Directory, "tokenizer_config.json"), "{}");
        for (var m = 0; m < 3; m++)
        {
            var tuned = _models.Write($"tuned{m}", Shapes.Select(s => Tensor(s, TestModels.Perturb(random, @base[s.Name]))));
            _vectors.Add(TaskVector.FromModels(_base, tuned));
        }
    }

    private static TestTensor Tensor((string Name, SafetensorsDType DType, long[] Shape) s, float[] values) => s.DType switch
    {
        SafetensorsDType.BF16 => TestTensor.Bf16(s.Name, values, s.Shape),
        SafetensorsDType.I64 => TestTensor.I64(s.Name, Enumerable.Range(0, values.Length).Select(i => (long)i).ToArray(), s.Shape),
        _ => TestTensor.F32(s.Name, values, s.Shape),
    };

    public void Dispose() => _models.Dispose();

    private static TensorParameter[] Parameters(params double[] values) => values.Select(v => (TensorParameter)v).ToArray();

    private TaskVector Plan(string method, double firstWeight = 0.5) => method switch
    {
        "linear" => TaskVector.Combine(_vectors, new MergeOptions(MergeMethod.Linear, Parameters(firstWeight, 0.3, 0.2), true)),
        "ties" => TaskVector.Combine(_vectors, new MergeOptions(MergeMethod.Ties, Parameters(firstWeight, 0.6, 0.3), true, 0.9, Parameters(0.3, 0.5, 0.7))),
        "dare_ties" => TaskVector.Combine(_vectors.Select((v, i) => v.WithDare(new DareOptions(0.5, 11, i))).ToList(),
            new MergeOptions(MergeMethod.Ties, Parameters(firstWeight, 1, 2), true, 1.0, Parameters(0.3, 0.5, 1.0))),
        _ => throw new ArgumentOutOfRangeException(nameof(method)),
    };

    private ExportOptions Options(TaskVector plan, string name, ExportPartition? partition = null) => new()
    {
        Destination = _models.PathOf(name),
        OutputDType = SafetensorsDType.BF16,
        MaxShardSize = ShardLimit,
        RecipeYaml = RecipeWriter.ToYaml(plan, SafetensorsDType.BF16, ShardLimit),
        Partition = partition,
    };

    private ExportResult Run(TaskVector plan, string name, int index, int count, CancellationToken cancellation = default, IMergeObserver? observer = null) =>
        new MergeExecutor(observer, cancellation).Export(plan, Options(plan, name, new ExportPartition(index, count)));

    /// <summary>Every file of <paramref name="actual"/> has the bytes of the same file in <paramref name="expected"/>, and no file is missing or extra.</summary>
    private static void AssertSameFolder(string expected, string actual)
    {
        static List<string> Names(string folder) => Directory.GetFileSystemEntries(folder).Select(e => Path.GetFileName(e)!).Order(StringComparer.Ordinal).ToList();
        Assert.Equal(Names(expected), Names(actual));
        foreach (var name in Names(expected))
        {
            Assert.True(File.ReadAllBytes(Path.Combine(expected, name)).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(actual, name))), $"{name} differs");
        }
    }

    private string[] LeftBeside(string name) =>
        Directory.GetFileSystemEntries(_models.Root).Select(e => Path.GetFileName(e)!).Where(e => e.Contains(name, StringComparison.Ordinal) && e != name).ToArray();

    [Theory]
    [InlineData("linear", 1)]
    [InlineData("linear", 2)]
    [InlineData("linear", 3)]
    [InlineData("ties", 1)]
    [InlineData("ties", 2)]
    [InlineData("ties", 3)]
    [InlineData("dare_ties", 1)]
    [InlineData("dare_ties", 2)]
    [InlineData("dare_ties", 3)]
    public void PartitionsFinishingInReverseOrderPublishTheSingleProcessExport(string method, int count)
    {
        var plan = Plan(method);
        var single = new MergeExecutor().Export(plan, Options(plan, "single"));
        Assert.True(Directory.GetFiles(_models.PathOf("single"), "model-*.safetensors").Length >= 5, "the fixture should make several shards");

        var results = Enumerable.Range(0, count).Reverse().Select(i => Run(plan, "parts", i, count)).ToList();

        // Only the last to finish (partition 0) published; the others stopped at their sealed part.
        Assert.Equal(Enumerable.Range(0, count).Select(i => i == count - 1).ToList(), results.Select(r => r.Published).ToList());
        Assert.Equal(_models.PathOf("parts"), results[^1].Path);
        AssertSameFolder(_models.PathOf("single"), _models.PathOf("parts"));
        Assert.Empty(LeftBeside("parts"));
        // Between them the partitions read every tensor of every input once, as the single export did.
        Assert.Equal(single.BytesRead, results.Sum(r => r.BytesRead));
    }

    [Fact]
    public void APartitionLeavesNoLiveTensorsAndReportsItsOwnTensorsOnly()
    {
        var plan = Plan("dare_ties");
        var progress = new List<MergeProgress>();
        var observer = new Recorder(progress);
        var before = DisposeScopeManager.Statistics.TensorStatistics.ThreadTotalLiveCount;
        var result = Run(plan, "parts", 1, 3, observer: observer);
        Assert.Equal(before, DisposeScopeManager.Statistics.TensorStatistics.ThreadTotalLiveCount);

        // Progress names the partition and counts the tensors of its shards (read from its sealed files, not the plan).
        var written = result.Files.SelectMany(f => Checkpoint.Open(f).Tensors.Select(t => t.Name)).ToList();
        Assert.NotEmpty(written);
        Assert.All(progress, p => Assert.Equal("Merging partition 1/3", p.Activity));
        Assert.Equal(written.Count, progress[^1].TensorCount);
        Assert.Equal(written.Count, progress[^1].TensorsDone);
        Assert.Equal(written.Order(StringComparer.Ordinal), progress.Where(p => p.CurrentTensor is not null).Select(p => p.CurrentTensor!).Order(StringComparer.Ordinal));
    }

    private sealed class Recorder(List<MergeProgress> progress) : IMergeObserver
    {
        public void Progress(MergeProgress p) => progress.Add(p);

        public void Verbose(string message) { }

        public void Warning(string message) { }
    }

    [Fact]
    public void ShardsAreSplitWholeDisjointAndBalancedByBytes()
    {
        var random = new Random(5);
        for (var trial = 0; trial < 50; trial++)
        {
            var sizes = Enumerable.Range(0, random.Next(1, 40)).Select(_ => (long)random.Next(1, 1000)).ToList();
            var shards = sizes.Select((s, i) => new PlannedShard($"s{i}", new[] { new PlannedTensor($"t{i}", SafetensorsDType.U8, new[] { s }) })).ToList();
            var count = random.Next(1, 9);
            var parts = Enumerable.Range(0, count).Select(i => new ExportPartition(i, count).ShardsOf(shards).Select(s => s.FileName).ToList()).ToList();
            // Each shard in exactly one partition, in plan order within it.
            Assert.Equal(shards.Select(s => s.FileName).Order(), parts.SelectMany(p => p).Order());
            foreach (var part in parts) Assert.Equal(part.OrderBy(n => int.Parse(n[1..])), part);
            // Greedy by size: no partition exceeds the lightest by more than the largest shard.
            var loads = parts.Select(p => p.Sum(n => sizes[int.Parse(n[1..])])).ToList();
            Assert.True(loads.Max() - loads.Min() <= sizes.Max(), $"loads {string.Join(",", loads)} for sizes {string.Join(",", sizes)}");
            // Independent processes agree: the assignment depends on the shard plan only.
            Assert.Equal(ExportPartition.Assign(shards, count), ExportPartition.Assign(shards.ToList(), count));
        }
    }

    [Theory]
    [InlineData("0/1", 0, 1)]
    [InlineData("3/4", 3, 4)]
    [InlineData(" 2 / 5 ", 2, 5)]
    public void PartitionTextIsIndexSlashCount(string text, int index, int count) => Assert.Equal(new ExportPartition(index, count), ExportPartition.Parse(text));

    [Theory]
    [InlineData("4/4")]
    [InlineData("1/0")]
    [InlineData("-1/4")]
    [InlineData("1")]
    [InlineData("a/b")]
    [InlineData("1/2/3")]
    public void PartitionTextOutOfRangeIsRefused(string text) =>
        Assert.Equal(DareErrorId.InvalidParameter, Assert.Throws<DareException>(() => ExportPartition.Parse(text)).ErrorId);

    [Fact]
    public void RerunningAFailedPartitionRedoesOnlyThatPart()
    {
        var plan = Plan("dare_ties");
        new MergeExecutor().Export(plan, Options(plan, "single"));
        Run(plan, "parts", 0, 3);
        var staging = PartitionStaging.FolderFor(_models.PathOf("parts"));
        var sealedZero = Directory.GetFiles(Path.Combine(staging, "part-00000-of-00003")).ToDictionary(f => f, File.GetLastWriteTimeUtc);

        // Partition 1 is stopped after its first tensor: nothing of it counts, and partition 0 is untouched.
        using var cancellation = new CancellationTokenSource();
        var observer = new CancelAfterFirstTensor(cancellation);
        Assert.ThrowsAny<OperationCanceledException>(() => Run(plan, "parts", 1, 3, cancellation.Token, observer));
        Assert.False(Directory.Exists(Path.Combine(staging, "part-00001-of-00003")));
        Assert.Empty(Directory.GetDirectories(staging, ".part-00001-*")); // a failed run removes its private folder
        // A killed run (no chance to clean up) leaves one; the rerun of that partition removes it.
        Directory.CreateDirectory(Path.Combine(staging, ".part-00001-killed"));
        File.WriteAllText(Path.Combine(staging, ".part-00001-killed", "model-00002-of-00006.safetensors"), "half");

        Run(plan, "parts", 1, 3);
        Assert.Empty(Directory.GetDirectories(staging, ".part-00001-*"));
        Assert.All(sealedZero, f => Assert.Equal(f.Value, File.GetLastWriteTimeUtc(f.Key)));
        Assert.True(Run(plan, "parts", 2, 3).Published);
        AssertSameFolder(_models.PathOf("single"), _models.PathOf("parts"));
    }

    private sealed class CancelAfterFirstTensor(CancellationTokenSource cancellation) : IMergeObserver
    {
        public void Progress(MergeProgress progress)
        {
            if (progress.TensorsDone >= 1) cancellation.Cancel();
        }

        public void Verbose(string message) { }

        public void Warning(string message) { }
    }

    [Fact]
    public void APartitionOfAnotherPlanOrCountIsRefused()
    {
        Run(Plan("linear"), "parts", 0, 2);
        var otherWeights = Assert.Throws<DareException>(() => Run(Plan("linear", firstWeight: 0.25), "parts", 1, 2));
        Assert.Equal(DareErrorId.PartitionPlanMismatch, otherWeights.ErrorId);
        Assert.Contains("fingerprint", otherWeights.Message);
        var otherCount = Assert.Throws<DareException>(() => Run(Plan("linear"), "parts", 1, 3));
        Assert.Equal(DareErrorId.PartitionPlanMismatch, otherCount.ErrorId);
        Assert.Contains("2 are staged", otherCount.Message);
        Assert.False(Directory.Exists(_models.PathOf("parts")));
    }

    [Fact]
    public void ADamagedShardStopsThePublicationUntilItsPartitionRunsAgain()
    {
        var plan = Plan("ties");
        new MergeExecutor().Export(plan, Options(plan, "single"));
        Run(plan, "parts", 0, 3);
        Run(plan, "parts", 1, 3);
        var staging = PartitionStaging.FolderFor(_models.PathOf("parts"));
        var shard = Directory.GetFiles(Path.Combine(staging, "part-00000-of-00003"), "*.safetensors")[0];
        var bytes = File.ReadAllBytes(shard);
        bytes[^1] ^= 1;
        File.WriteAllBytes(shard, bytes);

        var error = Assert.Throws<DareException>(() => Run(plan, "parts", 2, 3));
        Assert.Equal(DareErrorId.PartitionCorrupt, error.ErrorId);
        Assert.Contains(Path.GetFileName(shard), error.Message);
        Assert.Contains("SHA-256", error.Message);
        Assert.False(Directory.Exists(_models.PathOf("parts")));
        Assert.False(File.Exists(Path.Combine(staging, PartitionStaging.LockFileName)));

        Assert.True(Run(plan, "parts", 0, 3).Published);
        AssertSameFolder(_models.PathOf("single"), _models.PathOf("parts"));
    }

    [Fact]
    public void CompletionWaitsForEveryPartitionAndForAnotherCompleter()
    {
        var plan = Plan("linear");
        new MergeExecutor().Export(plan, Options(plan, "single"));
        Run(plan, "parts", 1, 2);
        var staging = PartitionStaging.Open(_models.PathOf("parts"))!;
        var missing = Assert.Throws<DareException>(() => staging.Complete(new CheckpointWriteOptions()));
        Assert.Equal(DareErrorId.PartitionIncomplete, missing.ErrorId);
        Assert.Contains("partition(s) 0 of 2", missing.Message);

        // Another process is completing: the last partition seals and leaves the publication to it.
        var lockPath = Path.Combine(staging.Folder, PartitionStaging.LockFileName);
        File.WriteAllText(lockPath, "process 1 on elsewhere");
        Assert.False(Run(plan, "parts", 0, 2).Published);
        var busy = Assert.Throws<DareException>(() => staging.Complete(new CheckpointWriteOptions()));
        Assert.Equal(DareErrorId.PartitionCompletionBusy, busy.ErrorId);
        Assert.Contains("elsewhere", busy.Message);

        File.Delete(lockPath);
        var published = staging.Complete(new CheckpointWriteOptions());
        Assert.Equal(_models.PathOf("parts"), published.Path);
        AssertSameFolder(_models.PathOf("single"), _models.PathOf("parts"));
        Assert.Empty(LeftBeside("parts"));
    }

    [Fact]
    public void AnExistingOutputIsRefusedBeforeAnyWorkAndReplacedWithForce()
    {
        var plan = Plan("linear");
        new MergeExecutor().Export(plan, Options(plan, "single"));
        Directory.CreateDirectory(_models.PathOf("parts"));
        File.WriteAllText(Path.Combine(_models.PathOf("parts"), "model.safetensors"), "old");
        // A partition checks the output before any work, as a single export does.
        Assert.Equal(DareErrorId.OutputExists, Assert.Throws<DareException>(() => Run(plan, "parts", 0, 2)).ErrorId);
        Assert.False(Directory.Exists(PartitionStaging.FolderFor(_models.PathOf("parts"))));

        foreach (var index in new[] { 1, 0 })
        {
            new MergeExecutor().Export(plan, new ExportOptions
            {
                Destination = _models.PathOf("parts"), OutputDType = SafetensorsDType.BF16, MaxShardSize = ShardLimit, Force = true,
                RecipeYaml = RecipeWriter.ToYaml(plan, SafetensorsDType.BF16, ShardLimit), Partition = new ExportPartition(index, 2),
            });
        }
        AssertSameFolder(_models.PathOf("single"), _models.PathOf("parts"));
    }

    [Fact]
    public void ThePlanFingerprintCoversTensorsShardsAndRecipe()
    {
        var tensors = new List<PlannedTensor> { new("a", SafetensorsDType.F32, new long[] { 4 }), new("b", SafetensorsDType.BF16, new long[] { 2, 2 }) };
        string Print(IReadOnlyList<PlannedTensor> t, long shard = 16, string recipe = "r", int? layers = null) =>
            PartitionPlan.For("/x/out", t, new CheckpointWriteOptions
            {
                MaxShardSize = shard, ExtraFiles = new Dictionary<string, string> { ["dare_recipe.yml"] = recipe },
                ConfigChanges = layers is { } n ? new Dictionary<string, System.Text.Json.Nodes.JsonNode?> { ["num_hidden_layers"] = n } : null,
            }).Fingerprint;
        var reference = Print(tensors);
        Assert.Equal(reference, Print(tensors.ToList()));
        Assert.NotEqual(reference, Print(tensors, shard: 1000));
        Assert.NotEqual(reference, Print(tensors, recipe: "r2"));
        Assert.NotEqual(reference, Print(new List<PlannedTensor> { tensors[0], tensors[1] with { DType = SafetensorsDType.F16 } }));
        Assert.NotEqual(reference, Print(new List<PlannedTensor> { tensors[0], tensors[1] with { Shape = new long[] { 4 } } }));
        Assert.NotEqual(reference, Print(new List<PlannedTensor> { tensors[1], tensors[0] }));
        Assert.NotEqual(reference, Print(tensors, layers: 40));
        Assert.NotEqual(Print(tensors, layers: 40), Print(tensors, layers: 41));
        Assert.Equal(64, reference.Length);
    }

    [Fact]
    public void AnEditedStagedPlanIsRefused()
    {
        var plan = Plan("linear");
        Run(plan, "parts", 0, 2);
        var path = Path.Combine(PartitionStaging.FolderFor(_models.PathOf("parts")), PartitionStaging.PlanFileName);
        File.WriteAllText(path, File.ReadAllText(path).Replace("\"max_shard_size\": 700", "\"max_shard_size\": 701"));
        var error = Assert.Throws<DareException>(() => Run(plan, "parts", 1, 2));
        Assert.Equal(DareErrorId.PartitionCorrupt, error.ErrorId);
        Assert.Contains("fingerprint", error.Message);
    }
}
