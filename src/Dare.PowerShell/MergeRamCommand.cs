using System.Management.Automation;
using Dare.Engine.Merge;

namespace Dare.PowerShell;

/// <summary>
/// Merge-Ram: mergekit's ram (and, with -TensorLocal, ramplus_tl). Entries one task vector changes (|δ| &gt; -Epsilon)
/// take that δ whole, entries several change take their mean; -TensorLocal amplifies each vector's unique entries by
/// λ = 1 + r·clamp(ρ, 0, alpha), ρ its shared/unique ratio in the tensor.
/// </summary>
[Cmdlet(VerbsData.Merge, "Ram", HelpUri = DareHelp.Uri + "#the-pipeline")]
[OutputType(typeof(TaskVector))]
public sealed class MergeRamCommand : DareCmdlet
{
    private readonly List<TaskVector> _inputs = new();

    /// <summary>The task vectors to merge, all from the same base model.</summary>
    [Parameter(Mandatory = true, ValueFromPipeline = true)]
    public TaskVector[] InputObject { get; set; } = Array.Empty<TaskVector>();

    /// <summary>mergekit's epsilon: a δ entry counts as a change only where |δ| &gt; epsilon.</summary>
    [Parameter]
    [ValidateDeclared("ram", "epsilon")]
    [ArgumentCompleter(typeof(DeclaredValueCompleter))]
    public double Epsilon { get; set; } = (double)ValidateDeclaredAttribute.Spec("ram", "epsilon").Default!;

    /// <summary>ramplus_tl: amplify each vector's unique entries by its overlap ratio in the tensor.</summary>
    [Parameter]
    public SwitchParameter TensorLocal { get; set; }

    /// <summary>ramplus_tl's r: the amplification per unit of overlap ratio.</summary>
    [Parameter]
    [ValidateDeclared("ramplus_tl", "r")]
    [ArgumentCompleter(typeof(DeclaredValueCompleter))]
    public double Amplification { get; set; } = (double)ValidateDeclaredAttribute.Spec("ramplus_tl", "r").Default!;

    /// <summary>ramplus_tl's alpha: the largest overlap ratio that counts.</summary>
    [Parameter]
    [ValidateDeclared("ramplus_tl", "alpha")]
    [ArgumentCompleter(typeof(DeclaredValueCompleter))]
    public double OverlapCap { get; set; } = (double)ValidateDeclaredAttribute.Spec("ramplus_tl", "alpha").Default!;

    /// <summary>Optional name of the merged task vector.</summary>
    [Parameter]
    public string? Name { get; set; }

    protected override void ProcessRecord() => _inputs.AddRange(InputObject);

    protected override void EndProcessing() => Run(() =>
    {
        if (!TensorLocal && (MyInvocation.BoundParameters.ContainsKey(nameof(Amplification)) || MyInvocation.BoundParameters.ContainsKey(nameof(OverlapCap))))
        {
            WriteWarning("-Amplification and -OverlapCap have no effect without -TensorLocal (ramplus_tl).");
        }
        var settings = new Dictionary<string, TensorParameter> { ["epsilon"] = Epsilon };
        if (TensorLocal)
        {
            settings["r"] = Amplification;
            settings["alpha"] = OverlapCap;
        }
        var options = new MergeOptions(MergeMethods.Find(TensorLocal ? "ramplus_tl" : "ram")!, _inputs.Select(_ => (TensorParameter)1.0).ToList(), Normalize: false)
        {
            Settings = settings,
        };
        var merged = TaskVector.Combine(_inputs, options, Name);
        WriteGuidance(MergeMistakes.OfMerge(_inputs).Select(w => w.Message));
        WriteVerbose($"Merged {_inputs.Count} task vector(s): {merged.Steps[^1]}");
        WriteObject(merged);
    });
}
