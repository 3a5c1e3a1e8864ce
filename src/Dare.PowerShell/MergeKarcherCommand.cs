using System.Management.Automation;
using Dare.Engine.Merge;

namespace Dare.PowerShell;

/// <summary>
/// Merge-Karcher: mergekit's karcher. The Riemannian (Karcher) mean of the models' whole weights on the sphere, scaled
/// by the mean of their norms. To count the base as one of the models (as mergekit does with a base_model), pipe its
/// own task vector too (Get-TaskVector -FineTuned with the base).
/// </summary>
[Cmdlet(VerbsData.Merge, "Karcher", HelpUri = DareHelp.Uri + "#the-pipeline")]
[OutputType(typeof(TaskVector))]
public sealed class MergeKarcherCommand : SphericalMergeCommand
{
    /// <summary>mergekit's max_iter: the most descent steps (default 10).</summary>
    [Parameter]
    [ValidateDeclared("karcher", "max_iter")]
    [ArgumentCompleter(typeof(DeclaredValueCompleter))]
    public int MaxIterations { get; set; } = (int)(long)ValidateDeclaredAttribute.Spec("karcher", "max_iter").Default!;

    /// <summary>mergekit's tol: stop when a step is shorter (default 1e-5).</summary>
    [Parameter]
    [ValidateDeclared("karcher", "tol")]
    [ArgumentCompleter(typeof(DeclaredValueCompleter))]
    public double Tolerance { get; set; } = (double)ValidateDeclaredAttribute.Spec("karcher", "tol").Default!;

    protected override string Method => "karcher";
    protected override bool InterpolatesWholeWeights => true;

    protected override Dictionary<string, TensorParameter> Settings() => new() { ["max_iter"] = MaxIterations, ["tol"] = Tolerance };
}
