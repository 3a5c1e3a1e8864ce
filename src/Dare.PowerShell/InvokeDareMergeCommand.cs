using System.Management.Automation;
using System.Security.Cryptography;
using Dare.Engine;
using Dare.Engine.Merge;
using Dare.Engine.Recipes;
using Dare.Engine.Safetensors;

namespace Dare.PowerShell;

/// <summary>
/// Invoke-DareMerge: runs a mergekit-style YAML recipe (or a batch of them, one per YAML document). Every recipe
/// of the batch is parsed and checked (keys, values, model paths, architectures, output folders) before anything
/// is written; the merges then run in order through the same engine path as Export-Safetensors.
/// </summary>
[Cmdlet(VerbsLifecycle.Invoke, "DareMerge", SupportsShouldProcess = true)]
[OutputType(typeof(ExportResult))]
public sealed class InvokeDareMergeCommand : DareCmdlet
{
    private const string PathSet = "Path";
    private const string YamlSet = "Yaml";
    private const string RecipeSet = "Recipe";

    /// <summary>The recipe file (.yml/.yaml). Relative model and output paths in it resolve against its folder.</summary>
    [Parameter(Mandatory = true, Position = 0, ParameterSetName = PathSet, ValueFromPipelineByPropertyName = true)]
    [Alias("FullName")]
    public string ConfigPath { get; set; } = "";

    /// <summary>The recipe as YAML text. Relative paths in it resolve against the current location.</summary>
    [Parameter(Mandatory = true, ParameterSetName = YamlSet, ValueFromPipeline = true)]
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

    protected override void ProcessRecord() => Run(() =>
    {
        foreach (var batch in Batches()) Merge(batch);
    });

    private IEnumerable<RecipeBatch> Batches()
    {
        switch (ParameterSetName)
        {
            case YamlSet:
                yield return RecipeParser.ParseText(Yaml, SessionState.Path.CurrentFileSystemLocation.ProviderPath);
                break;
            case RecipeSet:
                yield return Recipe.Parse();
                break;
            default:
                var paths = PathResolver.ResolveExisting(SessionState, ConfigPath, literal: false);
                if (paths.Count > 1 && OutputPath is not null)
                {
                    throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument,
                        $"'{ConfigPath}' matches {paths.Count} recipe files but -OutputPath names one folder; give each recipe its output: {{ path }} and leave out -OutputPath.");
                }
                foreach (var path in paths) yield return RecipeParser.ParseFile(path);
                break;
        }
    }

    private void Merge(RecipeBatch batch)
    {
        foreach (var warning in batch.Warnings) WriteWarning(warning);
        var options = new RecipePlanOptions
        {
            OutputPath = OutputPath is null ? null : PathResolver.ResolveOutput(SessionState, OutputPath, literal: false),
            OutputDType = DType is null ? null : SafetensorsDTypes.ParseOutputDType(DType),
            MaxShardSize = MaxShardSize is null ? null : ByteSize.Parse(MaxShardSize),
            Force = Force,
            DefaultSeed = RandomNumberGenerator.GetInt32(int.MaxValue),
        };
        var plan = RecipePlanner.Plan(batch, options);
        foreach (var warning in plan.Plans.SelectMany(p => p.Warnings)) WriteWarning(warning);

        var runner = new RecipeRunner(new CmdletObserver(this), Cancellation) { CurrentLocation = SessionState.Path.CurrentFileSystemLocation.ProviderPath };
        foreach (var result in runner.Run(plan, Confirm))
        {
            WriteVerbose($"Wrote '{result.Path}': {result.TensorCount} tensors, {ByteSize.Format(result.BytesWritten)} in {result.Elapsed.TotalSeconds:0.0} s ({result.MegabytesPerSecond:0} MB/s read).");
            WriteObject(result);
        }
    }

    private bool Confirm(MergePlan plan)
    {
        var description = plan.Summary.Describe();
        WriteVerbose(description);
        if (plan.UsesDefaultSeed)
        {
            WriteVerbose($"'{plan.Recipe.DisplayName}' gives no random_seed; its DARE masks use seed {SeedOf(plan.Vector)} (recorded in {MergeExecutor.RecipeFileName}).");
        }
        return ShouldProcess(description, $"Write the merged model '{plan.Recipe.DisplayName}' to '{plan.Export.Destination}'?{Environment.NewLine}{description}", "Invoke-DareMerge");
    }

    private static long? SeedOf(TaskVector vector) =>
        (vector.IsMerged ? vector.Inputs : new[] { vector }).Select(v => v.Dare?.Seed).FirstOrDefault(s => s is not null);
}
