using System.Management.Automation;
using Dare.Engine.Merge;

namespace Dare.PowerShell;

/// <summary>
/// Merge-MultiSlerp: mergekit's multislerp. The weighted spherical mean of two or more task vectors (or, with
/// -WholeWeights, of the models' whole weights), computed in the tangent space at their weighted mean direction.
/// </summary>
[Cmdlet(VerbsData.Merge, "MultiSlerp", HelpUri = DareHelp.Uri + "#the-pipeline")]
[OutputType(typeof(TaskVector))]
public sealed class MergeMultiSlerpCommand : SphericalMergeCommand
{
    /// <summary>One weight per task vector (default 1 each).</summary>
    [Parameter]
    [ValidateDeclared("multislerp", "weight")]
    [ArgumentCompleter(typeof(DeclaredValueCompleter))]
    public double[]? Weight { get; set; }

    /// <summary>mergekit's normalize_weights: divide the weights by their sum (default true).</summary>
    [Parameter]
    public bool NormalizeWeights { get; set; } = true;

    /// <summary>mergekit's eps (default 1e-8): added to each norm, and the smallest mean norm with a direction.</summary>
    [Parameter]
    [ValidateDeclared("multislerp", "eps")]
    [ArgumentCompleter(typeof(DeclaredValueCompleter))]
    public double Epsilon { get; set; } = (double)ValidateDeclaredAttribute.Spec("multislerp", "eps").Default!;

    /// <summary>Interpolate the models' whole weights (mergekit's multislerp without base_model) instead of their task vectors.</summary>
    [Parameter]
    public SwitchParameter WholeWeights { get; set; }

    protected override string Method => "multislerp";
    protected override double[]? Weights => Weight;
    protected override bool InterpolatesWholeWeights => WholeWeights.IsPresent;

    protected override Dictionary<string, TensorParameter> Settings() =>
        new() { ["normalize_weights"] = Flag(NormalizeWeights), ["eps"] = Epsilon };
}
