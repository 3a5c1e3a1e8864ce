using System.Management.Automation;
using Dare.Engine.Merge;

namespace Dare.PowerShell;

/// <summary>Measure-TaskVector: size, natural sparsity, |δ| statistics and the realised DARE drop fraction.</summary>
[Cmdlet(VerbsDiagnostic.Measure, "TaskVector")]
[OutputType(typeof(TaskVectorStatistics))]
public sealed class MeasureTaskVectorCommand : DareCmdlet
{
    private readonly CancellationTokenSource _cancellation = new();

    [Parameter(Mandatory = true, ValueFromPipeline = true)]
    public TaskVector InputObject { get; set; } = null!;

    /// <summary>Emit one record per tensor instead of one per task vector.</summary>
    [Parameter]
    public SwitchParameter PerTensor { get; set; }

    protected override void ProcessRecord() => RunForItem(() =>
    {
        var executor = new MergeExecutor(new CmdletObserver(this), _cancellation.Token);
        TaskVectorStatistics statistics;
        try
        {
            statistics = TaskVectorStatistics.Measure(InputObject, executor, PerTensor);
        }
        catch (OperationCanceledException) when (_cancellation.IsCancellationRequested)
        {
            throw new PipelineStoppedException();
        }
        if (PerTensor) WriteObject(statistics.Tensors, enumerateCollection: true);
        else WriteObject(statistics);
    }, InputObject);

    protected override void StopProcessing() => _cancellation.Cancel();
}
