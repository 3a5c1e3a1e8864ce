using System.Management.Automation;
using Dare.Engine.Merge;

namespace Dare.PowerShell;

/// <summary>
/// Merge-NuSlerp: mergekit's nuslerp. SLERP of two task vectors (or, with -WholeWeights, of the two models' whole
/// weights) at t = w₂/(w₁ + w₂), per tensor, per row, or per column.
/// </summary>
[Cmdlet(VerbsData.Merge, "NuSlerp", HelpUri = DareHelp.Uri + "#the-pipeline")]
[OutputType(typeof(TaskVector))]
public sealed class MergeNuSlerpCommand : SphericalMergeCommand
{
    /// <summary>One weight per task vector (default 1 each): t = w₂/(w₁ + w₂).</summary>
    [Parameter]
    [ValidateDeclared("nuslerp", "weight")]
    [ArgumentCompleter(typeof(DeclaredValueCompleter))]
    public double[]? Weight { get; set; }

    /// <summary>mergekit's nuslerp_flatten: each tensor is one vector (default true); $false interpolates row by row.</summary>
    [Parameter]
    public bool Flatten { get; set; } = true;

    /// <summary>mergekit's nuslerp_row_wise: without -Flatten, interpolate columns along the first dimension.</summary>
    [Parameter]
    public SwitchParameter RowWise { get; set; }

    /// <summary>Interpolate the models' whole weights (mergekit's nuslerp without base_model) instead of their task vectors.</summary>
    [Parameter]
    public SwitchParameter WholeWeights { get; set; }

    protected override string Method => "nuslerp";
    protected override double[]? Weights => Weight;
    protected override bool InterpolatesWholeWeights => WholeWeights.IsPresent;

    protected override Dictionary<string, TensorParameter> Settings() =>
        new() { ["nuslerp_flatten"] = Flag(Flatten), ["nuslerp_row_wise"] = Flag(RowWise.IsPresent) };
}
