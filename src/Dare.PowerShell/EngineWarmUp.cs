using System.Management.Automation;
using Dare.Engine;

namespace Dare.PowerShell;

/// <summary>On Import-Module, starts loading libtorch in the background so that the first merge does not wait for it.</summary>
public sealed class EngineWarmUp : IModuleAssemblyInitializer
{
    public void OnImport() => TorchRuntime.StartInitializing();
}
