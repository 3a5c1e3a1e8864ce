using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using Dare.Engine.Tests.Safetensors;
using Xunit;

namespace Dare.Engine.Tests.Merge;

/// <summary>
/// A tensor that follows one whose size is not a whole number of 4096-byte blocks (a norm of 1,536 bfloat16 values)
/// starts part-way into a block of the output file. The export computes each chunk that far into its output buffer,
/// so the file writes it from there instead of copying it through its staging buffer, and the bytes are the same.
/// </summary>
public sealed class OutputInPhaseTests : IDisposable
{
    private const long Chunk = 1 << 18;

    // Written in this order. inv_freq (800 bytes, copied as stored) and the norms (3072 bytes) put every tensor after
    // them out of step with the blocks; up_proj is three chunks of 512 KB, q_proj two of 512 KB and one of 128 KB.
    private static readonly (string Name, long[] Shape)[] Shapes =
    {
        ("model.layers.0.rotary_emb.inv_freq", new long[] { 100 }),
        ("model.layers.0.input_layernorm.weight", new long[] { 1536 }),
        ("model.layers.0.mlp.up_proj.weight", new long[] { 1536, 512 }),
        ("model.layers.0.post_attention_layernorm.weight", new long[] { 1536 }),
        ("model.layers.0.self_attn.q_proj.weight", new long[] { 1536, 384 }),
    };

    private readonly TestModels _models = new();

    public void Dispose() => _models.Dispose();

    private static long Elements(long[] shape) => shape.Aggregate(1L, (a, b) => a * b);

    [Fact]
    public void A_tensors_block_phase_is_its_offset_in_its_shard_modulo_4096()
    {
        var plan = new[]
        {
            new PlannedTensor("norm", SafetensorsDType.BF16, new long[] { 1536 }),      // at 0, 3072 bytes
            new PlannedTensor("up", SafetensorsDType.BF16, new long[] { 4096, 1536 }),  // at 3072, 3 × 4096 × 1024 bytes
            new PlannedTensor("norm2", SafetensorsDType.BF16, new long[] { 1536 }),     // at 3072 + 12,582,912: phase 3072
            new PlannedTensor("q", SafetensorsDType.BF16, new long[] { 1536, 1536 }),   // at 6144 + 12,582,912: phase 2048
            new PlannedTensor("inv", SafetensorsDType.I64, new long[] { 100 }),         // next shard (the one before is full): at 0
            new PlannedTensor("last", SafetensorsDType.F32, new long[] { 10 }),         // at 800: phase 800
        };
        using var writer = CheckpointWriter.Create(_models.PathOf("planned"), plan, new CheckpointWriteOptions { MaxShardSize = 12_582_912 + 6144 + 4_718_592 });

        Assert.Equal(new[] { 0, 3072, 3072, 2048, 0, 800 }, plan.Select(t => writer.BlockPhase(t.Name)));
        Assert.Equal(2, writer.ShardFileNames.Count);
    }

    [Fact]
    public void Chunks_after_a_tensor_of_part_blocks_are_written_from_their_output_buffers_and_hold_the_merge()
    {
        var (baseModel, tuned, plan) = Models();
        var executor = new MergeExecutor(chunkElements: Chunk);
        executor.Export(plan, new ExportOptions { Destination = _models.PathOf("merged"), OutputDType = SafetensorsDType.BF16 });

        // Each chunk of 512 KB starts within a block; every whole block after that start is written in place.
        Assert.InRange(executor.BytesWrittenInPlace, 5 * (512 * 1024 - 4096), 5 * 512 * 1024);
        var merged = Checkpoint.Open(_models.PathOf("merged"));
        foreach (var (name, _) in Shapes)
        {
            var info = merged.Find(name)!;
            if (info.DType == SafetensorsDType.I64)
            {
                Assert.Equal(TestModels.ReadRaw<long>(baseModel.Find(name)!), TestModels.ReadRaw<long>(info));
                continue;
            }
            // The linear merge written out: δᵢ = tunedᵢ − base in float32, 0.25·δ₀ then a fused multiply-add of 0.75·δ₁,
            // plus the base, rounded to bfloat16.
            var b = TestModels.ReadRaw<ushort>(baseModel.Find(name)!).Select(Bf16Bits.ToFloat).ToArray();
            var t0 = TestModels.ReadRaw<ushort>(tuned[0].Find(name)!).Select(Bf16Bits.ToFloat).ToArray();
            var t1 = TestModels.ReadRaw<ushort>(tuned[1].Find(name)!).Select(Bf16Bits.ToFloat).ToArray();
            var expected = b.Select((x, i) => Bf16Bits.FromFloat(MathF.FusedMultiplyAdd(t1[i] - x, 0.75f, (t0[i] - x) * 0.25f) + x)).ToArray();
            Assert.Equal(expected, TestModels.ReadRaw<ushort>(info));
        }
    }

    [Fact]
    public void The_tensor_backends_chunks_are_written_from_their_output_buffers_too()
    {
        var (_, _, plan) = Models();
        var executor = new MergeExecutor(chunkElements: Chunk);
        executor.Export(plan, new ExportOptions { Destination = _models.PathOf("merged"), OutputDType = SafetensorsDType.BF16, Device = ComputeDevice.Parse("torch-cpu") });

        // The device's result is copied into an output buffer at the chunk's phase, so the file writes it from there.
        Assert.InRange(executor.BytesWrittenInPlace, 5 * (512 * 1024 - 4096), 5 * 512 * 1024);
    }

    /// <summary>The base, two fine-tunes of it and their linear merge (weights 0.25 and 0.75).</summary>
    private (Checkpoint Base, Checkpoint[] Tuned, TaskVector Plan) Models()
    {
        var random = new Random(3);
        TestTensor Tensor(string name, long[] shape, float[] values) => name.EndsWith("inv_freq", StringComparison.Ordinal)
            ? TestTensor.I64(name, Enumerable.Range(0, 100).Select(i => (long)i * 7).ToArray(), shape)
            : TestTensor.Bf16(name, values, shape);
        var baseValues = Shapes.ToDictionary(s => s.Name, s => TestModels.RandomFloats(random, (int)Elements(s.Shape)));
        var baseModel = _models.Write("base", Shapes.Select(s => Tensor(s.Name, s.Shape, baseValues[s.Name])));
        var tuned = new[] { 0, 1 }.Select(m => _models.Write($"tuned{m}", Shapes.Select(s => Tensor(s.Name, s.Shape, TestModels.Perturb(random, baseValues[s.Name], 0.05))))).ToArray();
        var plan = TaskVector.Combine(tuned.Select(t => TaskVector.FromModels(baseModel, t)).ToList(),
            new MergeOptions(MergeMethod.Linear, new TensorParameter[] { 0.25, 0.75 }, false, 1.0));
        return (baseModel, tuned, plan);
    }
}
