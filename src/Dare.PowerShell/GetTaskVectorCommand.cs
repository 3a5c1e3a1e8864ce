using System.Management.Automation;
using Dare.Engine.Merge;
using Dare.Engine.Safetensors;

namespace Dare.PowerShell;

/// <summary>Get-TaskVector: a lazy task vector (fine-tuned − base) per fine-tuned model. Nothing is computed yet.</summary>
[Cmdlet(VerbsCommon.Get, "TaskVector")]
[OutputType(typeof(TaskVector))]
public sealed class GetTaskVectorCommand : DareCmdlet
{
    private Checkpoint _base = null!;

    /// <summary>The base model: a folder, a .safetensors file, or a Checkpoint from Import-Safetensors.</summary>
    [Parameter(Mandatory = true, Position = 0)]
    public object Base { get; set; } = null!;

    /// <summary>Fine-tuned models of the same base (paths, wildcards allowed; folders from Get-ChildItem; or Checkpoints).</summary>
    [Parameter(Mandatory = true, Position = 1, ValueFromPipeline = true)]
    [SupportsWildcards]
    public object[] FineTuned { get; set; } = Array.Empty<object>();

    protected override void BeginProcessing() => Run(() => _base = CheckpointResolver.Resolve(SessionState, Base, allowMany: false)[0]);

    protected override void ProcessRecord()
    {
        foreach (var item in FineTuned)
        {
            IReadOnlyList<Checkpoint> models = Array.Empty<Checkpoint>();
            RunForItem(() => models = CheckpointResolver.Resolve(SessionState, item, allowMany: true), item);
            foreach (var fineTuned in models) RunForItem(() => Emit(fineTuned), fineTuned);
        }
    }

    private void Emit(Checkpoint fineTuned)
    {
        var vector = TaskVector.FromModels(_base, fineTuned);
        if (vector.MissingTensors.Count > 0)
        {
            WriteWarning($"'{fineTuned.Path}' lacks {vector.MissingTensors.Count} tensor(s) of the base; they contribute a zero delta: " +
                string.Join(", ", vector.MissingTensors.Take(10)) + (vector.MissingTensors.Count > 10 ? ", ..." : ""));
        }
        WriteObject(vector);
    }
}
