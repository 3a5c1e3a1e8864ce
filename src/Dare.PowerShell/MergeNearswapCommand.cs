using System.Management.Automation;
using Dare.Engine.Merge;

namespace Dare.PowerShell;

/// <summary>
/// Merge-Nearswap: mergekit's nearswap. Each entry takes the fine-tuned value where it is within -Threshold of the
/// base's and moves the base toward it by -Threshold elsewhere. One task vector.
/// </summary>
[Cmdlet(VerbsData.Merge, "Nearswap", HelpUri = DareHelp.Uri + "#the-pipeline")]
[OutputType(typeof(TaskVector))]
public sealed class MergeNearswapCommand : DareCmdlet
{
    private readonly List<TaskVector> _inputs = new();

    /// <summary>The task vector to merge (exactly one, from Get-TaskVector or Invoke-DareDrop).</summary>
    [Parameter(Mandatory = true, ValueFromPipeline = true)]
    public TaskVector[] InputObject { get; set; } = Array.Empty<TaskVector>();

    /// <summary>mergekit's t: entries with |δ| &lt;= t take the fine-tuned value; larger ones move by t toward it.</summary>
    [Parameter(Mandatory = true, Position = 0)]
    [Alias("T")]
    [ValidateDeclared("nearswap", "t")]
    [ArgumentCompleter(typeof(DeclaredValueCompleter))]
    public double Threshold { get; set; }

    /// <summary>Optional name of the merged task vector.</summary>
    [Parameter]
    public string? Name { get; set; }

    protected override void ProcessRecord() => _inputs.AddRange(InputObject);

    protected override void EndProcessing() => Run(() =>
    {
        var method = MergeMethods.Find("nearswap")!;
        var options = new MergeOptions(method, _inputs.Select(_ => (TensorParameter)1.0).ToList(), Normalize: false)
        {
            Settings = new Dictionary<string, TensorParameter> { ["t"] = Threshold },
        };
        var merged = TaskVector.Combine(_inputs, options, Name);
        WriteGuidance(MergeMistakes.OfMerge(_inputs).Select(w => w.Message));
        WriteVerbose($"Merged {_inputs.Count} task vector(s): {merged.Steps[^1]}");
        WriteObject(merged);
    });
}
