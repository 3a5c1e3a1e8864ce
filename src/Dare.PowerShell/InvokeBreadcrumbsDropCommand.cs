using System.Management.Automation;
using Dare.Engine.Merge;

namespace Dare.PowerShell;

/// <summary>
/// Invoke-BreadcrumbsDrop: adds Model Breadcrumbs' pruning to task vectors: per tensor, the largest γ of the
/// magnitudes (outliers) and the smallest are dropped so that a density fraction stays; no rescale, no randomness.
/// </summary>
[Cmdlet(VerbsLifecycle.Invoke, "BreadcrumbsDrop", HelpUri = DareHelp.Uri + "#the-pipeline")]
[OutputType(typeof(TaskVector))]
public sealed class InvokeBreadcrumbsDropCommand : DareCmdlet
{
    /// <summary>Task vectors from Get-TaskVector (not yet merged, without a drop step).</summary>
    [Parameter(Mandatory = true, ValueFromPipeline = true)]
    public TaskVector[] InputObject { get; set; } = Array.Empty<TaskVector>();

    /// <summary>Fraction of each tensor's entries kept (mergekit's density), 0 &lt; density &lt;= 1.</summary>
    [Parameter(Mandatory = true, Position = 0)]
    [ValidateDeclared(ValidateDeclaredAttribute.Breadcrumbs, "density")]
    [ArgumentCompleter(typeof(DeclaredValueCompleter))]
    public double Density { get; set; }

    /// <summary>Fraction γ of each tensor's entries dropped from the top by magnitude.</summary>
    [Parameter]
    [ValidateDeclared(ValidateDeclaredAttribute.Breadcrumbs, "gamma")]
    [ArgumentCompleter(typeof(DeclaredValueCompleter))]
    public double Gamma { get; set; } = (double)BreadcrumbsParameters.Gamma.Default!;

    protected override void ProcessRecord()
    {
        foreach (var vector in InputObject)
        {
            RunForItem(() => WriteObject(vector.WithBreadcrumbs(new BreadcrumbsOptions(Density, Gamma))), vector);
        }
    }
}
