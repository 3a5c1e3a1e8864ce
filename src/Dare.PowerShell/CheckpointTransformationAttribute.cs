using System.Collections;
using System.Management.Automation;
using Dare.Engine;
using Dare.Engine.Safetensors;

namespace Dare.PowerShell;

/// <summary>
/// Lets checkpoint parameters take a Checkpoint, a path string or a FileSystemInfo (e.g. from Get-ChildItem).
/// A path string may use wildcards; on an array parameter (<see cref="AllowMany"/>) it may match several models.
/// </summary>
[AttributeUsage(AttributeTargets.Property | AttributeTargets.Field)]
internal sealed class CheckpointTransformationAttribute : ArgumentTransformationAttribute
{
    /// <summary>Set on Checkpoint[] parameters: a wildcard path may then stand for several checkpoints.</summary>
    public bool AllowMany { get; set; }

    public override object Transform(EngineIntrinsics engineIntrinsics, object inputData)
    {
        if (inputData is IList list && inputData is not string)
        {
            return list.Cast<object>().SelectMany(item => TransformOne(engineIntrinsics, item)).ToArray();
        }
        var checkpoints = TransformOne(engineIntrinsics, inputData);
        return AllowMany ? checkpoints : checkpoints[0];
    }

    private Checkpoint[] TransformOne(EngineIntrinsics engine, object? input)
    {
        var value = input is PSObject ps ? ps.BaseObject : input;
        var path = value switch
        {
            Checkpoint checkpoint => null,
            FileSystemInfo info => info.FullName,
            string text => text,
            _ => throw new ArgumentTransformationMetadataException($"Cannot use a {value?.GetType().Name ?? "null"} as a checkpoint; give a path, a folder or a Dare.Engine.Safetensors.Checkpoint from Import-Safetensors."),
        };
        if (path is null) return new[] { (Checkpoint)value! };
        try
        {
            var resolved = PathResolver.ResolveExisting(engine.SessionState, path, literal: value is FileSystemInfo);
            if (resolved.Count != 1 && !AllowMany)
            {
                throw new ArgumentTransformationMetadataException($"'{path}' matches {resolved.Count} items; this parameter takes exactly one model.");
            }
            return resolved.Select(Checkpoint.Open).ToArray();
        }
        catch (DareException ex)
        {
            throw new ArgumentTransformationMetadataException($"[{ex.ErrorId}] {ex.Message}", ex);
        }
    }
}
