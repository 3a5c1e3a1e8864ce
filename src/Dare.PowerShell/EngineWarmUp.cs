using System.Management.Automation;
using Dare.Engine;

namespace Dare.PowerShell;

/// <summary>
/// On Import-Module, starts loading libtorch in the background, so that its ~0.2 s overlaps reading headers and
/// planning instead of delaying the first merge. Called as the cmdlet assembly is imported, after the nested
/// modules: started earlier, in the loader, the load held up the import itself (measured: 0.30 s instead of 0.15 s).
/// </summary>
public sealed class EngineWarmUp : IModuleAssemblyInitializer
{
    public void OnImport() => TorchRuntime.StartInitializing();
}
