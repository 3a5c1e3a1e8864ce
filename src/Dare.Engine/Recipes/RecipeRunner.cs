using Dare.Engine.Merge;
using Dare.Engine.Safetensors;

namespace Dare.Engine.Recipes;

/// <summary>Runs a checked <see cref="BatchPlan"/> in order through <see cref="MergeExecutor.Export"/>, as Export-Safetensors does.</summary>
public sealed class RecipeRunner
{
    private readonly IMergeObserver? _observer;
    private readonly CancellationToken _cancellation;

    public RecipeRunner(IMergeObserver? observer = null, CancellationToken cancellation = default)
    {
        _observer = observer;
        _cancellation = cancellation;
    }

    /// <summary>The caller's current location, which no recipe's output may replace.</summary>
    public string? CurrentLocation { get; init; }

    /// <summary>
    /// Exports each recipe that <paramref name="confirm"/> accepts (it sees the plan first; a what-if answers false)
    /// and yields its result as soon as it is written. A recipe that reads the output of one that was not written
    /// in this run is skipped with a warning.
    /// </summary>
    public IEnumerable<ExportResult> Run(BatchPlan batch, Func<MergePlan, bool> confirm)
    {
        // Before any recipe runs: no output may replace an input model of its recipe, an earlier output it reads,
        // the current location, or anything a model export does not hold (outputs kept by -SkipExisting are not written).
        foreach (var plan in batch.Plans.Where(p => !p.AlreadyWritten))
        {
            var inputs = OutputFolder.InputPathsOf(plan.Vector).Concat(plan.ReadsOutputsOf.Select(r => batch.Outputs[r]));
            OutputFolder.Check(plan.Export.Destination, plan.Export.Force, inputs, CurrentLocation);
        }
        var written = new HashSet<int>();
        for (var i = 0; i < batch.Plans.Count; i++)
        {
            _cancellation.ThrowIfCancellationRequested();
            var plan = batch.Plans[i];
            if (plan.AlreadyWritten)
            {
                _observer?.Verbose($"Skipped '{plan.Recipe.DisplayName}': '{plan.Export.Destination}' already holds its export (-SkipExisting).");
                written.Add(i);
                continue;
            }
            var missing = plan.ReadsOutputsOf.Where(p => !written.Contains(p)).ToList();
            // Earlier outputs now exist: plan against them rather than the stand-ins used for checking.
            if (plan.ReadsOutputsOf.Count > 0 && missing.Count == 0) plan = batch.PlanWithWrittenOutputs(i);
            if (!confirm(plan)) continue;
            if (missing.Count > 0)
            {
                _observer?.Warning($"Skipped '{plan.Recipe.DisplayName}': it reads the output of {string.Join(", ", missing.Select(m => $"'{batch.Batch.Recipes[m].DisplayName}'"))}, which was not written in this run.");
                continue;
            }
            var result = new MergeExecutor(_observer, _cancellation).Export(plan.Vector, plan.Export);
            written.Add(i);
            yield return result;
        }
    }
}
