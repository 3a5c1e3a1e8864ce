using System.Management.Automation;
using Dare.Engine.Merge;

namespace Dare.PowerShell;

/// <summary>
/// Merge-Sce: mergekit's sce. Keeps the -SelectTopK fraction of positions with the highest variance across the task
/// vectors, weights each vector by its mean δ², erases minority signs and takes the weighted mean of the rest.
/// </summary>
[Cmdlet(VerbsData.Merge, "Sce", HelpUri = DareHelp.Uri + "#the-pipeline")]
[OutputType(typeof(TaskVector))]
public sealed class MergeSceCommand : DareCmdlet
{
    private readonly List<TaskVector> _inputs = new();

    /// <summary>Task vectors to merge (from Get-TaskVector, or with a drop step).</summary>
    [Parameter(Mandatory = true, ValueFromPipeline = true)]
    public TaskVector[] InputObject { get; set; } = Array.Empty<TaskVector>();

    /// <summary>mergekit's select_topk: the fraction of positions (where the vectors differ) kept, by variance.</summary>
    [Parameter(Position = 0)]
    [ValidateDeclared("sce", "select_topk")]
    [ArgumentCompleter(typeof(DeclaredValueCompleter))]
    public double SelectTopK { get; set; } = (double)MergeMethods.Find("sce")!.Parameter("select_topk").Default!;

    /// <summary>Optional name of the merged task vector.</summary>
    [Parameter]
    public string? Name { get; set; }

    protected override void ProcessRecord() => _inputs.AddRange(InputObject);

    protected override void EndProcessing() => Run(() =>
    {
        var method = MergeMethods.Find("sce")!;
        var options = new MergeOptions(method, _inputs.Select(_ => (TensorParameter)1.0).ToList(), Normalize: false)
        {
            Settings = new Dictionary<string, TensorParameter> { ["select_topk"] = SelectTopK },
        };
        var merged = TaskVector.Combine(_inputs, options, Name);
        WriteGuidance(MergeMistakes.OfMerge(_inputs).Select(w => w.Message));
        WriteVerbose($"Merged {_inputs.Count} task vector(s): {merged.Steps[^1]}");
        WriteObject(merged);
    });
}
