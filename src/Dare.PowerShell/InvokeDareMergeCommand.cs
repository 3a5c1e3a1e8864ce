using System.Management.Automation;
using System.Security.Cryptography;
using System.Text;
using Dare.Engine;
using Dare.Engine.Merge;
using Dare.Engine.Partitions;
using Dare.Engine.Recipes;
using Dare.Engine.Safetensors;

namespace Dare.PowerShell;

/// <summary>
/// Invoke-DareMerge: runs a mergekit-style YAML recipe (or a batch of them, one per YAML document). Every recipe
/// of the batch is parsed and checked (keys, values, model paths, architectures, output folders) before anything
/// is written; the merges then run in order through the same engine path as Export-Safetensors.
/// </summary>
[Cmdlet(VerbsLifecycle.Invoke, "DareMerge", SupportsShouldProcess = true, DefaultParameterSetName = PathSet, HelpUri = DareHelp.Uri + "#yaml-recipes")]
[OutputType(typeof(ExportResult))]
public sealed class InvokeDareMergeCommand : DareCmdlet
{
    private const string PathSet = "Path";
    private const string LiteralPathSet = "LiteralPath";
    private const string YamlSet = "Yaml";
    private const string RecipeSet = "Recipe";

    /// <summary>The recipe file (.yml/.yaml). Relative model and output paths in it resolve against its folder.</summary>
    [Parameter(Mandatory = true, Position = 0, ParameterSetName = PathSet, ValueFromPipelineByPropertyName = true)]
    public string ConfigPath { get; set; } = "";

    /// <summary>The recipe file, used exactly as typed (no wildcards); files piped from Get-ChildItem bind here.</summary>
    [Parameter(Mandatory = true, ParameterSetName = LiteralPathSet, ValueFromPipelineByPropertyName = true)]
    [Alias("PSPath", "LP", "FullName")]
    public string LiteralPath { get; set; } = "";

    /// <summary>
    /// The recipe as YAML text. Strings piped in (e.g. the lines of Get-Content) are joined with newlines and read as
    /// one text when the input ends. Relative paths in it resolve against the current location.
    /// </summary>
    [Parameter(Mandatory = true, ParameterSetName = YamlSet, ValueFromPipeline = true)]
    [AllowEmptyString]
    public string Yaml { get; set; } = "";

    /// <summary>
    /// A parsed recipe (a RecipeBatch from [Dare.Engine.Recipes.RecipeParser]), or a hashtable or object with the YAML's
    /// keys (a list of them is a batch). Relative paths in recipe data resolve against the current location.
    /// </summary>
    [Parameter(Mandatory = true, ParameterSetName = RecipeSet, ValueFromPipeline = true)]
    [RecipeTransformation]
    public RecipeArgument Recipe { get; set; } = null!;

    /// <summary>Output folder of the (last) merge; overrides the recipe's output.path.</summary>
    [Parameter]
    public string? OutputPath { get; set; }

    /// <summary>As -OutputPath, used exactly as typed (no wildcards).</summary>
    [Parameter]
    public string? OutputLiteralPath { get; set; }

    /// <summary>Output dtype of the (last) merge's floating-point tensors; overrides the recipe's out_dtype and dtype.</summary>
    [Parameter]
    [ValidateSet("bfloat16", "float16", "float32")]
    public string? DType { get; set; }

    /// <summary>Largest shard of the (last) merge, e.g. 5GB or 500MB; overrides the recipe's output.max_shard_size.</summary>
    [Parameter]
    public string? MaxShardSize { get; set; }

    /// <summary>Replace existing non-empty output folders (each only once its new model is complete).</summary>
    [Parameter]
    public SwitchParameter Force { get; set; }

    /// <summary>Write NaN/Inf values (in an input, or from overflow in the merge or the output dtype) with a warning per tensor instead of failing.</summary>
    [Parameter]
    public SwitchParameter AllowNonFinite { get; set; }

    /// <summary>
    /// Keep output folders that already hold a completed export of the same recipe (resumes an interrupted batch);
    /// a folder holding another model is an error unless -Force.
    /// </summary>
    [Parameter]
    public SwitchParameter SkipExisting { get; set; }

    /// <summary>
    /// Replay a recipe (a dare_recipe.yml) even where its recorded inputs (dare_inputs: file sizes and header hashes)
    /// differ from the files now: a warning per difference instead of ReplayInputChanged.
    /// </summary>
    [Parameter]
    public SwitchParameter AllowChangedInputs { get; set; }

    /// <summary>
    /// Write only partition i of N ("i/N", i from 0 to N-1) of the recipe's output (a batch of one recipe); the last partition
    /// to finish, or Complete-DareExport, publishes it. A recipe without random_seed uses seed 0 here, so all partitions agree.
    /// </summary>
    [Parameter]
    public string? Partition { get; set; }

    /// <summary>
    /// Where the merge math runs: cpu (the default: the SIMD kernels), cuda or cuda:N (the TorchSharp tensor backend on
    /// that GPU; needs a module built with ./build.ps1 Build -Cuda), or torch-cpu (the tensor backend on the CPU, to test
    /// and measure it). The merged bytes are the same on every device.
    /// </summary>
    [Parameter]
    [ValidatePattern(ComputeDevice.Pattern)]
    [ArgumentCompleter(typeof(DeviceCompleter))]
    public string? Device { get; set; }

    /// <summary>Seed of DARE steps without random_seed under -Partition: fixed, since every partition must draw the same masks.</summary>
    public const long PartitionDefaultSeed = 0;

