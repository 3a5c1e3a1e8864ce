using System.Management.Automation;
using Dare.Engine.Charts;
using Dare.Engine.Merge;

namespace Dare.PowerShell;

/// <summary>Measure-TaskVector: size, natural sparsity, |δ| statistics, the realised DARE drop fraction, an adapter's rank and the effective rank of sampled matrices.</summary>
[Cmdlet(VerbsDiagnostic.Measure, "TaskVector", HelpUri = DareHelp.Uri + "#the-pipeline")]
[OutputType(typeof(TaskVectorStatistics), typeof(LayerStatistics))]
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
    /// over the model; each costs the singular values of one whole matrix. 0 skips it.
    /// </summary>
    [Parameter]
    [ValidateRange(0, 1000)]
    public int RankSamples { get; set; } = 3;

    /// <summary>
    /// Emit one record per layer and task vector (mean |δ|, natural sparsity, realised drop rate, and the sign-conflict
    /// rate among all the vectors piped in together; a merged vector stands for its inputs), after every input has arrived.
    /// </summary>
    [Parameter]
    public SwitchParameter PerLayer { get; set; }

    /// <summary>Draw the per-layer figures to this .png or .svg file (format by extension); implies -PerLayer.</summary>
    [Parameter]
    public string? ChartPath { get; set; }

    private readonly List<TaskVector> _perLayer = new();
    private string? _chart;

    private bool ByLayer => PerLayer || ChartPath is not null;

    protected override void BeginProcessing() => Run(() =>
    {
        if (PerLayer && PerTensor) throw new Dare.Engine.DareException(Dare.Engine.DareErrorId.InvalidParameter, Dare.Engine.DareErrorKind.InvalidArgument, "Give -PerLayer or -PerTensor, not both.");
        if (ChartPath is null) return;
        _chart = SessionState.Path.GetUnresolvedProviderPathFromPSPath(ChartPath);
        LineChart.CheckPath(_chart);
    });

    protected override void EndProcessing()
    {
        if (!ByLayer || _perLayer.Count == 0) return;
        Run(() =>
        {
            var observer = new CmdletObserver(this);
            IReadOnlyList<LayerStatistics> layers;
            try
            {
                layers = LayerStatistics.Measure(_perLayer, new MergeExecutor(observer, Cancellation));
            }
            finally
            {
                if (!Cancellation.IsCancellationRequested) observer.Complete();
            }
            if (_chart is not null)
            {
                LayerStatistics.DrawChart(layers, _chart);
                WriteVerbose($"Drew '{_chart}'.");
            }
            WriteObject(layers, enumerateCollection: true);
        });
    }

    protected override void ProcessRecord()
    {
        if (ByLayer)
        {
            _perLayer.AddRange(InputObject);
            return;
        }
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
