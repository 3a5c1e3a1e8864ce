using Dare.Engine.Safetensors;
using Xunit;
using static Dare.Engine.Tests.Safetensors.Samples;
using static Dare.Engine.Tests.Safetensors.WriterHelper;

namespace Dare.Engine.Tests.Safetensors;

/// <summary>The destination only ever holds a complete model: the old one, or the new one after Commit.</summary>
public sealed class CheckpointWriterAtomicityTests : IDisposable
{
    private readonly TempDirectory _temp = new();

    public CheckpointWriterAtomicityTests() => TorchRuntime.EnsureInitialized();

    public void Dispose() => _temp.Dispose();

    private static readonly IReadOnlyList<RawTensor> NewModel = SmallModel(2);

    /// <summary>A destination holding an older model export (written by the independent writer) with files the new one lacks.</summary>
    private string ExistingModel()
    {
        var destination = _temp.CreateFolder("out");
        RawSafetensors.WriteFile(Path.Combine(destination, "model.safetensors"), new[] { new RawTensor("old", "F32", new long[] { 2 }, RawData.F32(1, 2)) });
        File.WriteAllText(Path.Combine(destination, "README.md"), "from the previous model");
        File.WriteAllText(Path.Combine(destination, "tokenizer.json"), "{}");
        return destination;
    }

    private static void AssertHoldsNewModel(string destination)
    {
        Assert.False(File.Exists(Path.Combine(destination, "README.md")));
        Assert.False(File.Exists(Path.Combine(destination, "tokenizer.json")));
        var checkpoint = Checkpoint.Open(destination);
        using var reader = new TensorReader();
        Assert.Equal(NewModel.Select(t => t.Name), checkpoint.Tensors.Select(t => t.Name));
        foreach (var expected in NewModel) AssertReadsBack(reader, checkpoint.Find(expected.Name)!, expected);
    }

    [Fact]
    public void Existing_non_empty_destination_without_Force_is_OutputExists_and_left_untouched()
    {
        var destination = ExistingModel();
        var before = Snapshot(destination);

        var ex = Assert.Throws<DareException>(() => CheckpointWriter.Create(destination, Plan(NewModel), new CheckpointWriteOptions()));

        Assert.Equal(DareErrorId.OutputExists, ex.ErrorId);
        Assert.Equal(DareErrorKind.ResourceExists, ex.Kind);
        Assert.Equal(destination, ex.FilePath);
        Assert.Equal(before, Snapshot(destination));
        Assert.Empty(LeftoversBeside(destination));
    }

    [Fact]
    public void CheckDestination_accepts_a_missing_or_empty_folder_and_refuses_a_non_empty_one_without_Force()
    {
        CheckpointWriter.CheckDestination(_temp["missing"], force: false);
        CheckpointWriter.CheckDestination(_temp.CreateFolder("empty"), force: false);
        var destination = ExistingModel();
        CheckpointWriter.CheckDestination(destination, force: true);
        Assert.Equal(DareErrorId.OutputExists, Assert.Throws<DareException>(() => CheckpointWriter.CheckDestination(destination, force: false)).ErrorId);
    }

