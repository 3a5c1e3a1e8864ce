using System.Security.Cryptography;
using Dare.Engine.Merge;

namespace Dare.PowerShell;

/// <summary>
/// Shared by the drop cmdlets whose masks are random (Invoke-DareDrop, Invoke-DellaDrop): one seed for the pipeline
/// (the given -Seed, or one drawn and reported), and the next mask stream for each vector that passes, so vectors
/// merged together never share a mask.
/// </summary>
public abstract class SeededDropCmdlet : DareCmdlet
{
    private int _stream;
    private long? _seed;

    /// <summary>The -Seed value when it was bound, else a random seed, reported through -Verbose; call from BeginProcessing.</summary>
    protected void ResolveSeed(long seed)
    {
        if (MyInvocation.BoundParameters.ContainsKey("Seed"))
        {
            _seed = seed;
            return;
        }
        _seed = RandomNumberGenerator.GetInt32(int.MaxValue);
        WriteVerbose($"No -Seed given; using seed {_seed} (recorded in the task vector and the exported recipe).");
    }

    /// <summary>Writes <paramref name="withDrop"/>(vector, seed, stream) for each input; a failure is that input's error.</summary>
    protected void WriteEach(TaskVector[] inputs, Func<TaskVector, long, int, TaskVector> withDrop)
    {
        foreach (var vector in inputs)
        {
            RunForItem(() =>
            {
                WriteObject(withDrop(vector, _seed!.Value, _stream));
                _stream++;
            }, vector);
        }
    }
}
