using System.Management.Automation;
using Dare.Engine.Merge;

namespace Dare.PowerShell;

/// <summary>
/// Merge-Ties: trims each task vector to its largest-magnitude entries, elects a sign per parameter and averages
/// the entries that agree with it.
/// </summary>
[Cmdlet(VerbsData.Merge, "Ties", HelpUri = DareHelp.Uri + "#the-pipeline")]
[OutputType(typeof(TaskVector))]
public sealed class MergeTiesCommand : MergeCommandBase
{
    /// <summary>
    /// Fraction k of entries kept per tensor (0 &lt; k &lt;= 1); 1 skips trimming (DARE-TIES). Default 0.2 here; a recipe's
    /// density defaults to 1 (mergekit's), both from the engine's declaration.
    /// </summary>
    [Parameter(Position = 0)]
    [Alias("Density")]
    [ValidateDeclared("ties", "density")]
    [ArgumentCompleter(typeof(DeclaredValueCompleter))]
    public double KeepRatio { get; set; } = (double)ValidateDeclaredAttribute.Spec("ties", "density").CmdletDefault!;

    /// <summary>Sum (sign of the weighted sum, default) or Count (sign of #positive − #negative).</summary>
    [Parameter]
    public SignMethod SignMethod { get; set; } = SignMethod.Sum;

    /// <summary>Divide by the summed weights of the agreeing models (default true); -Normalize $false sums them. A bool, not a switch, because it defaults to true.</summary>
    [Parameter]
    public bool Normalize { get; set; } = true;

    protected override MergeOptions Options(IReadOnlyList<TensorParameter> weights, int inputCount) =>
        new(MergeMethods.Find("ties")!, weights, Normalize, Lambda, Enumerable.Repeat((TensorParameter)KeepRatio, inputCount).ToList(), SignMethod);
}
