using System.Management.Automation;
using Dare.Engine.Merge;

namespace Dare.PowerShell;

/// <summary>Merge-Linear: the weighted sum of task vectors, divided by the summed weights when normalizing.</summary>
[Cmdlet(VerbsData.Merge, "Linear", HelpUri = DareHelp.Uri + "#the-pipeline")]
[OutputType(typeof(TaskVector))]
public sealed class MergeLinearCommand : MergeCommandBase
{
    /// <summary>Divide by the sum of the weights (default true: a weighted average); -Normalize $false gives a plain weighted sum. A bool, not a switch, because it defaults to true.</summary>
    [Parameter]
    public bool Normalize { get; set; } = true;

    protected override MergeOptions Options(IReadOnlyList<TensorParameter> weights, int inputCount) =>
        new(MergeMethods.Find("linear")!, weights, Normalize, Lambda);
}
