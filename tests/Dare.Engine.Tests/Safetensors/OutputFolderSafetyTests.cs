using System.Diagnostics;
using Dare.Engine.Safetensors;
using Xunit;
using static Dare.Engine.Tests.Safetensors.Samples;
using static Dare.Engine.Tests.Safetensors.WriterHelper;

namespace Dare.Engine.Tests.Safetensors;

/// <summary>What -Force may replace, where the temporary folder goes, and what a later export does with leftovers.</summary>
public sealed class OutputFolderSafetyTests : IDisposable
{
    private readonly TempDirectory _temp = new();

    public OutputFolderSafetyTests() => TorchRuntime.EnsureInitialized();

    public void Dispose() => _temp.Dispose();

    private static readonly IReadOnlyList<RawTensor> NewModel = SmallModel(1);

    private static void AssertHoldsNewModel(string destination)
    {
        var checkpoint = Checkpoint.Open(destination);
        using var reader = new TensorReader();
        Assert.Equal(NewModel.Select(t => t.Name), checkpoint.Tensors.Select(t => t.Name));
        foreach (var expected in NewModel) AssertReadsBack(reader, checkpoint.Find(expected.Name)!, expected);
    }

    private static string OldModel(string folder)
    {
        Directory.CreateDirectory(folder);
        RawSafetensors.WriteFile(Path.Combine(folder, "model.safetensors"), new[] { new RawTensor("old", "F32", new long[] { 2 }, RawData.F32(1, 2)) });
        File.WriteAllText(Path.Combine(folder, "config.json"), "{\"old\": true}");
        return folder;
    }

    private static DareException Refused(string destination, CheckpointWriteOptions options)
    {
        var ex = Assert.Throws<DareException>(() => CheckpointWriter.Create(destination, Plan(NewModel), options));
        Assert.Equal(DareErrorId.OutputNotReplaceable, ex.ErrorId);
        Assert.Equal(DareErrorKind.ResourceExists, ex.Kind);
        Assert.Equal(Path.GetFullPath(destination), ex.FilePath);
        Assert.Contains(Path.GetFullPath(destination), ex.Message, StringComparison.Ordinal);
        return ex;
    }

    /// <summary>The process id of a process that has exited (so an owner record naming it belongs to no one).</summary>
    private static int DeadProcessId()
    {
        using var process = Process.Start(new ProcessStartInfo("true") { UseShellExecute = false })!;
        process.WaitForExit();
        return process.Id;
    }

    /// <summary>An owner record written as the format says (not through the code under test).</summary>
    private static void WriteOwnerRecord(string folder, int processId, string bootId, string role, string destinationName) =>
        File.WriteAllText(folder + ".owner", $"pid={processId}\nboot_id={bootId}\nstart_time=1\nrole={role}\ndestination={destinationName}\n");

    private static string BootId => File.ReadAllText("/proc/sys/kernel/random/boot_id").Trim();

    [Fact]
    public void Force_refuses_a_folder_holding_a_foreign_file_naming_it_and_touches_nothing()
    {
        var destination = OldModel(_temp["out"]);
        File.WriteAllText(Path.Combine(destination, "thesis.txt"), "three years of work");
        var before = Snapshot(destination);

        var ex = Refused(destination, new CheckpointWriteOptions { Force = true });

        Assert.Contains("'thesis.txt'", ex.Message, StringComparison.Ordinal);
        Assert.Equal(before, Snapshot(destination));
        Assert.Empty(LeftoversBeside(destination));
    }

    [Fact]
    public void Force_refuses_a_folder_holding_a_sub_folder()
    {
        var destination = OldModel(_temp["out"]);
        Directory.CreateDirectory(Path.Combine(destination, "base"));

        var ex = Refused(destination, new CheckpointWriteOptions { Force = true });

        Assert.Contains("'base'", ex.Message, StringComparison.Ordinal);
        Assert.True(Directory.Exists(Path.Combine(destination, "base")));
    }

