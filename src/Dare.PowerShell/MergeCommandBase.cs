using System.Management.Automation;
using Dare.Engine;
using Dare.Engine.Merge;

namespace Dare.PowerShell;

/// <summary>Shared by Merge-*: collects task vectors from the pipeline, merges them at the end (a reducer).</summary>
public abstract class MergeCommandBase : DareCmdlet
{
    private readonly List<TaskVector> _inputs = new();

    /// <summary>The task vectors to merge, all from the same base model.</summary>
    [Parameter(Mandatory = true, ValueFromPipeline = true)]
    public TaskVector[] InputObject { get; set; } = Array.Empty<TaskVector>();

    /// <summary>One weight per task vector, in input order (default 1 each).</summary>
    [Parameter]
    [ValidateDeclared("linear", "weight")]
    public double[]? Weight { get; set; }

    /// <summary>Scale λ applied to the merged delta before it is added to the base.</summary>
    [Parameter]
    [ValidateDeclared("linear", "lambda")]
    [ArgumentCompleter(typeof(DeclaredValueCompleter))]
    public double Lambda { get; set; } = 1.0;

    /// <summary>Optional name of the merged task vector.</summary>
    [Parameter]
    public string? Name { get; set; }

    protected override void ProcessRecord() => _inputs.AddRange(InputObject);

    protected override void EndProcessing() => Run(() =>
    {
        if (Weight is not null && Weight.Length != _inputs.Count)
        {
            throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument,
                $"{Weight.Length} weight(s) were given for {_inputs.Count} task vector(s); give one weight per task vector.");
        }
        var weights = (Weight ?? Enumerable.Repeat(1.0, _inputs.Count).ToArray()).Select(w => (TensorParameter)w).ToList();
        var merged = TaskVector.Combine(_inputs, Options(weights, _inputs.Count), Name);
        WriteGuidance(MergeMistakes.OfMerge(_inputs).Select(w => w.Message));
        WriteVerbose($"Merged {_inputs.Count} task vector(s): {merged.Steps[^1]}");
        WriteObject(merged);
    });

    protected abstract MergeOptions Options(IReadOnlyList<TensorParameter> weights, int inputCount);
}
