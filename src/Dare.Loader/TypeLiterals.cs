using System.Management.Automation;
using System.Reflection;

namespace Dare.Loader;

/// <summary>
/// Makes the public types of assemblies in Dare's load context usable as type literals in scripts
/// ([Dare.Engine.Merge.ExportResult], [TorchSharp.torch]): PowerShell looks type names up among the assemblies of the
/// default context and those imported as modules, not in other contexts. Each type is registered under its full name
/// as a type accelerator, the name lookup PowerShell tries first. Importing the assemblies as (cmdlet-less) binary
/// modules did the same but scanned every type for cmdlets: ~80 of the module's ~240 ms import here, against a few ms.
/// </summary>
internal static class TypeLiterals
{
    /// <summary>Registers every exported type of <paramref name="assemblies"/>; false where this PowerShell has no type accelerator table to add to.</summary>
    public static bool Register(IEnumerable<Assembly> assemblies)
    {
        // System.Management.Automation.TypeAccelerators is not public API, but it has had this Add since PowerShell 3,
        // and modules rely on it; tests/Dare.Module.Tests.ps1 checks that the literals resolve.
        var add = typeof(PSObject).Assembly.GetType("System.Management.Automation.TypeAccelerators")
            ?.GetMethod("Add", BindingFlags.Public | BindingFlags.Static, new[] { typeof(string), typeof(Type) });
        if (add is null) return false;
        foreach (var assembly in assemblies)
        {
            foreach (var type in assembly.GetExportedTypes())
            {
                if (type.FullName is { } name) add.Invoke(null, new object[] { name, type });
            }
        }
        return true;
    }
}
