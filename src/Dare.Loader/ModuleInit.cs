using System.Management.Automation;
using System.Reflection;
using System.Runtime.Loader;

namespace Dare.Loader;

/// <summary>
/// Loads the engine and its dependencies (Dare.Engine, TorchSharp, YamlDotNet, libtorch) from the module's
/// dependencies/ folder into a module-private <see cref="AssemblyLoadContext"/>, so that another module's YamlDotNet or
/// TorchSharp in the same session cannot clash with ours. The cmdlet assembly and this loader live in the default context.
/// </summary>
/// <remarks>
/// Dare.psd1 imports this assembly as a nested module before the cmdlet assembly: PowerShell enumerates every type of
/// the cmdlet assembly on import, which already needs Dare.Engine, so the resolver has to be in place first.
/// The cmdlet assembly references Dare.Engine (and TorchSharp for Get-TaskVectorTensor -AsTensor); the default context
/// cannot find them beside it, so its Resolving event asks us and we hand over the private context's copies. Every
/// further dependency of the engine then binds inside the private context first. Their public types are registered
/// for type literals in scripts (<see cref="TypeLiterals"/>).
/// </remarks>
public sealed class ModuleInit : IModuleAssemblyInitializer
{
    /// <summary>The folder, beside this assembly, that holds the engine and every managed and native dependency.</summary>
    public const string DependencyFolder = "dependencies";

    /// <summary>The assemblies the cmdlet assembly references directly; the default context gets ours for these only.</summary>
    private static readonly HashSet<string> BridgedAssemblies = new(StringComparer.OrdinalIgnoreCase) { "Dare.Engine", "TorchSharp" };

    private static readonly object Gate = new();
    private static DareLoadContext? _context;

    /// <summary>Called by PowerShell on Import-Module (again with -Force); installs the resolver once per process.</summary>
    public void OnImport()
    {
        lock (Gate)
        {
            if (_context is not null) return;
            var moduleDirectory = Path.GetDirectoryName(typeof(ModuleInit).Assembly.Location)!;
            _context = new DareLoadContext(Path.Combine(moduleDirectory, DependencyFolder));
            AssemblyLoadContext.Default.Resolving += ResolveBridged;
            TypeLiterals.Register(BridgedAssemblies.Select(name => _context.LoadFromDependencies(new AssemblyName(name))).OfType<Assembly>());
        }
    }

    private static Assembly? ResolveBridged(AssemblyLoadContext defaultContext, AssemblyName name) =>
        name.Name is { } simpleName && BridgedAssemblies.Contains(simpleName) ? _context?.LoadFromDependencies(name) : null;
}

/// <summary>The module-private load context: managed and native libraries from dependencies/, everything else shared.</summary>
internal sealed class DareLoadContext(string dependencyDirectory) : AssemblyLoadContext("Dare", isCollectible: false)
{
    private readonly object _gate = new();

    /// <summary>Our copy of <paramref name="name"/>, loaded once; null when dependencies/ has no such assembly.</summary>
    internal Assembly? LoadFromDependencies(AssemblyName name)
    {
        // Reached from both the default context's Resolving event and Load below.
        lock (_gate)
        {
            var loaded = Assemblies.FirstOrDefault(a => string.Equals(a.GetName().Name, name.Name, StringComparison.OrdinalIgnoreCase));
            if (loaded is not null) return loaded;
            var path = Path.Combine(dependencyDirectory, name.Name + ".dll");
            return File.Exists(path) ? LoadFromAssemblyPath(path) : null;
        }
    }

    // Null falls back to the default context: the framework and System.Management.Automation stay shared.
    protected override Assembly? Load(AssemblyName name) => LoadFromDependencies(name);

    // TorchSharp asks for LibTorchSharp (and libtorch) by short name; resolve them to the copies in dependencies/.
    protected override IntPtr LoadUnmanagedDll(string unmanagedDllName)
    {
        foreach (var candidate in new[] { unmanagedDllName, $"lib{unmanagedDllName}.so", $"{unmanagedDllName}.so", $"lib{unmanagedDllName}.dylib", $"{unmanagedDllName}.dll" })
        {
            var path = Path.Combine(dependencyDirectory, candidate);
            if (File.Exists(path)) return LoadUnmanagedDllFromPath(path);
        }
        return IntPtr.Zero;
    }
}
