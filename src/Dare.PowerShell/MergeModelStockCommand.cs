using System.Management.Automation;
using Dare.Engine.Merge;

namespace Dare.PowerShell;

/// <summary>
/// Merge-ModelStock: mergekit's model_stock. base + t·(mean task vector), t = N·cos θ / (1 + (N − 1)·cos θ) from the
/// mean pairwise cosine of the task vectors, per tensor or (-FilterWise) per row. Two or more task vectors.
/// </summary>
[Cmdlet(VerbsData.Merge, "ModelStock", HelpUri = DareHelp.Uri + "#the-pipeline")]
[OutputType(typeof(TaskVector))]
public sealed class MergeModelStockCommand : SphericalMergeCommand
{
    /// <summary>mergekit's filter_wise: one t per row of the last dimension instead of one per tensor.</summary>
    [Parameter]
    public SwitchParameter FilterWise { get; set; }

    protected override string Method => "model_stock";
    protected override Dictionary<string, TensorParameter> Settings() => new() { ["filter_wise"] = Flag(FilterWise.IsPresent) };
}
