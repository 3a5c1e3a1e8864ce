using System.Management.Automation;
using Dare.Engine.Merge;

namespace Dare.PowerShell;

/// <summary>Measure-TaskVector: size, natural sparsity, |δ| statistics and the realised DARE drop fraction.</summary>
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
                    statistics = TaskVectorStatistics.Measure(vector, new MergeExecutor(observer, Cancellation), PerTensor);
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
