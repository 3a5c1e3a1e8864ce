using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using Dare.Engine.Tests.Safetensors;
using Xunit;

namespace Dare.Engine.Tests.Merge;

/// <summary>
/// A tensor large enough for the sampled, bracketed TIES route (and for several parallel ranges per chunk), with
/// coarse values so the threshold is shared by many elements: the export must match the plain reimplementation and
/// not depend on the chunk size.
/// </summary>
public sealed class TiesBracketRouteTests : IDisposable
{
    private const string Name = "model.layers.0.mlp.up_proj.weight";
    private const int Count = 400_003;
    private readonly TestModels _models = new(PageCache.TempRoot); // where pages can be dropped
    private readonly float[] _base;
    private readonly List<float[]> _tuned = new();
    private readonly List<TaskVector> _vectors = new();

    public TiesBracketRouteTests()
    {
        var random = new Random(99);
        _base = Enumerable.Range(0, Count).Select(_ => random.Next(-64, 65) / 32f).ToArray();
        var baseModel = _models.Write("base", new[] { TestTensor.Bf16(Name, _base) });
        for (var m = 0; m < 3; m++)
        {
            var tuned = _base.Select(v => v + random.Next(-6, 7) / 64f).ToArray();
            _tuned.Add(tuned);
            _vectors.Add(TaskVector.FromModels(baseModel, _models.Write($"tuned{m}", new[] { TestTensor.Bf16(Name, tuned) })));
        }
    }

    public void Dispose() => _models.Dispose();

    private TaskVector Plan() => TaskVector.Combine(_vectors,
        new MergeOptions(MergeMethod.Ties, new TensorParameter[] { 1, 0.7, 1.3 }, true, 0.9, new TensorParameter[] { 0.3, 0.2, 0.45 }));

    [Fact]
    public void Export_matches_the_plain_reimplementation_whatever_the_chunk_size()
    {
        var whole = _models.Export(Plan(), "whole", deltaOnly: true);
        var chunked = _models.Export(Plan(), "chunked", deltaOnly: true, chunkElements: 150_001);

        var deltas = _tuned.Select(t => Reference.Delta(_base, t)).ToArray();
        var expected = Reference.ToFloats(Reference.Ties(deltas, new[] { 1, 0.7, 1.3 }, new[] { 0.3, 0.2, 0.45 }, true, 0.9));
        var actual = TestModels.ReadFloats(whole, Name);
        Reference.AssertClose(expected, actual, what: Name);
        Reference.AssertBitEqual(actual, TestModels.ReadFloats(chunked, Name), Name);
    }

    [Theory]
    [InlineData(true, 150_001)] // presampled from runs read from the files: the first pass counts the bracket, the second combines
    [InlineData(false, 150_001)] // not cached: kept as stored and presampled from memory
    [InlineData(true, MergeExecutor.DefaultChunkElements)] // one chunk: presampled from the files too
    public void A_tensor_is_presampled_from_its_files_only_when_they_are_in_the_page_cache(bool cached, long chunkElements)
    {
        var files = new[] { "base", "tuned0", "tuned1", "tuned2" }.SelectMany(m => Directory.GetFiles(_models.PathOf(m), "*.safetensors")).ToList();
        foreach (var file in files)
        {
            if (cached) File.ReadAllBytes(file); // the writer wrote past the page cache
            else PageCache.Drop(file);
        }
        var executor = new MergeExecutor(chunkElements: chunkElements);
        var name = cached ? "cached" : "cold";
        executor.Export(Plan(), new ExportOptions { Destination = _models.PathOf(name), OutputDType = SafetensorsDType.F32, DeltaOnly = true });

        Assert.Equal(cached ? 1 : 0, executor.TensorsPresampledFromFiles);
        var deltas = _tuned.Select(t => Reference.Delta(_base, t)).ToArray();
        var expected = Reference.ToFloats(Reference.Ties(deltas, new[] { 1, 0.7, 1.3 }, new[] { 0.3, 0.2, 0.45 }, true, 0.9));
        var actual = TestModels.ReadFloats(Checkpoint.Open(_models.PathOf(name)), Name);
        Reference.AssertClose(expected, actual, what: Name);
        Reference.AssertBitEqual(actual, TestModels.ReadFloats(_models.Export(Plan(), "whole", deltaOnly: true), Name), Name);
    }

    [Fact]
    public void Float16_output_is_the_float32_output_converted_by_torch()
    {
        // bfloat16 inputs keep the base as stored; float16 output goes through torch's addition and conversion.
        var asFloat32 = _models.Export(Plan(), "f32", dtype: SafetensorsDType.F32);
        var asFloat16 = _models.Export(Plan(), "f16", dtype: SafetensorsDType.F16);

        using var converted = TorchSharp.torch.tensor(TestModels.ReadFloats(asFloat32, Name)).to_type(TorchSharp.torch.ScalarType.Float16);
        var expected = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ushort>(converted.bytes).ToArray();
        Assert.Equal(expected, TestModels.ReadRaw<ushort>(asFloat16.Find(Name)!));
    }
}
