using System.Management.Automation;
using Dare.Engine.Merge;

namespace Dare.PowerShell;

/// <summary>
/// Merge-ArceeFusion: mergekit's arcee_fusion. Keeps the fine-tune's change where its importance |δ|·KL(row) is an
/// outlier (at least median + 1.5·IQR of the tensor's importances) and the base's value elsewhere. One task vector.
/// </summary>
[Cmdlet(VerbsData.Merge, "ArceeFusion", HelpUri = DareHelp.Uri + "#the-pipeline")]
[OutputType(typeof(TaskVector))]
public sealed class MergeArceeFusionCommand : DareCmdlet
{
    private readonly List<TaskVector> _inputs = new();

    /// <summary>The task vector to merge (exactly one, from Get-TaskVector).</summary>
    [Parameter(Mandatory = true, ValueFromPipeline = true)]
    public TaskVector[] InputObject { get; set; } = Array.Empty<TaskVector>();

    /// <summary>Optional name of the merged task vector.</summary>
    [Parameter]
    public string? Name { get; set; }

    protected override void ProcessRecord() => _inputs.AddRange(InputObject);

    protected override void EndProcessing() => Run(() =>
    {
        var options = new MergeOptions(MergeMethods.Find("arcee_fusion")!, _inputs.Select(_ => (TensorParameter)1.0).ToList(), Normalize: false);
        var merged = TaskVector.Combine(_inputs, options, Name);
        WriteGuidance(MergeMistakes.OfMerge(_inputs).Select(w => w.Message));
        WriteVerbose($"Merged {_inputs.Count} task vector(s): {merged.Steps[^1]}");
        WriteObject(merged);
    });
}
