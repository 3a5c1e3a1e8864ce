using System.Management.Automation;
using Dare.Engine.Merge;

namespace Dare.PowerShell;

/// <summary>Merge-Linear: the weighted sum of task vectors, divided by the summed weights when normalizing.</summary>
[Cmdlet(VerbsData.Merge, "Linear")]
[OutputType(typeof(TaskVector))]
public sealed class MergeLinearCommand : MergeCommandBase
{
    /// <summary>Divide by the sum of the weights (default true: a weighted average).</summary>
    [Parameter]
    public SwitchParameter Normalize { get; set; } = true;

    protected override MergeOptions Options(IReadOnlyList<TensorParameter> weights, int inputCount) =>
        new(MergeMethod.Linear, weights, Normalize, Lambda);
}
