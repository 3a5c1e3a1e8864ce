using System.Collections.Concurrent;

namespace Dare.Engine.Safetensors;

/// <summary>
/// The non-finite policy of one export. <see cref="TensorReader"/> scans every float chunk it reads and
/// <see cref="CheckpointWriter"/> every float chunk it writes (<see cref="FiniteCheck"/>); both report here. By
/// default a NaN or ±Inf fails the export (NonFiniteValues: nothing is written); with <see cref="Allow"/> each
/// tensor gets one warning naming the count. Output chunks are checked on the background write thread, so
/// warnings are queued and handed to the observer by <see cref="FlushWarnings"/>, which only the thread that owns
/// the observer calls.
/// </summary>
public sealed class NonFiniteGuard
{
    private readonly Action<string>? _warn;
    private readonly ConcurrentQueue<string> _warnings = new();
    private readonly ConcurrentDictionary<string, byte> _warnedTensors = new(StringComparer.Ordinal);

    public NonFiniteGuard(bool allow, Action<string>? warn)
    {
        Allow = allow;
        _warn = warn;
    }

    /// <summary>Write NaN/Inf with a warning per tensor instead of failing.</summary>
    public bool Allow { get; }

    /// <summary>An input tensor holds <paramref name="count"/> non-finite values: throws, or queues a warning.</summary>
    internal void ReportInput(TensorInfo info, long count)
    {
        if (!Allow)
        {
            throw new DareException(DareErrorId.NonFiniteValues, DareErrorKind.InvalidData,
                $"Tensor '{info.Name}' in '{info.File}' holds {count} NaN/Inf value(s) of {info.ElementCount}; nothing was written. " +
                "Repair or leave out that model, or pass -AllowNonFinite to merge it anyway.") { FilePath = info.File, TensorName = info.Name };
        }
        _warnedTensors.TryAdd(info.Name, 0);
        _warnings.Enqueue($"Tensor '{info.Name}' in '{info.File}' holds {count} NaN/Inf value(s) of {info.ElementCount}; they are merged as they are (-AllowNonFinite).");
    }

    /// <summary>An output tensor came out with <paramref name="count"/> non-finite values (overflow in the output dtype or in the merge).</summary>
    internal void ReportOutput(string tensor, SafetensorsDType dtype, long count, long elements, string destination)
    {
        if (!Allow)
        {
            throw new DareException(DareErrorId.NonFiniteValues, DareErrorKind.InvalidData,
                $"The merged tensor '{tensor}' for '{destination}' has {count} NaN/Inf value(s) of {elements} in {dtype}, from finite inputs: " +
                $"the merge overflowed {dtype} (check weights and λ) or produced NaN; nothing was written. Pass -AllowNonFinite to write it anyway.")
            { FilePath = destination, TensorName = tensor };
        }
        // A tensor whose input already carried NaN/Inf has had its warning.
        if (!_warnedTensors.TryAdd(tensor, 0)) return;
        _warnings.Enqueue($"The merged tensor '{tensor}' has {count} NaN/Inf value(s) of {elements} in {dtype} (overflow or non-finite arithmetic); written as they are (-AllowNonFinite).");
    }

    /// <summary>Hands queued warnings to the observer; call only on the observer's thread.</summary>
    public void FlushWarnings()
    {
        while (_warnings.TryDequeue(out var warning)) _warn?.Invoke(warning);
    }
}
