using System.Management.Automation;
using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using TorchSharp;

namespace Dare.PowerShell;

/// <summary>A look at one tensor of a task vector.</summary>
public sealed record TaskVectorTensorSummary(string TaskVector, string Name, long[] Shape, long ElementCount, double Min, double Max, double Mean, double L2Norm, double ZeroFraction, float[] First);

/// <summary>
/// Get-TaskVectorTensor: computes one named tensor of a task vector (after its DARE and merge steps) for inspection.
/// Returns a summary, or with -AsTensor the float32 TorchSharp tensor itself (dispose it when done).
/// </summary>
[Cmdlet(VerbsCommon.Get, "TaskVectorTensor", HelpUri = DareHelp.Uri + "#the-pipeline")]
[OutputType(typeof(TaskVectorTensorSummary), typeof(torch.Tensor))]
public sealed class GetTaskVectorTensorCommand : DareCmdlet
{
    /// <summary>The task vector to look into (a single model's, one with DARE, or a merge).</summary>
    [Parameter(Mandatory = true, ValueFromPipeline = true)]
    public TaskVector InputObject { get; set; } = null!;

    /// <summary>
    /// Tensor names, e.g. model.layers.0.mlp.up_proj.weight, or wildcard patterns such as 'model.layers.*.mlp.*'
    /// (floating-point tensors of the base, in file order; a pattern that matches nothing returns nothing).
    /// </summary>
    [Parameter(Mandatory = true, Position = 0)]
    [SupportsWildcards]
    [ArgumentCompleter(typeof(TensorNameCompleter))]
    public string[] Name { get; set; } = Array.Empty<string>();

    /// <summary>Return the TorchSharp tensor instead of a summary. The caller owns it: call .Dispose() when done.</summary>
    [Parameter]
    public SwitchParameter AsTensor { get; set; }

    protected override void ProcessRecord()
    {
        foreach (var name in ExpandNames())
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

    /// <summary>The names given, each pattern replaced by the base's floating-point tensors it matches.</summary>
    private IEnumerable<string> ExpandNames()
    {
        foreach (var name in Name)
        {
            if (!WildcardPattern.ContainsWildcardCharacters(name))
            {
                yield return name;
                continue;
            }
            var pattern = WildcardPattern.Get(name, WildcardOptions.IgnoreCase);
            foreach (var tensor in InputObject.Base.Tensors)
            {
                if (tensor.DType.IsMergeable() && pattern.IsMatch(tensor.Name)) yield return tensor.Name;
            }
        }
    }
}