    // Lines piped into -Yaml, read as one text in EndProcessing.
    private readonly StringBuilder _yaml = new();
    private int _yamlLines;
    private CmdletObserver? _observer;
    private int _batchSize;

    protected override void BeginProcessing() => Run(() =>
    {
        if (OutputPath is not null && OutputLiteralPath is not null)
        {
            throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument, "Give -OutputPath or -OutputLiteralPath, not both.");
        }
    });

    protected override void ProcessRecord() => Run(() =>
    {
        if (ParameterSetName == YamlSet)
        {
            // A newline before every line but the first (by count: leading empty lines keep their line numbers).
            if (_yamlLines++ > 0) _yaml.Append('\n');
            _yaml.Append(Yaml);
            // Counted as the lines come, so an endless or huge pipeline stops at the limit rather than filling memory.
            RecipeLimits.CheckLength(_yaml.Length, "YAML text");
            return;
        }
        foreach (var batch in Batches()) Merge(batch);
    });

    protected override void EndProcessing() => Run(() =>
    {
        if (ParameterSetName == YamlSet) Merge(RecipeParser.ParseText(_yaml.ToString(), SessionState.Path.CurrentFileSystemLocation.ProviderPath));
    });

    private IEnumerable<RecipeBatch> Batches()
    {
        if (ParameterSetName == RecipeSet)
        {
            yield return Recipe.Parse();
            yield break;
        }
        var literal = ParameterSetName == LiteralPathSet;
        var given = literal ? LiteralPath : ConfigPath;
        var paths = PathResolver.ResolveExisting(SessionState, given, literal);
        if (paths.Count > 1 && (OutputPath ?? OutputLiteralPath) is not null)
        {
            throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument,
                $"'{given}' matches {paths.Count} recipe files but -OutputPath names one folder; give each recipe its output: {{ path }} and leave out -OutputPath.");
        }
        foreach (var path in paths) yield return RecipeParser.ParseFile(path);
    }

    private void Merge(RecipeBatch batch)
    {
        foreach (var warning in batch.Warnings) WriteWarning(warning);
        var partition = Partition is null ? (ExportPartition?)null : ExportPartition.Parse(Partition);
        if (partition is not null && batch.Recipes.Count != 1)
        {
            throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument,
                $"-Partition splits one recipe's output, but the batch holds {batch.Recipes.Count} recipes; run the others first, then the last one with -Partition.");
        }
        var options = new RecipePlanOptions
        {
            OutputPath = OutputLiteralPath is not null ? PathResolver.ResolveOutput(SessionState, OutputLiteralPath, literal: true)
                : OutputPath is not null ? PathResolver.ResolveOutput(SessionState, OutputPath, literal: false) : null,
            OutputDType = DType is null ? null : SafetensorsDTypes.ParseOutputDType(DType),
            MaxShardSize = MaxShardSize is null ? null : ByteSize.Parse(MaxShardSize),
            Force = Force,
            AllowNonFinite = AllowNonFinite,
            SkipExisting = SkipExisting,
            AllowChangedInputs = AllowChangedInputs,
            DefaultSeed = partition is null ? RandomNumberGenerator.GetInt32(int.MaxValue) : PartitionDefaultSeed,
            Partition = partition,
            Device = Device is null ? null : ComputeDevice.Parse(Device),
        };
        var plan = RecipePlanner.Plan(batch, options);
        foreach (var warning in plan.Plans.SelectMany(p => p.Warnings)) WriteWarning(warning);
        WriteGuidance(plan.Plans.SelectMany(p => p.Guidance));

        _batchSize = batch.Recipes.Count;
        _observer = new CmdletObserver(this);
        var runner = new RecipeRunner(_observer, Cancellation) { CurrentLocation = SessionState.Path.CurrentFileSystemLocation.ProviderPath };
        foreach (var result in runner.Run(plan, Confirm))
        {
            _observer.Complete();
            WriteVerbose($"Wrote '{result.Path}': {result.TensorCount} tensors, {ByteSize.Format(result.BytesWritten)} in {result.Elapsed.TotalSeconds:0.0} s ({result.MegabytesPerSecond:0} MB/s read).");
            WriteObject(result);
        }
    }

    private bool Confirm(MergePlan plan)
    {
        // The progress bar names the recipe being merged, and its place in a batch.
        _observer!.Subject = $"'{plan.Recipe.DisplayName}'" + (_batchSize > 1 ? $" ({plan.Recipe.Index + 1} of {_batchSize})" : "");
        var description = plan.Summary.Describe();
        if (plan.UsesDefaultSeed)
        {
            WriteVerbose($"'{plan.Recipe.DisplayName}' gives no random_seed; its DARE masks use seed {SeedOf(plan.Vector)} (recorded in {MergeExecutor.RecipeFileName}).");
        }
        // ShouldProcess writes the plan as a verbose record under -Verbose (so it is not written here too) and prints it
        // as "What if:" under -WhatIf; a what-if (or a declined confirmation) gets it as a verbose record as well.
        if (ShouldProcess(description, $"Write the merged model '{plan.Recipe.DisplayName}' to '{plan.Export.Destination}'?{Environment.NewLine}{description}", "Invoke-DareMerge")) return true;
        WriteVerbose(description);
        return false;
    }

    private static long? SeedOf(TaskVector vector) =>
        (vector.IsMerged ? vector.Inputs : new[] { vector }).Select(v => v.Dare?.Seed).FirstOrDefault(s => s is not null);
}
