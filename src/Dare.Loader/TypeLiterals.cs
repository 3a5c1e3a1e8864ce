using System.Management.Automation;
using System.Reflection;

namespace Dare.Loader;

/// <summary>
/// Makes the public types of assemblies in Dare's load context usable as type literals in scripts
/// ([Dare.Engine.Merge.ExportResult], [TorchSharp.torch]): PowerShell looks type names up among the assemblies of the
/// default context and those imported as modules, not in other contexts. Each type is registered under its full name
/// as a type accelerator, the name lookup PowerShell tries first. Importing the assemblies as (cmdlet-less) binary
/// modules did the same but also scanned every type for cmdlets: Import-Module took ~245 ms that way and ~212 ms so
/// (medians of 6 interleaved pairs here).
/// </summary>
internal static class TypeLiterals
{
    /// <summary>Registers every exported type of <paramref name="assemblies"/> (nothing where this PowerShell has no type accelerator table).</summary>
    public static void Register(IEnumerable<Assembly> assemblies)
    {
        // System.Management.Automation.TypeAccelerators is not public API, but it has had this Add since PowerShell 3,
        // and modules rely on it; tests/Dare.Module.Tests.ps1 checks that the literals resolve.
        var add = typeof(PSObject).Assembly.GetType("System.Management.Automation.TypeAccelerators")
            ?.GetMethod("Add", BindingFlags.Public | BindingFlags.Static, new[] { typeof(string), typeof(Type) });
        if (add is null) return;
        foreach (var assembly in assemblies)
        {
            foreach (var type in assembly.GetExportedTypes())
            {
                if (type.FullName is { } name) add.Invoke(null, new object[] { name, type });
            }
        }
    }
}
