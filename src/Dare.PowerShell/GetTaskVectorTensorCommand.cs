using System.Management.Automation;
using Dare.Engine.Merge;
using TorchSharp;

namespace Dare.PowerShell;

/// <summary>A look at one tensor of a task vector.</summary>
public sealed record TaskVectorTensorSummary(string TaskVector, string Name, long[] Shape, long ElementCount, double Min, double Max, double Mean, double L2Norm, double ZeroFraction, float[] First);

/// <summary>
/// Get-TaskVectorTensor: computes one named tensor of a task vector (after its DARE and merge steps) for inspection.
/// Returns a summary, or with -AsTensor the float32 TorchSharp tensor itself (dispose it when done).
/// </summary>
[Cmdlet(VerbsCommon.Get, "TaskVectorTensor")]
[OutputType(typeof(TaskVectorTensorSummary), typeof(torch.Tensor))]
public sealed class GetTaskVectorTensorCommand : DareCmdlet
{
    /// <summary>The task vector to look into (a single model's, one with DARE, or a merge).</summary>
    [Parameter(Mandatory = true, ValueFromPipeline = true)]
    public TaskVector InputObject { get; set; } = null!;

    /// <summary>Tensor names, e.g. model.layers.0.mlp.up_proj.weight.</summary>
    [Parameter(Mandatory = true, Position = 0)]
    public string[] Name { get; set; } = Array.Empty<string>();

    /// <summary>Return the TorchSharp tensor instead of a summary. The caller owns it: call .Dispose() when done.</summary>
    [Parameter]
    public SwitchParameter AsTensor { get; set; }

    protected override void ProcessRecord()
    {
        foreach (var name in Name)
        {
            RunForItem(() =>
            {
                var delta = new MergeExecutor(null, Cancellation).ComputeDelta(InputObject, name);
                if (AsTensor)
                {
                    WriteObject(delta);
                    return;
                }
                TaskVectorTensorSummary summary;
                using (delta)
                using (torch.NewDisposeScope())
                {
                    var flat = delta.flatten();
                    var n = flat.shape[0];
                    summary = new TaskVectorTensorSummary(InputObject.Name, name, delta.shape, n,
                        n > 0 ? flat.min().ToDouble() : 0, n > 0 ? flat.max().ToDouble() : 0, n > 0 ? flat.mean().ToDouble() : 0,
                        flat.norm().ToDouble(), n > 0 ? flat.eq(0).sum().ToDouble() / n : 0,
                        flat.narrow(0, 0, Math.Min(8, n)).data<float>().ToArray());
                }
                WriteObject(summary);
            }, name);
        }
    }
}
