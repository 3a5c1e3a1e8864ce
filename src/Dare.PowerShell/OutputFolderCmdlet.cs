using System.Management.Automation;

namespace Dare.PowerShell;

/// <summary>Base for cmdlets that write a model folder: the -Path/-LiteralPath pair and its resolution through the provider.</summary>
public abstract class OutputFolderCmdlet : DareCmdlet
{
    protected const string PathSet = "Path";
    protected const string LiteralPathSet = "LiteralPath";

    /// <summary>Output model folder.</summary>
    [Parameter(Mandatory = true, Position = 0, ParameterSetName = PathSet)]
    [SupportsWildcards]
    public string Path { get; set; } = "";

    /// <summary>Output model folder, used exactly as typed.</summary>
    [Parameter(Mandatory = true, ParameterSetName = LiteralPathSet)]
    [Alias("PSPath")]
    public string LiteralPath { get; set; } = "";

    /// <summary>The output folder as a file-system path (it need not exist yet).</summary>
    protected string ResolveOutputFolder()
    {
        var literal = ParameterSetName == LiteralPathSet;
        return PathResolver.ResolveOutput(SessionState, literal ? LiteralPath : Path, literal);
    }
}
