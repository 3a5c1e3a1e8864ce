using System.Management.Automation;
using Dare.Engine.Merge;

namespace Dare.PowerShell;

/// <summary>
/// Invoke-DellaDrop: adds DELLA's MagPrune to task vectors: per row, entries ranked by magnitude are kept with
/// probability density − ε + 2ε·rank_norm and rescaled. Each vector arriving down one pipeline gets its own mask
/// stream (0, 1, 2, ...) under the same seed, as with Invoke-DareDrop.
/// </summary>
[Cmdlet(VerbsLifecycle.Invoke, "DellaDrop", HelpUri = DareHelp.Uri + "#the-pipeline")]
[OutputType(typeof(TaskVector))]
public sealed class InvokeDellaDropCommand : SeededDropCmdlet
{
    /// <summary>Task vectors from Get-TaskVector (not yet merged, without a drop step).</summary>
    [Parameter(Mandatory = true, ValueFromPipeline = true)]
    public TaskVector[] InputObject { get; set; } = Array.Empty<TaskVector>();

    /// <summary>Mean keep probability (mergekit's density), 0 &lt; density &lt;= 1.</summary>
    [Parameter(Mandatory = true, Position = 0)]
    [ValidateDeclared(ValidateDeclaredAttribute.Della, "density")]
    [ArgumentCompleter(typeof(DeclaredValueCompleter))]
    public double Density { get; set; }

    /// <summary>Spread ε of the keep probabilities (density ± ε inside (0, 1)).</summary>
    [Parameter]
    [ValidateDeclared(ValidateDeclaredAttribute.Della, "epsilon")]
    [ArgumentCompleter(typeof(DeclaredValueCompleter))]
    public double Epsilon { get; set; } = (double)DellaDropParameters.Epsilon.Default!;

    /// <summary>Seed of the keep draws. Without it a seed is drawn at random and recorded in the plan.</summary>
    [Parameter]
    public long Seed { get; set; }

    /// <summary>InverseKeep (each survivor ×1/pᵢ, default), L1 (keep the L1 norm, mergekit's), Q (DAREx-q: ×1/q), or None.</summary>
    [Parameter]
    public DareRescale Rescale { get; set; } = DareRescale.InverseKeep;

    /// <summary>DAREx-q's q with -Rescale Q.</summary>
    [Parameter]
    [ValidateDeclared(ValidateDeclaredAttribute.Dare, "rescale_q")]
    [ArgumentCompleter(typeof(DeclaredValueCompleter))]
    public double RescaleQ { get; set; }

    protected override void BeginProcessing() => Run(() =>
    {
        new DellaOptions(Density, Epsilon, 0, 0, Rescale) { Q = RescaleQ }.Check();
        ResolveSeed(Seed);
    });

    protected override void ProcessRecord() =>
        WriteEach(InputObject, (vector, seed, stream) => vector.WithDella(new DellaOptions(Density, Epsilon, seed, stream, Rescale) { Q = RescaleQ }));
}