    [Fact]
    public void Force_replaces_a_folder_holding_only_what_a_model_export_holds()
    {
        var destination = OldModel(_temp["out"]);
        var exportNames = new[]
        {
            "model-00001-of-00002.safetensors", "model.safetensors.index.json", "generation_config.json", "tokenizer.json", "chat_template.jinja",
            "dare_recipe.yml", "README.md", "mergekit_config.yml", "LICENSE",
        };
        foreach (var name in exportNames) File.WriteAllText(Path.Combine(destination, name), "old");

        Write(destination, NewModel, new CheckpointWriteOptions { Force = true });

        Assert.Equal(new[] { "model.safetensors" }, Directory.GetFileSystemEntries(destination).Select(Path.GetFileName));
        AssertHoldsNewModel(destination);
        Assert.Empty(LeftoversBeside(destination));
    }

    [Theory]
    [InlineData("is")]
    [InlineData("holds")]
    [InlineData("inside")]
    public void A_destination_that_is_holds_or_lies_inside_an_input_model_is_refused_even_with_Force(string relation)
    {
        var input = OldModel(_temp["models/base"]);
        var destination = relation switch { "is" => input, "holds" => _temp["models"], _ => Path.Combine(input, "merged") };
        var before = Snapshot(_temp["models"]);

        var ex = Refused(destination, new CheckpointWriteOptions { Force = true, ProtectedPaths = new[] { input } });

        Assert.Contains(relation == "is" ? "is an input model" : input, ex.Message, StringComparison.Ordinal);
        Assert.Equal(before, Snapshot(_temp["models"]));
        Assert.Empty(LeftoversBeside(destination));
    }

