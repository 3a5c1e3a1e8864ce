using System.Management.Automation;
using Dare.Engine;

namespace Dare.PowerShell;

/// <summary>Get-DareEnvironment: reports TorchSharp/libtorch versions, devices, threads and the native compat step.</summary>
[Cmdlet(VerbsCommon.Get, "DareEnvironment", HelpUri = DareHelp.Uri + "#native-compatibility-linux")]
[OutputType(typeof(DareEnvironment))]
public sealed class GetDareEnvironmentCommand : DareCmdlet
{
    protected override void EndProcessing() => Run(() => WriteObject(DareEnvironment.Probe()));
}
