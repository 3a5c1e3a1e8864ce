using System.Collections;
using System.Management.Automation;
using System.Management.Automation.Language;

namespace Dare.PowerShell;

/// <summary>
/// Completes -Device with cpu, cuda and torch-cpu (cuda:N is typed). Whether CUDA is there is not asked: that would
/// load libtorch on a key press; a device TorchSharp does not offer is DeviceUnavailable when the command runs.
/// </summary>
public sealed class DeviceCompleter : IArgumentCompleter
{
    private static readonly (string Name, string Tip)[] Devices =
    {
        ("cpu", "The CPU (the SIMD kernels for merges)"),
        ("cuda", "The first CUDA GPU (cuda:N for another; needs a module built with ./build.ps1 Build -Cuda)"),
        ("torch-cpu", "The TorchSharp tensor backend on the CPU (to test and compare it)"),
    };

    public IEnumerable<CompletionResult> CompleteArgument(string commandName, string parameterName, string wordToComplete, CommandAst commandAst, IDictionary fakeBoundParameters) =>
        Devices.Where(d => d.Name.StartsWith(wordToComplete, StringComparison.OrdinalIgnoreCase))
            .Select(d => new CompletionResult(d.Name, d.Name, CompletionResultType.ParameterValue, d.Tip));
}