    [Fact]
    public void A_single_file_input_protects_its_file_but_the_folder_beside_it_may_hold_outputs()
    {
        var input = _temp["models/base.safetensors"];
        Directory.CreateDirectory(_temp["models"]);
        RawSafetensors.WriteFile(input, NewModel);
        var before = Snapshot(_temp["models"]);

        var ex = Refused(_temp["models"], new CheckpointWriteOptions { Force = true, ProtectedPaths = new[] { input } });
        Write(_temp["models/merged"], NewModel, new CheckpointWriteOptions { ProtectedPaths = new[] { input } });

        Assert.Contains($"holds the input model '{input}'", ex.Message, StringComparison.Ordinal);
        Assert.Equal(before.Concat(Snapshot(_temp["models/merged"]).Select(e => KeyValuePair.Create(Path.Combine("merged", e.Key), e.Value))).OrderBy(e => e.Key, StringComparer.Ordinal),
            Snapshot(_temp["models"]));
        AssertHoldsNewModel(_temp["models/merged"]);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Without_renameat2_the_output_is_moved_into_place_by_plain_renames_and_nothing_is_left(bool existing)
    {
        var destination = existing ? OldModel(_temp["out"]) : _temp["out"];
        Posix.PretendRenameAt2IsMissing = true;
        try
        {
            Write(destination, NewModel, new CheckpointWriteOptions { Force = existing });
        }
        finally
        {
            Posix.PretendRenameAt2IsMissing = false;
        }

        Assert.Equal(new[] { "model.safetensors" }, Directory.GetFileSystemEntries(destination).Select(Path.GetFileName));
        AssertHoldsNewModel(destination);
        Assert.Empty(LeftoversBeside(destination));
    }

    [Fact]
    public void An_input_model_reached_through_a_symbolic_link_is_still_refused()
    {
        var input = OldModel(_temp["base"]);
        var link = _temp["alias"];
        Directory.CreateSymbolicLink(link, input);

        Refused(link, new CheckpointWriteOptions { Force = true, ProtectedPaths = new[] { input } });

        Assert.Equal(input, Directory.ResolveLinkTarget(link, returnFinalTarget: false)!.FullName);
        Assert.True(File.Exists(Path.Combine(input, "model.safetensors")));
    }

    [Fact]
    public void The_current_location_the_home_folder_and_a_file_system_root_are_refused()
    {
        var here = OldModel(_temp["here"]);
        var before = Snapshot(here);

        Assert.Contains("current location", Refused(here, new CheckpointWriteOptions { Force = true, CurrentLocation = here }).Message, StringComparison.Ordinal);
        Assert.Contains("current location", Refused(_temp.Path, new CheckpointWriteOptions { Force = true, CurrentLocation = here }).Message, StringComparison.Ordinal);
        var home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        Assert.Contains("home folder", Refused(home, new CheckpointWriteOptions { Force = true }).Message, StringComparison.Ordinal);
        Assert.Contains("root", Refused("/", new CheckpointWriteOptions { Force = true }).Message, StringComparison.Ordinal);
        Assert.Equal(before, Snapshot(here));
    }

    [Fact]
    public void A_symbolic_link_destination_stays_a_link_and_its_target_folder_is_replaced()
    {
        var target = OldModel(_temp["store/real"]);
        var link = _temp["links/out"];
        Directory.CreateDirectory(_temp["links"]);
        Directory.CreateSymbolicLink(link, target);

        Write(link, NewModel, new CheckpointWriteOptions { Force = true });

        Assert.Equal(target, new DirectoryInfo(link).LinkTarget);
        AssertHoldsNewModel(target);
        Assert.False(File.Exists(Path.Combine(target, "config.json")));
        Assert.Empty(LeftoversBeside(target));
        Assert.Empty(LeftoversBeside(link));
    }

    [Fact]
    public void A_230_character_destination_name_is_written_with_a_short_temporary_name()
    {
        var destination = _temp[new string('m', 230)];

        using (var writer = CheckpointWriter.Create(destination, Plan(NewModel), new CheckpointWriteOptions()))
        {
            WriteAll(writer, NewModel);
            Assert.All(LeftoversBeside(destination), p => Assert.True(Path.GetFileName(p).Length <= 20, p));
            writer.Commit();
        }

        AssertHoldsNewModel(destination);
        Assert.Empty(LeftoversBeside(destination));
    }

    [Fact]
    public void Orphans_of_dead_processes_are_reclaimed_with_a_warning_and_a_live_export_is_left_alone()
    {
        using var live = CheckpointWriter.Create(_temp["live"], Plan(NewModel), new CheckpointWriteOptions());
        var liveTemp = LeftoversBeside(_temp["live"]).Single(p => Directory.Exists(p));
        var dead = _temp.CreateFolder(".dare-0badc0de");
        File.WriteAllBytes(Path.Combine(dead, "model.safetensors"), new byte[3000]);
        var deadPid = DeadProcessId();
        WriteOwnerRecord(dead, deadPid, BootId, "temporary", "out");
        var otherBoot = _temp.CreateFolder(".dare-0000beef");
        WriteOwnerRecord(otherBoot, Environment.ProcessId, "00000000-0000-0000-0000-000000000000", "temporary", "out");
        var warnings = new List<string>();

        Write(_temp["out"], NewModel, new CheckpointWriteOptions { Warning = warnings.Add });

        Assert.False(Directory.Exists(dead));
        Assert.False(File.Exists(dead + ".owner"));
        Assert.False(Directory.Exists(otherBoot));
        Assert.True(Directory.Exists(liveTemp));
        Assert.True(File.Exists(liveTemp + ".owner"));
        Assert.Equal(2, warnings.Count);
        Assert.Contains(warnings, w => w.Contains(dead, StringComparison.Ordinal) && w.Contains("3 KB", StringComparison.Ordinal) && w.Contains($"process {deadPid}", StringComparison.Ordinal));
        Assert.Contains(warnings, w => w.Contains(otherBoot, StringComparison.Ordinal));
        AssertHoldsNewModel(_temp["out"]);
    }

    [Fact]
    public void An_old_model_a_live_process_replaced_but_could_not_delete_is_reclaimed()
    {
        var old = OldModel(_temp[".dare-00c0ffee"]);
        WriteOwnerRecord(old, Environment.ProcessId, BootId, "replaced", "out");
        var warnings = new List<string>();

        Write(_temp["other"], NewModel, new CheckpointWriteOptions { Warning = warnings.Add });

        Assert.False(Directory.Exists(old));
        Assert.False(File.Exists(old + ".owner"));
        Assert.Contains(old, Assert.Single(warnings), StringComparison.Ordinal);
    }

    [Fact]
    public void An_old_model_moved_aside_by_a_replace_killed_between_two_renames_is_put_back()
    {
        var aside = OldModel(_temp[".dare-0123abcd"]);
        var before = Snapshot(aside);
        WriteOwnerRecord(aside, DeadProcessId(), BootId, "previous", "out");
        var warnings = new List<string>();

        Write(_temp["other"], NewModel, new CheckpointWriteOptions { Warning = warnings.Add });

        Assert.Equal(before, Snapshot(_temp["out"]));
        Assert.False(Directory.Exists(aside));
        Assert.Empty(LeftoversBeside(_temp["out"]));
        Assert.Contains(_temp["out"], Assert.Single(warnings), StringComparison.Ordinal);
    }

    [Fact]
    public void Two_exports_to_one_new_folder_the_second_is_OutputInUse_and_the_first_model_stays()
    {
        var destination = _temp["out"];
        using var first = CheckpointWriter.Create(destination, Plan(NewModel), new CheckpointWriteOptions());
        var second = CheckpointWriter.Create(destination, Plan(NewModel.Take(2).ToList()), new CheckpointWriteOptions());
        WriteAll(first, NewModel);
        WriteAll(second, NewModel.Take(2));
        first.Commit();

        var ex = Assert.Throws<DareException>(() => second.Commit());
        second.Dispose();

        Assert.Equal(DareErrorId.OutputInUse, ex.ErrorId);
        Assert.Equal(destination, ex.FilePath);
        Assert.Contains(destination, ex.Message, StringComparison.Ordinal);
        AssertHoldsNewModel(destination);
        Assert.Empty(LeftoversBeside(destination));
    }

    [Fact]
    public void A_file_that_cannot_be_written_is_OutputWriteFailed_naming_it_and_nothing_is_left()
    {
        var destination = _temp["out"];
        var options = new CheckpointWriteOptions { ExtraFiles = new Dictionary<string, string> { ["no-such-folder/notes.yml"] = "x" } };

        var ex = Assert.Throws<DareException>(() => Write(destination, NewModel, options));

        Assert.Equal(DareErrorId.OutputWriteFailed, ex.ErrorId);
        Assert.Equal(DareErrorKind.WriteError, ex.Kind);
        Assert.EndsWith("no-such-folder/notes.yml", ex.FilePath);
        Assert.Contains("Could not write '", ex.Message, StringComparison.Ordinal);
        Assert.False(Directory.Exists(destination));
        Assert.Empty(LeftoversBeside(destination));
    }

    [Fact]
    public void Exchange_swaps_two_folders_in_one_step()
    {
        var a = _temp.CreateFolder("a");
        var b = _temp.CreateFolder("b");
        File.WriteAllText(Path.Combine(a, "from-a"), "");
        File.WriteAllText(Path.Combine(b, "from-b"), "");

        var result = Posix.Exchange(a, b);

        Assert.True(result.Done, $"renameat2 failed: errno {result.Error}");
        Assert.Equal(new[] { "from-b" }, Directory.GetFiles(a).Select(Path.GetFileName));
        Assert.Equal(new[] { "from-a" }, Directory.GetFiles(b).Select(Path.GetFileName));
    }
}
