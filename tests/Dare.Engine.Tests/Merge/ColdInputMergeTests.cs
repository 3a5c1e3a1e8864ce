using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using Dare.Engine.Tests.Safetensors;
using Xunit;

namespace Dare.Engine.Tests.Merge;

/// <summary>
/// Inputs that are not in the page cache are read ahead past it (O_DIRECT into the reader's buffers) wherever the
/// merge reads a range once, and the output is byte for byte the one merged from cached inputs.
/// </summary>
public sealed class ColdInputMergeTests : IDisposable
{
    private const long Chunk = 1 << 20;

    // Written in this order: up_proj takes two chunks, and a one-chunk tensor follows it in every file.
    private static readonly (string Name, long[] Shape)[] Shapes =
    {
        ("model.embed_tokens.weight", new long[] { 1024, 1024 }),
        ("model.layers.0.self_attn.q_proj.weight", new long[] { 1024, 1024 }),
        ("model.layers.0.mlp.up_proj.weight", new long[] { 2048, 1024 }),
        ("model.layers.1.self_attn.q_proj.weight", new long[] { 1024, 1024 }),
        ("model.norm.weight", new long[] { 1024 }),
    };

    private readonly TestModels _models = new(PageCache.TempRoot); // where pages can be dropped
    private readonly List<TaskVector> _vectors = new();
    private readonly Dictionary<string, float[]> _base;
    private readonly Checkpoint _baseModel;

    public ColdInputMergeTests()
    {
        var random = new Random(5);
        var @base = _base = Shapes.ToDictionary(s => s.Name, s => TestModels.RandomFloats(random, (int)s.Shape.Aggregate(1L, (a, b) => a * b)));
        var baseModel = _baseModel = _models.Write("base", Shapes.Select(s => TestTensor.Bf16(s.Name, @base[s.Name], s.Shape)));
        for (var m = 0; m < 2; m++)
        {
            var tuned = _models.Write($"tuned{m}", Shapes.Select(s => TestTensor.Bf16(s.Name, TestModels.Perturb(random, @base[s.Name], 0.05), s.Shape)));
            _vectors.Add(TaskVector.FromModels(baseModel, tuned));
        }
    }

    public void Dispose() => _models.Dispose();

    private static TensorParameter[] Parameters(params double[] values) => values.Select(v => (TensorParameter)v).ToArray();

    private TaskVector Plan(string kind) => kind switch
    {
        "dare-linear" => TaskVector.Combine(_vectors.Select((v, i) => v.WithDare(new DareOptions(0.9, 42, i))).ToList(),
            new MergeOptions(MergeMethod.Linear, Parameters(0.5, 0.5), false, 1.0)),
        "ties" => TaskVector.Combine(_vectors, new MergeOptions(MergeMethod.Ties, Parameters(1, 1), true, 1.0, Parameters(0.2, 0.2))),
        "dare-ties" => TaskVector.Combine(_vectors.Select((v, i) => v.WithDare(new DareOptions(0.9, 42, i))).ToList(),
            new MergeOptions(MergeMethod.Ties, Parameters(1, 1), true, 1.0, Parameters(0.5, 0.5))),
        _ => throw new ArgumentOutOfRangeException(nameof(kind)),
    };

    private (byte[] Bytes, long ReadAhead) Export(TaskVector plan, string name, bool singlePass = true)
    {
        var executor = new MergeExecutor(chunkElements: Chunk) { SinglePassLinear = singlePass };
        executor.Export(plan, new ExportOptions { Destination = _models.PathOf(name), OutputDType = SafetensorsDType.BF16 });
        return (File.ReadAllBytes(Path.Combine(_models.PathOf(name), Checkpoint.SingleFileName)), executor.BytesReadAhead);
    }

    private IEnumerable<string> InputFiles(params string[] models) =>
        (models.Length == 0 ? new[] { "base", "tuned0", "tuned1" } : models).SelectMany(model => Directory.GetFiles(_models.PathOf(model), "*.safetensors"));

    /// <summary>Flushes the files of the named models (default: base and the two fine-tunes) and drops them from the page cache.</summary>
    private void DropInputsFromCache(params string[] models)
    {
        foreach (var file in InputFiles(models)) PageCache.Drop(file);
    }

    /// <summary>Bytes of the named tensors in the three input models (each stored bfloat16).</summary>
    private static long InputBytes(params string[] names) =>
        3 * Shapes.Where(s => names.Any(n => s.Name.Contains(n, StringComparison.Ordinal))).Sum(s => s.Shape.Aggregate(2L, (a, b) => a * b));