    [Fact]
    public void An_existing_empty_destination_folder_is_used_without_Force()
    {
        var destination = _temp.CreateFolder("out");

        Write(destination, NewModel);

        AssertHoldsNewModel(destination);
        Assert.Empty(LeftoversBeside(destination));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_destination_that_is_a_file_is_OutputExists_even_with_Force(bool force)
    {
        var destination = _temp["out"];
        File.WriteAllText(destination, "a file, not a folder");

        var ex = Assert.Throws<DareException>(() => CheckpointWriter.Create(destination, Plan(NewModel), new CheckpointWriteOptions { Force = force }));

        Assert.Equal(DareErrorId.OutputExists, ex.ErrorId);
        Assert.Equal(destination, ex.FilePath);
        Assert.Equal("a file, not a folder", File.ReadAllText(destination));
        Assert.Empty(LeftoversBeside(destination));
    }

    [Fact]
    public void A_missing_parent_folder_is_created()
    {
        var destination = _temp["a/b/out"];

        Write(destination, NewModel);

        AssertHoldsNewModel(destination);
    }

    [Fact]
    public void Nothing_appears_at_the_destination_before_Commit()
    {
        var destination = _temp["out"];
        using var writer = CheckpointWriter.Create(destination, Plan(NewModel), new CheckpointWriteOptions());
        WriteAll(writer, NewModel);

        Assert.False(Directory.Exists(destination));
        // The data is staged in one hidden temporary folder beside the destination, with its owner record beside it.
        var staging = LeftoversBeside(destination);
        Assert.Equal(2, staging.Length);
        Assert.Matches("^\\.dare-[0-9a-f]{8}$", Path.GetFileName(staging[0]));
        Assert.Equal(staging[0] + ".owner", staging[1]);
        Assert.True(Directory.Exists(staging[0]));

        writer.Commit();

        AssertHoldsNewModel(destination);
        Assert.Empty(LeftoversBeside(destination));
    }

    [Fact]
    public void With_Force_the_old_content_is_replaced_only_on_Commit()
    {
        var destination = ExistingModel();
        var before = Snapshot(destination);

        using (var writer = CheckpointWriter.Create(destination, Plan(NewModel), new CheckpointWriteOptions { Force = true }))
        {
            WriteAll(writer, NewModel);
            Assert.Equal(before, Snapshot(destination)); // fully written, not yet committed: still the old model

            writer.Commit();
        }

        AssertHoldsNewModel(destination);
        Assert.Empty(LeftoversBeside(destination));
    }

    [Fact]
    public void With_Force_a_sharded_model_replaces_a_single_file_model_completely()
    {
        var destination = ExistingModel();

        Write(destination, NewModel, new CheckpointWriteOptions { Force = true, MaxShardSize = 400 });

        Assert.False(File.Exists(Path.Combine(destination, "model.safetensors")));
        Assert.True(File.Exists(Path.Combine(destination, "model.safetensors.index.json")));
        AssertHoldsNewModel(destination);
        Assert.Empty(LeftoversBeside(destination));
    }

    [Fact]
    public void A_failure_mid_write_leaves_no_destination_and_no_temporary_folder()
    {
        var destination = _temp["out"];

        Action writeThenFail = () =>
        {
            using var writer = CheckpointWriter.Create(destination, Plan(NewModel), new CheckpointWriteOptions { MaxShardSize = 300 });
            WriteOne(writer, NewModel[0]);
            WriteOne(writer, NewModel[1], chunk: 16, stopAfterBytes: 48); // part of a tensor
            Assert.Equal(2, LeftoversBeside(destination).Length); // the staging folder and its owner record exist while writing
            throw new InvalidDataException("simulated failure while producing a tensor");
        };
        var failure = Assert.Throws<InvalidDataException>(writeThenFail);

        Assert.Equal("simulated failure while producing a tensor", failure.Message);
        Assert.False(Directory.Exists(destination));
        Assert.False(File.Exists(destination));
        Assert.Empty(LeftoversBeside(destination));
    }

    [Fact]
    public void Cancellation_after_every_tensor_but_before_Commit_leaves_no_destination_and_no_temporary_folder()
    {
        var destination = _temp["out"];
        using var cancellation = new CancellationTokenSource();

        Assert.Throws<OperationCanceledException>(() =>
        {
            using var writer = CheckpointWriter.Create(destination, Plan(NewModel), new CheckpointWriteOptions { MaxShardSize = 300 });
            WriteAll(writer, NewModel);
            cancellation.Cancel();
            cancellation.Token.ThrowIfCancellationRequested();
            writer.Commit();
        });

        Assert.False(Directory.Exists(destination));
        Assert.Empty(LeftoversBeside(destination));
    }

    [Fact]
    public void With_Force_the_old_content_survives_a_writer_disposed_without_Commit()
    {
        var destination = ExistingModel();
        var before = Snapshot(destination);

        using (var writer = CheckpointWriter.Create(destination, Plan(NewModel), new CheckpointWriteOptions { Force = true }))
        {
            WriteOne(writer, NewModel[0]);
            WriteOne(writer, NewModel[1], stopAfterBytes: 10);
        }

        Assert.Equal(before, Snapshot(destination));
        Assert.Empty(LeftoversBeside(destination));
        Assert.Equal("old", Assert.Single(Checkpoint.Open(destination).Tensors).Name);
    }

    [Fact]
    public void Disposing_after_Commit_keeps_the_committed_output()
    {
        var destination = _temp["out"];
        var writer = CheckpointWriter.Create(destination, Plan(NewModel), new CheckpointWriteOptions());
        WriteAll(writer, NewModel);
        writer.Commit();
        writer.Dispose();
        writer.Dispose();

        AssertHoldsNewModel(destination);
    }
}
