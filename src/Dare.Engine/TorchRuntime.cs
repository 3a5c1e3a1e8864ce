using TorchSharp;

namespace Dare.Engine;

/// <summary>
/// One place that initialises TorchSharp and turns its load failure into an actionable message. libtorch is loaded
/// only when something needs it (the tensor backend, LoRA inputs, adapter extraction, evaluation, whole-tensor reads):
/// loading it takes ~0.4 s of CPU under the dynamic loader's lock, and a merge on the CPU kernels never needs it.
/// </summary>
public static class TorchRuntime
{
    /// <summary>The libtorch version the TorchSharp package is built against.</summary>
    public const string LibTorchVersion = "2.10.0";

    private static readonly Lazy<Exception?> Initialization = new(TryInitialize, LazyThreadSafetyMode.ExecutionAndPublication);

    /// <summary>Loads libtorch once; throws <see cref="DareException"/> with the real cause when it cannot.</summary>
    public static void EnsureInitialized()
    {
        if (Initialization.Value is { } failure)
        {
            throw new DareException(DareErrorId.TorchInitializationFailed, DareErrorKind.NotInstalled,
                "TorchSharp could not load libtorch. On Linux run `ldd libLibTorchSharp.so` in the module folder to see the missing " +
                "library or symbol version; a module built by ./build.ps1 applies the libstdc++ compat step when needed. " +
                $"Underlying error: {failure.Message}", failure);
        }
    }

    private static Exception? TryInitialize()
    {
        try
        {
            torch.InitializeDeviceType(DeviceType.CPU);
            using var probe = torch.zeros(1);
            return null;
        }
        catch (Exception ex)
        {
            return ex;
        }
    }
}
