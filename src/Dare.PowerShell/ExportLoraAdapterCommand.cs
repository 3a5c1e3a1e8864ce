using System.Management.Automation;
using Dare.Engine;
using Dare.Engine.Adapters;
using Dare.Engine.Merge;
using Dare.Engine.Recipes;
using Dare.Engine.Safetensors;

namespace Dare.PowerShell;

/// <summary>
/// Export-LoraAdapter: writes any task vector (one model's, an adapter's, a DARE'd or merged one) as a PEFT LoRA adapter
/// folder by truncated SVD per matrix, the equivalent of mergekit-extract-lora. Atomic like Export-Safetensors. Piped
/// inputs are collected, and several vectors for one folder are refused before anything is written.
/// </summary>
[Cmdlet(VerbsData.Export, "LoraAdapter", SupportsShouldProcess = true, DefaultParameterSetName = PathSet, HelpUri = DareHelp.Uri + "#lora-adapters")]
[OutputType(typeof(LoraExportResult))]
public sealed class ExportLoraAdapterCommand : OutputFolderCmdlet
{
    /// <summary>The task vector to extract, e.g. a merge from Merge-Ties.</summary>
    [Parameter(Mandatory = true, ValueFromPipeline = true)]
    public TaskVector InputObject { get; set; } = null!;

    /// <summary>The rank of every module (default 32); not with -RetainedEnergy or -MinSingularValue, which take -MaxRank.</summary>
    [Parameter]
    [ValidateRange(1, int.MaxValue)]
    public int Rank { get; set; }

    /// <summary>Per module, the smallest rank whose singular values hold this fraction of ‖δ‖²_F (0 &lt; e ≤ 1), at most -MaxRank.</summary>
    [Parameter]
    [ValidateRange(double.Epsilon, 1.0)]
    public double RetainedEnergy { get; set; }

    /// <summary>Per module, keep the singular values above this value, at most -MaxRank.</summary>
    [Parameter]
    [ValidateRange(0.0, double.MaxValue)]
    public double MinSingularValue { get; set; }

    /// <summary>The largest rank -RetainedEnergy or -MinSingularValue may give a module (default 64).</summary>
    [Parameter]
    [ValidateRange(1, int.MaxValue)]
    public int MaxRank { get; set; }

    /// <summary>Wildcard patterns of base tensor names (not paths) to extract (default: every 2-D .weight tensor).</summary>
    [Parameter]
    public string[] Include { get; set; } = Array.Empty<string>();

    /// <summary>Wildcard patterns of base tensor names (not paths) to leave out.</summary>
    [Parameter]
    public string[] Exclude { get; set; } = Array.Empty<string>();

    /// <summary>Input embeddings as full tensors under modules_to_save (Full, default), as embedding LoRAs (Lora), or left out (Skip).</summary>
    [Parameter]
    public EmbeddingExport Embeddings { get; set; } = EmbeddingExport.Full;

    /// <summary>
    /// How each matrix is factored: Auto (default: exact up to a smaller side of 4096, randomized above), Exact (the
    /// optimal error for every matrix, slower on large ones) or Randomized (faster; error at or a little above the optimal).
    /// </summary>
    [Parameter]
    public SvdMethod Svd { get; set; } = SvdMethod.Auto;

    /// <summary>
    /// Where the SVDs run: cpu (the default), or cuda / cuda:N (that GPU; needs a module built with ./build.ps1 Build -Cuda).
    /// δ itself is computed on the host. torch-cpu is accepted as cpu.
    /// </summary>
    [Parameter]
    [ValidatePattern(ComputeDevice.Pattern)]
    [ArgumentCompleter(typeof(DeviceCompleter))]
    public string? Device { get; set; }

    /// <summary>dtype of the saved tensors: bfloat16, float16 or float32 (default: each base tensor's dtype).</summary>
    [Parameter]
    [ValidateSet("bfloat16", "float16", "float32")]
    public string? DType { get; set; }

