using TorchSharp;

namespace Dare.Engine;

/// <summary>One place that initialises TorchSharp and turns its load failure into an actionable message.</summary>
public static class TorchRuntime
{
    /// <summary>The libtorch version the TorchSharp package is built against.</summary>
    public const string LibTorchVersion = "2.10.0";

    private static readonly Lazy<Exception?> Initialization = new(TryInitialize, LazyThreadSafetyMode.ExecutionAndPublication);

    /// <summary>
    /// Starts loading libtorch on a background thread (Import-Module calls this): loading its ~400 MB of shared
    /// libraries takes ~0.2 s, which then overlaps the reading of headers and plans instead of delaying the first
    /// merge. Whoever needs torch first waits for the same load; a failure is reported by <see cref="EnsureInitialized"/>.
    /// </summary>
    public static void StartInitializing()
    {
        if (Initialization.IsValueCreated) return;
        new Thread(() => _ = Initialization.Value) { IsBackground = true, Name = "Dare libtorch load" }.Start();
    }

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
