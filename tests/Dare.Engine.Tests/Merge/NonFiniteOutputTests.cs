using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using Xunit;

namespace Dare.Engine.Tests.Merge;

/// <summary>
/// A merge of finite inputs can still overflow (task arithmetic adds δs): the output must then fail, or warn with the
/// exact count, whichever route computed it. The single passes scan their output as they write it and the writer
/// skips chunks found clean, so these check that the count still covers every chunk of a tensor.
/// </summary>
public sealed class NonFiniteOutputTests : IDisposable
{
    private const int Elements = 5000;
    private static readonly int[] OverflowAt = { 1500, 4999 }; // in the second and the last chunk of 1000 elements

    private readonly TestModels _models = new();

    public void Dispose() => _models.Dispose();

    /// <summary>Base + two fine-tunes whose δs sum past bfloat16's (and float32's) largest value at <see cref="OverflowAt"/>, and nowhere else.</summary>
    private TaskVector OverflowingSum()
    {
        var random = new Random(3);
        var @base = TestModels.RandomFloats(random, Elements);
        var tuned = new[] { @base.ToArray(), @base.ToArray() };
        foreach (var values in tuned)
        {
            for (var j = 0; j < Elements; j++) values[j] += random.Next(-4, 5) / 16f;
        }
        foreach (var j in OverflowAt)
        {
            @base[j] = 3.0e38f;
            tuned[0][j] = tuned[1][j] = 3.3e38f; // δ ≈ 3e37 each: 3e38 + 6e37 overflows
        }
        var baseModel = _models.Write("base", new[] { TestTensor.Bf16("model.layers.0.w", @base) });
        var vectors = tuned.Select((values, m) => TaskVector.FromModels(baseModel, _models.Write($"tuned{m}", new[] { TestTensor.Bf16("model.layers.0.w", values) }))).ToList();
        return TaskVector.Combine(vectors, new MergeOptions(MergeMethod.Linear, new TensorParameter[] { 1.0, 1.0 }, Normalize: false));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void An_output_that_overflows_fails_naming_the_tensor_and_its_count_and_nothing_is_written(bool singlePass)
    {
        var destination = _models.PathOf("out");
        var failure = Assert.Throws<DareException>(() =>
            new MergeExecutor(null, default, chunkElements: 1000) { SinglePassLinear = singlePass }
                .Export(OverflowingSum(), new ExportOptions { Destination = destination, OutputDType = SafetensorsDType.BF16 }));

        Assert.Equal(DareErrorId.NonFiniteValues, failure.ErrorId);
        Assert.Contains("'model.layers.0.w'", failure.Message);
        Assert.Contains($" {OverflowAt.Length} NaN/Inf", failure.Message);
        Assert.False(Directory.Exists(destination));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Allowed_non_finite_output_warns_with_the_count_over_all_chunks_and_is_written_as_computed(bool singlePass)
    {
        var warnings = new List<string>();
        var destination = _models.PathOf("out");
        new MergeExecutor(new Warnings(warnings), default, chunkElements: 1000) { SinglePassLinear = singlePass }
            .Export(OverflowingSum(), new ExportOptions { Destination = destination, OutputDType = SafetensorsDType.BF16, AllowNonFinite = true });

        var warning = Assert.Single(warnings, w => w.Contains("NaN/Inf"));
        Assert.Contains($" {OverflowAt.Length} NaN/Inf", warning);
        var written = TestModels.ReadRaw<ushort>(Checkpoint.Open(destination).Find("model.layers.0.w")!);
        Assert.Equal(OverflowAt, Enumerable.Range(0, Elements).Where(j => written[j] == 0x7F80)); // +Inf, where the sums overflow
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void On_the_device_backend_an_overflowing_output_fails_or_warns_with_the_same_count(bool allow)
    {
        var warnings = new List<string>();
        var destination = _models.PathOf("device-out");
        TorchRuntime.EnsureInitialized();
        var live = TorchSharp.DisposeScopeManager.Statistics.TensorStatistics.ThreadTotalLiveCount;
        var options = new ExportOptions { Destination = destination, OutputDType = SafetensorsDType.BF16, AllowNonFinite = allow, Device = ComputeDevice.Parse("torch-cpu") };
        void Export() => new MergeExecutor(new Warnings(warnings), default, chunkElements: 1000).Export(OverflowingSum(), options);
        if (!allow)
        {
            var failure = Assert.Throws<DareException>(Export);
            Assert.Equal(DareErrorId.NonFiniteValues, failure.ErrorId);
            Assert.Contains($"'model.layers.0.w' for '{destination}' has {OverflowAt.Length} NaN/Inf", failure.Message);
            Assert.False(Directory.Exists(destination));
        }
        else
        {
            Export();
            Assert.Contains($" {OverflowAt.Length} NaN/Inf", Assert.Single(warnings, w => w.Contains("NaN/Inf")));
            var written = TestModels.ReadRaw<ushort>(Checkpoint.Open(destination).Find("model.layers.0.w")!);
            Assert.Equal(OverflowAt, Enumerable.Range(0, Elements).Where(j => written[j] == 0x7F80));
        }
        Assert.Equal(live, TorchSharp.DisposeScopeManager.Statistics.TensorStatistics.ThreadTotalLiveCount);
    }

    [Fact]
    public void On_the_device_backend_a_NaN_in_an_input_fails_naming_its_file_and_nothing_is_written()
    {
        var random = new Random(4);
        var @base = TestModels.RandomFloats(random, Elements);
        var tuned = TestModels.Perturb(random, @base);
        tuned[3333] = float.NaN;
        var baseModel = _models.Write("nan-base", new[] { TestTensor.Bf16("model.layers.0.w", @base) });
        var tunedModel = _models.Write("nan-tuned", new[] { TestTensor.Bf16("model.layers.0.w", tuned) });
        var destination = _models.PathOf("nan-out");
        var failure = Assert.Throws<DareException>(() => new MergeExecutor(null, default, chunkElements: 1000).Export(TaskVector.FromModels(baseModel, tunedModel),
            new ExportOptions { Destination = destination, OutputDType = SafetensorsDType.BF16, Device = ComputeDevice.Parse("torch-cpu") }));
        Assert.Equal(DareErrorId.NonFiniteValues, failure.ErrorId);
        Assert.Contains("nan-tuned", failure.Message);
        Assert.False(Directory.Exists(destination));
    }

    [Fact]
    public unsafe void The_writer_counts_the_chunks_it_scans_and_reports_at_the_tensor_end_even_when_the_last_chunk_is_known_finite()
    {
        var values = new float[32];
        values[2] = float.NaN;
        values[20] = float.PositiveInfinity; // in a chunk declared finite: not scanned, so not counted
        var data = new byte[128];
        Buffer.BlockCopy(values, 0, data, 0, 128);
        var destination = _models.PathOf("written");
        var failure = Assert.Throws<DareException>(() =>
        {
            using var writer = CheckpointWriter.Create(destination, new[] { new PlannedTensor("out", SafetensorsDType.F32, new long[] { 32 }) },
                new CheckpointWriteOptions { NonFinite = new NonFiniteGuard(false, null) });
            writer.BeginTensor("out");
            fixed (byte* bytes = data)
            {
                writer.Append(bytes, 64);
                writer.Append(bytes + 64, 64, knownFinite: true);
            }
            writer.Commit();
        });
        Assert.Equal(DareErrorId.NonFiniteValues, failure.ErrorId);
        Assert.Contains(" 1 NaN/Inf", failure.Message);
        Assert.False(Directory.Exists(destination));
    }

    private sealed class Warnings(List<string> warnings) : IMergeObserver
    {
        public void Progress(MergeProgress progress) { }
        public void Verbose(string message) { }
        public void Warning(string message) => warnings.Add(message);
    }
}
