using System.Reflection;
using TorchSharp;

namespace Dare.Engine;

/// <summary>What the tensor engine is running on: versions, devices, threads, native compat state.</summary>
public sealed record DareEnvironment(
    string DareVersion,
    string TorchSharpVersion,
    string LibTorchVersion,
    string[] Devices,
    int TorchThreads,
    int ProcessorCount,
    string NativeCompat,
    string ModuleDirectory,
    string LibraryDirectory)
{
    /// <summary>Initialises TorchSharp (loading libtorch) and reports what it found.</summary>
    public static DareEnvironment Probe()
    {
        TorchRuntime.EnsureInitialized();
        // The built module keeps the engine, TorchSharp and libtorch in <module>/dependencies (Dare's own load context).
        var engineDirectory = Path.GetDirectoryName(typeof(DareEnvironment).Assembly.Location) ?? "";
        var moduleDirectory = Path.GetFileName(engineDirectory) == "dependencies" ? Path.GetDirectoryName(engineDirectory)! : engineDirectory;
        var devices = new List<string> { "cpu" };
        if (torch.cuda.is_available())
        {
            for (var i = 0; i < torch.cuda.device_count(); i++) devices.Add($"cuda:{i}");
        }
        var compatReport = Path.Combine(engineDirectory, "native-compat.txt");
        var compat = File.Exists(compatReport) ? File.ReadAllText(compatReport).Trim() : "not recorded (no native-compat.txt beside the engine)";
        return new DareEnvironment(
            DareVersion: VersionOf(typeof(DareEnvironment).Assembly),
            TorchSharpVersion: VersionOf(typeof(torch).Assembly),
            LibTorchVersion: TorchRuntime.LibTorchVersion,
            Devices: devices.ToArray(),
            TorchThreads: torch.get_num_threads(),
            ProcessorCount: Environment.ProcessorCount,
            NativeCompat: compat,
            ModuleDirectory: moduleDirectory,
            LibraryDirectory: engineDirectory);
    }

    private static string VersionOf(Assembly assembly) =>
        assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion.Split('+')[0]
        ?? assembly.GetName().Version?.ToString() ?? "unknown";
}
