using System.Management.Automation;
using Dare.Engine.Merge;

namespace Dare.PowerShell;

/// <summary>Measure-TaskVector: size, natural sparsity, |δ| statistics, the realised DARE drop fraction, an adapter's rank and the effective rank of sampled matrices.</summary>
[Cmdlet(VerbsDiagnostic.Measure, "TaskVector", HelpUri = DareHelp.Uri + "#the-pipeline")]
[OutputType(typeof(TaskVectorStatistics))]
public sealed class MeasureTaskVectorCommand : DareCmdlet
{
    /// <summary>Task vectors to measure (from Get-TaskVector, Invoke-DareDrop or Merge-*).</summary>
    [Parameter(Mandatory = true, ValueFromPipeline = true)]
    public TaskVector[] InputObject { get; set; } = Array.Empty<TaskVector>();

    /// <summary>Emit one record per tensor instead of one per task vector.</summary>
    [Parameter]
    public SwitchParameter PerTensor { get; set; }

    /// <summary>
    /// How many matrices to sample for the effective rank (Rank99: the singular values holding 99% of ‖δ‖²_F), spread
    /// over the model; each costs one SVD. 0 skips it.
    /// </summary>
    [Parameter]
    [ValidateRange(0, 1000)]
    public int RankSamples { get; set; } = 3;

    protected override void ProcessRecord()
    {
        foreach (var vector in InputObject)
        {
            RunForItem(() =>
            {
                var observer = new CmdletObserver(this);
                TaskVectorStatistics statistics;
                try
                {
                    statistics = TaskVectorStatistics.Measure(vector, new MergeExecutor(observer, Cancellation), PerTensor, RankSamples);
                }
                finally
                {
                    if (!Cancellation.IsCancellationRequested) observer.Complete();
                }
                if (PerTensor) WriteObject(statistics.Tensors, enumerateCollection: true);
                else WriteObject(statistics);
            }, vector);
        }
    }
}
