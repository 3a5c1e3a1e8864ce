namespace Dare.PowerShell;

/// <summary>
/// Where Get-Help -Online goes. The project has no published home yet: this placeholder repository URL is used
/// throughout (README anchors per cmdlet) and is the one place to change when it has.
/// </summary>
internal static class DareHelp
{
    public const string Uri = "https://github.com/dare-merge/dare";
}
