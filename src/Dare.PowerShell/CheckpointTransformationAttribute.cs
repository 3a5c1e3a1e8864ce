using System.Collections;
using System.Management.Automation;
using Dare.Engine;
using Dare.Engine.Safetensors;

namespace Dare.PowerShell;

/// <summary>Lets checkpoint parameters take a Checkpoint, a path string or a FileSystemInfo (e.g. from Get-ChildItem).</summary>
[AttributeUsage(AttributeTargets.Property | AttributeTargets.Field)]
internal sealed class CheckpointTransformationAttribute : ArgumentTransformationAttribute
{
    public override object Transform(EngineIntrinsics engineIntrinsics, object inputData)
    {
        if (inputData is IList list && inputData is not string)
        {
            return list.Cast<object>().Select(item => TransformOne(engineIntrinsics, item)).ToArray();
        }
        return TransformOne(engineIntrinsics, inputData);
    }

    private static Checkpoint TransformOne(EngineIntrinsics engine, object? input)
    {
        var value = input is PSObject ps ? ps.BaseObject : input;
        var path = value switch
        {
            Checkpoint checkpoint => null,
            FileSystemInfo info => info.FullName,
            string text => text,
            _ => throw new ArgumentTransformationMetadataException($"Cannot use a {value?.GetType().Name ?? "null"} as a checkpoint; give a path, a folder or a Dare.Engine.Safetensors.Checkpoint from Import-Safetensors."),
        };
        if (path is null) return (Checkpoint)value!;
        try
        {
            var resolved = PathResolver.ResolveExisting(engine.SessionState, path, literal: value is FileSystemInfo);
            if (resolved.Count != 1)
            {
                throw new ArgumentTransformationMetadataException($"'{path}' matches {resolved.Count} items; a checkpoint parameter takes exactly one.");
            }
            return Checkpoint.Open(resolved[0]);
        }
        catch (DareException ex)
        {
            throw new ArgumentTransformationMetadataException($"[{ex.ErrorId}] {ex.Message}", ex);
        }
    }
}
