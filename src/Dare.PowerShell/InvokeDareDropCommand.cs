using System.Collections;
using System.Management.Automation;
using Dare.Engine;
using Dare.Engine.Merge;

namespace Dare.PowerShell;

/// <summary>
/// Invoke-DareDrop: adds DARE (drop each delta entry with probability p, rescale the survivors) to task vectors.
/// Each vector arriving down one pipeline gets its own mask stream (0, 1, 2, ...) under the same seed.
/// </summary>
[Cmdlet(VerbsLifecycle.Invoke, "DareDrop", HelpUri = DareHelp.Uri + "#the-pipeline")]
[OutputType(typeof(TaskVector))]
public sealed class InvokeDareDropCommand : SeededDropCmdlet
{
    private TensorParameter? _dropRate;

    /// <summary>Task vectors from Get-TaskVector (not yet merged, without a DARE step).</summary>
    [Parameter(Mandatory = true, ValueFromPipeline = true)]
    public TaskVector[] InputObject { get; set; } = Array.Empty<TaskVector>();

    /// <summary>Probability p of dropping each entry, 0 &lt;= p &lt; 1 (0.9 is typical).</summary>
    [Parameter(Mandatory = true, Position = 0)]
    public double DropRate { get; set; }

    /// <summary>Seed of the drop masks. Without it a seed is drawn at random and recorded in the plan.</summary>
    [Parameter]
    public long Seed { get; set; }

    /// <summary>InverseKeep (×1/(1−p), default), L1 (keep the L1 norm), Q (DAREx-q: ×1/q, with -RescaleQ), or None.</summary>
    [Parameter]
    public DareRescale Rescale { get; set; } = DareRescale.InverseKeep;

    /// <summary>DAREx-q's q with -Rescale Q: survivors × 1/q instead of 1/(1−p).</summary>
    [Parameter]
    [ValidateDeclared(ValidateDeclaredAttribute.Dare, "rescale_q")]
    [ArgumentCompleter(typeof(DeclaredValueCompleter))]
    public double RescaleQ { get; set; }

    /// <summary>
    /// Drop rates for tensors whose names match wildcard patterns, e.g. @{ '*embed_tokens*' = 0.5 }. First match wins:
    /// an [ordered] dictionary keeps its order, a plain hashtable is taken in ordinal key order.
    /// </summary>
    [Parameter]
    public IDictionary? DropRateOverride { get; set; }

    protected override void BeginProcessing() => Run(() =>
    {
        DareDropParameters.DropRate.Check(DropRate, nameof(DropRate));
        DareDropParameters.CheckRescale(Rescale, RescaleQ);
        _dropRate = DropRateParameter();
        ResolveSeed(Seed);
    });

    protected override void ProcessRecord() =>
        WriteEach(InputObject, (vector, seed, stream) =>
        {
            var dropped = vector.WithDare(new DareOptions(_dropRate!, seed, stream, Rescale) { Q = RescaleQ });
            WriteGuidance(MergeMistakes.OfDropStep(dropped).Select(w => w.Message));
            return dropped;
        });

    private TensorParameter DropRateParameter()
    {
        if (DropRateOverride is null || DropRateOverride.Count == 0) return DropRate;
        var rules = new List<ParameterRule>();
        var entries = DropRateOverride.Cast<DictionaryEntry>();
        if (DropRateOverride is Hashtable) entries = entries.OrderBy(e => e.Key.ToString(), StringComparer.Ordinal);
        foreach (var entry in entries)
        {
            var rate = LanguagePrimitives.ConvertTo<double>(entry.Value);
            DareDropParameters.DropRate.Check(rate, $"DropRateOverride['{entry.Key}']");
            rules.Add(new ParameterRule(entry.Key.ToString(), rate, FilterMatch.Wildcard));
        }
        return new RuleParameter(rules, DropRate);
    }
}
