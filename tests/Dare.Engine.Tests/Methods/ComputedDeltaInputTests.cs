using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using Dare.Engine.Tests.Merge;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace Dare.Engine.Tests.Methods;

/// <summary>
/// The input seam admits a delta that no checkpoint stores: a test-only input computes s·B·A (a LoRA adapter's delta)
/// and covers only some rows (as an input aligned to a different vocabulary would), and merges through the
/// unchanged executor with DARE and every method.
/// </summary>
public sealed class ComputedDeltaInputTests : IDisposable
{
    private const int Rows = 6, Columns = 5, Rank = 2;
    private const float Scale = 0.5f;
    private readonly TestModels _models = new();
    private readonly float[] _base;
    private readonly float[] _b, _a;
    private readonly Checkpoint _baseModel;

    public ComputedDeltaInputTests()
    {
        var random = new Random(7);
        _base = TestModels.RandomFloats(random, Rows * Columns);
        _b = TestModels.RandomFloats(random, Rows * Rank);
        _a = TestModels.RandomFloats(random, Rank * Columns);
        _baseModel = _models.Write("base", new[] { TestTensor.F32("w", _base, Rows, Columns) });
    }

    public void Dispose() => _models.Dispose();

    /// <summary>s·(B·A)[r, c] for rows the adapter covers (the first <paramref name="coveredRows"/>), 0 elsewhere, summed in float32 in index order.</summary>
    private float[] LoraDelta(int coveredRows)
    {
        var delta = new float[Rows * Columns];
        for (var r = 0; r < coveredRows; r++)
        {
            for (var c = 0; c < Columns; c++)
            {
                var sum = 0f;
                for (var k = 0; k < Rank; k++) sum += _b[r * Rank + k] * _a[k * Columns + c];
                delta[r * Columns + c] = Scale * sum;
            }
        }
        return delta;
    }

    /// <summary>An input whose δ is computed, not read: the values of <see cref="LoraDelta"/>.</summary>
    private sealed class ComputedInput(string name, float[] delta) : ITaskInput
    {
        public string Name => name;
        public Checkpoint? Model => null;
        public IReadOnlyList<string> MissingTensors => Array.Empty<string>();
        public IInputTensor? Open(TensorInfo baseTensor) => baseTensor.Name == "w" ? new Part(delta) : null;

        private sealed class Part(float[] delta) : IInputTensor
        {
            public TensorInfo? StoredBFloat16 => null;
            public bool NeedsBase => false;
            public unsafe ChunkView ReadDelta(ChunkReader chunks, int slot, ChunkView baseChunk, long first, long count)
            {
                var values = chunks.Workspace.Floats(slot, count);
                delta.AsSpan((int)first, (int)count).CopyTo(new Span<float>(values.Floats, (int)count));
                return values;
            }
            public void Prefetch(TensorReader reader, long first, long count, bool readOnce) { }
        }
    }

    [Theory]
    [InlineData(Rows, null)]
    [InlineData(4, null)]
    [InlineData(4, 7L)]
    public void A_computed_delta_exports_as_base_plus_delta(int coveredRows, long? chunkElements)
    {
        var delta = LoraDelta(coveredRows);
        var vector = TaskVector.FromInput(_baseModel, new ComputedInput("lora", delta));
        var output = _models.Export(vector, "out", chunkElements: chunkElements);
        Assert.Equal(_base.Select((b, i) => b + delta[i]).ToArray(), TestModels.ReadFloats(output, "w"));
    }

    [Fact]
    public void A_computed_delta_merges_with_a_fine_tune_by_ties_after_dare()
    {
        var random = new Random(8);
        var tuned = TestModels.Perturb(random, _base, 0.3);
        var fineTune = TaskVector.FromModels(_baseModel, _models.Write("tuned", new[] { TestTensor.F32("w", tuned, Rows, Columns) }));
        var lora = LoraDelta(4);
        var computed = TaskVector.FromInput(_baseModel, new ComputedInput("lora", lora)).WithDare(new DareOptions(0.5, 11, 0));
        var merged = TaskVector.Combine(new[] { computed, fineTune },
            new MergeOptions(MergeMethod.Ties, new TensorParameter[] { 1.0, 0.5 }, true, 1.0, new TensorParameter[] { 1.0, 0.6 }));
        var output = _models.Export(merged, "ties-out", chunkElements: 8);

        // DARE on the computed delta, by the mask's definition, then TIES as Reference computes it.
        var key = DareMask.Key(11, 0, "w");
        var threshold = DareMask.Threshold(0.5);
        var dropped = lora.Select((d, i) => DareMask.IsDropped(key, i, threshold) ? 0f : d * 2f).ToArray();
        var expected = Reference.Ties(new[] { dropped, Reference.Delta(_base, tuned) }, new[] { 1.0, 0.5 }, new[] { 1.0, 0.6 }, true, 1.0);
        Reference.AssertClose(Reference.Apply(_base, expected), TestModels.ReadFloats(output, "w"));
    }
}