    [Theory]
    [InlineData("dare-linear")] // the single-pass route: every tensor is read once, up_proj's two chunks included
    [InlineData("ties")] // every tensor is read once and kept for all the passes: the one-chunk ones as δ, up_proj as stored
    [InlineData("dare-ties")] // DARE leaves fewer survivors than TIES keeps: the single-pass route, as dare-linear
    public void A_merge_of_inputs_out_of_the_page_cache_reads_ahead_past_it_and_writes_the_same_bytes(string kind)
    {
        var plan = Plan(kind);
        foreach (var file in InputFiles()) File.ReadAllBytes(file); // the writer wrote past the page cache too
        var (warm, warmReadAhead) = Export(plan, "warm");
        DropInputsFromCache();
        var (cold, coldReadAhead) = Export(plan, "cold");

        Assert.Equal(warm, cold);
        Assert.Equal(0, warmReadAhead); // cached inputs are read from the cache
        // The norm (2 KB at the end of each file) may share a page the OS cached with the file's last bytes.
        var once = new[] { "embed_tokens", "q_proj", "up_proj" };
        Assert.InRange(coldReadAhead, InputBytes(once), InputBytes(once.Append("norm").ToArray()));
    }

    [Theory]
    [InlineData("dare-linear")]
    [InlineData("ties")]
    public void A_merge_of_inputs_out_of_the_page_cache_leaves_none_of_them_in_it(string kind)
    {
        // Every chunk of a tensor read once is asked for in file order, the first tensor's too: asked for at the
        // tensor's start, up_proj's second chunk was read after the next tensor, and the kernel's read-ahead past it
        // read that tensor's first pages again, to stay cached; the embedding, read without read-ahead, stayed cached
        // whole (2 MB a file).
        DropInputsFromCache();
        Export(Plan(kind), "cold");

        foreach (var file in InputFiles())
        {
            long cached = 0;
            for (long offset = 0; offset < new FileInfo(file).Length; offset += 4096)
            {
                if (PageCache.Holds(file, offset)) cached += 4096;
            }
            // What reading the header brings in (the first pages) may stay.
            Assert.True(cached <= 256 << 10, $"{cached} bytes of '{file}' are still in the page cache");
        }
    }

    [Fact]
    public void Without_the_single_pass_routes_TIES_still_keeps_its_two_chunk_tensor_and_reads_it_ahead_once()
    {
        // Whether a tensor is kept as stored does not depend on the single-pass switch (the tests' general route).
        var plan = Plan("ties");
        DropInputsFromCache();
        var (withRoutes, readAheadWith) = Export(plan, "routes");
        DropInputsFromCache();
        var (withoutRoutes, readAheadWithout) = Export(plan, "no-routes", singlePass: false);

        Assert.Equal(withRoutes, withoutRoutes);
        foreach (var readAhead in new[] { readAheadWith, readAheadWithout })
        {
            Assert.InRange(readAhead, InputBytes("embed_tokens", "q_proj", "up_proj"), InputBytes("embed_tokens", "q_proj", "up_proj", "norm"));
        }
    }

    [Fact]
    public void A_NaN_in_a_cold_two_chunk_tensor_of_a_TIES_merge_fails_the_export_naming_file_and_tensor_and_writes_nothing()
    {
        // The NaN is in up_proj's second chunk: out of the page cache, TIES reads that tensor once, as stored, before its passes.
        const string upProj = "model.layers.0.mlp.up_proj.weight";
        var sick = _models.Write("sick", Shapes.Select(s =>
        {
            var values = TestModels.Perturb(new Random(9), _base[s.Name], 0.05);
            if (s.Name == upProj) values[(int)Chunk + 5] = float.NaN;
            return TestTensor.Bf16(s.Name, values, s.Shape);
        }));
        var plan = TaskVector.Combine(new[] { _vectors[0], TaskVector.FromModels(_baseModel, sick) },
            new MergeOptions(MergeMethod.Ties, Parameters(1, 1), true, 1.0, Parameters(0.2, 0.2)));
        DropInputsFromCache("base", "tuned0", "sick");

        var failure = Assert.Throws<DareException>(() => Export(plan, "sick-merge"));

        Assert.Equal(DareErrorId.NonFiniteValues, failure.ErrorId);
        Assert.Equal(upProj, failure.TensorName);
        Assert.StartsWith(_models.PathOf("sick"), failure.FilePath);
        Assert.False(Directory.Exists(_models.PathOf("sick-merge")));
    }
}