    /// <summary>adapter_config.json's base_model_name_or_path, e.g. a Hugging Face id (default: the base's folder).</summary>
    [Parameter]
    public string? BaseModelName { get; set; }

    /// <summary>Replace an existing non-empty output folder (only once the new adapter is complete).</summary>
    [Parameter]
    public SwitchParameter Force { get; set; }

    private readonly List<TaskVector> _inputs = new();

    protected override void ProcessRecord() => _inputs.Add(InputObject);

    protected override void EndProcessing() => Run(() =>
    {
        if (_inputs.Count == 0) return;
        var destination = ResolveOutputFolder();
        if (_inputs.Count > 1)
        {
            throw new DareException(DareErrorId.MergeStepMissing, DareErrorKind.InvalidArgument,
                $"{_inputs.Count} task vectors ({string.Join(", ", _inputs.Select(v => $"'{v.Name}'"))}) were piped into one Export-LoraAdapter for '{destination}'. " +
                "Merge them first (… | Merge-Ties | Export-LoraAdapter). Nothing was written.") { FilePath = destination };
        }
        var rankRule = MyInvocation.BoundParameters.ContainsKey(nameof(RetainedEnergy)) || MyInvocation.BoundParameters.ContainsKey(nameof(MinSingularValue));
        if (rankRule && MyInvocation.BoundParameters.ContainsKey(nameof(Rank)))
        {
            throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument,
                "-Rank fixes every module's rank; with -RetainedEnergy or -MinSingularValue give the cap as -MaxRank instead.");
        }
        if (!rankRule && MyInvocation.BoundParameters.ContainsKey(nameof(MaxRank)))
        {
            throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument,
                "-MaxRank caps the rank that -RetainedEnergy or -MinSingularValue choose; give one of them, or use -Rank for a fixed rank.");
        }
        var vector = _inputs[0];
        var dtype = DType is null ? (SafetensorsDType?)null : SafetensorsDTypes.ParseOutputDType(DType);
        var options = new LoraExportOptions
        {
            Destination = destination,
            Rank = rankRule ? (MaxRank > 0 ? MaxRank : 64) : (Rank > 0 ? Rank : 32),
            RetainedEnergy = MyInvocation.BoundParameters.ContainsKey(nameof(RetainedEnergy)) ? RetainedEnergy : null,
            MinSingularValue = MyInvocation.BoundParameters.ContainsKey(nameof(MinSingularValue)) ? MinSingularValue : null,
            Include = Include,
            Exclude = Exclude,
            Embeddings = Embeddings,
            Svd = Svd,
            Device = Device is null ? null : ComputeDevice.Parse(Device),
            OutputDType = dtype,
            Force = Force,
            CurrentLocation = SessionState.Path.CurrentFileSystemLocation.ProviderPath,
            BaseModelNameOrPath = BaseModelName,
            RecipeYaml = RecipeWriter.ToYaml(vector, dtype),
        };
        var rule = options.RetainedEnergy is { } e ? $"rank by retained energy {e} (at most {options.Rank})"
            : options.MinSingularValue is { } t ? $"singular values above {t} (rank at most {options.Rank})" : $"rank {options.Rank}";
        if (!ShouldProcess(destination, $"Write the LoRA adapter of '{vector.Name}' ({rule}, {Svd.ToString().ToLowerInvariant()} SVD{(options.Device is { IsCuda: true } device ? $" on {device}" : "")})")) return;
        var observer = new CmdletObserver(this);
        LoraExportResult result;
        try
        {
            result = new LoraExtractor(observer, Cancellation).Export(vector, options);
        }
        finally
        {
            if (!Cancellation.IsCancellationRequested) observer.Complete();
        }
        WriteVerbose($"Wrote '{result.Path}': {result.Modules.Count} modules, rank up to {result.Rank}, largest relative error {result.MaxRelativeError:0.####}.");
        WriteObject(result);
    });
}
