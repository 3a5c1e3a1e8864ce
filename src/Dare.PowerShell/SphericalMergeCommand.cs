using System.Management.Automation;
using Dare.Engine;
using Dare.Engine.Merge;

namespace Dare.PowerShell;

/// <summary>
/// Shared by the merge cmdlets of the spherical methods (Merge-Slerp, Merge-NuSlerp, Merge-MultiSlerp, Merge-Karcher,
/// Merge-ModelStock): collects task vectors from the pipeline and merges them at the end with the method's settings.
/// </summary>
public abstract class SphericalMergeCommand : DareCmdlet
{
    private readonly List<TaskVector> _inputs = new();

    /// <summary>The task vectors to merge, all from the same base model.</summary>
    [Parameter(Mandatory = true, ValueFromPipeline = true)]
    public TaskVector[] InputObject { get; set; } = Array.Empty<TaskVector>();

    /// <summary>Optional name of the merged task vector.</summary>
    [Parameter]
    public string? Name { get; set; }

    /// <summary>mergekit's name of the method.</summary>
    protected abstract string Method { get; }

    /// <summary>The method's settings by recipe key (booleans as 1 or 0).</summary>
    protected abstract Dictionary<string, TensorParameter> Settings();

    /// <summary>One weight per task vector (default 1 each), for the methods that take weights.</summary>
    protected virtual double[]? Weights => null;

    /// <summary>Whether the inputs' whole weights are interpolated rather than their task vectors.</summary>
    protected virtual bool InterpolatesWholeWeights => false;

    protected override void ProcessRecord() => _inputs.AddRange(InputObject);

    protected override void EndProcessing() => Run(() =>
    {
        if (Weights is { } given && given.Length != _inputs.Count)
        {
            throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument,
                $"{given.Length} weight(s) were given for {_inputs.Count} task vector(s); give one weight per task vector.");
        }
        var weights = (Weights ?? Enumerable.Repeat(1.0, _inputs.Count).ToArray()).Select(w => (TensorParameter)w).ToList();
        var options = new MergeOptions(MergeMethods.Find(Method)!, weights, Normalize: false) { Settings = Settings(), WholeWeights = InterpolatesWholeWeights };
        var merged = TaskVector.Combine(_inputs, options, Name);
        WriteGuidance(MergeMistakes.OfMerge(_inputs).Select(w => w.Message));
        WriteVerbose($"Merged {_inputs.Count} task vector(s): {merged.Steps[^1]}");
        WriteObject(merged);
    });

    protected static TensorParameter Flag(bool on) => on ? 1.0 : 0.0;
}
