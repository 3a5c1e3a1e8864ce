using System.Management.Automation;
using Dare.Engine.Merge;

namespace Dare.PowerShell;

/// <summary>
/// Merge-Slerp: mergekit's slerp. Spherical interpolation from the base (T = 0) to the one fine-tuned model of the
/// task vector (T = 1), per tensor; a plain lerp where the two are nearly colinear.
/// </summary>
[Cmdlet(VerbsData.Merge, "Slerp", HelpUri = DareHelp.Uri + "#the-pipeline")]
[OutputType(typeof(TaskVector))]
public sealed class MergeSlerpCommand : SphericalMergeCommand
{
    /// <summary>mergekit's t: 0 gives the base, 1 the fine-tuned model.</summary>
    [Parameter(Mandatory = true, Position = 0)]
    [ValidateDeclared("slerp", "t")]
    [ArgumentCompleter(typeof(DeclaredValueCompleter))]
    public double T { get; set; }

    protected override string Method => "slerp";
    protected override Dictionary<string, TensorParameter> Settings() => new() { ["t"] = T };
}
