using System.Management.Automation;
using Dare.Engine.Merge;
using Dare.Engine.Safetensors;

namespace Dare.PowerShell;

/// <summary>Get-TaskVector: a lazy task vector (fine-tuned − base) per fine-tuned model. Nothing is computed yet.</summary>
[Cmdlet(VerbsCommon.Get, "TaskVector")]
[OutputType(typeof(TaskVector))]
public sealed class GetTaskVectorCommand : DareCmdlet
{
    /// <summary>The base model: a folder, a .safetensors file, or a Checkpoint from Import-Safetensors.</summary>
    [Parameter(Mandatory = true, Position = 0)]
    [CheckpointTransformation]
    public Checkpoint Base { get; set; } = null!;

    /// <summary>Fine-tuned models of the same base (paths, wildcards allowed; folders from Get-ChildItem; or Checkpoints).</summary>
    [Parameter(Mandatory = true, Position = 1, ValueFromPipeline = true)]
    [CheckpointTransformation(AllowMany = true)]
    [SupportsWildcards]
    public Checkpoint[] FineTuned { get; set; } = Array.Empty<Checkpoint>();

    protected override void ProcessRecord()
    {
        foreach (var fineTuned in FineTuned)
        {
            RunForItem(() =>
            {
                var vector = TaskVector.FromModels(Base, fineTuned);
                if (vector.MissingTensors.Count > 0)
                {
                    WriteWarning($"'{fineTuned.Path}' lacks {vector.MissingTensors.Count} tensor(s) of the base; they contribute a zero delta: " +
                        string.Join(", ", vector.MissingTensors.Take(10)) + (vector.MissingTensors.Count > 10 ? ", ..." : ""));
                }
                WriteObject(vector);
            }, fineTuned);
        }
    }
}
