using System.Management.Automation;
using Dare.Engine.Safetensors;

namespace Dare.PowerShell;

/// <summary>Import-Safetensors: opens .safetensors files or Hugging Face model folders, reading headers only.</summary>
[Cmdlet(VerbsData.Import, "Safetensors", DefaultParameterSetName = PathSet, HelpUri = DareHelp.Uri + "#the-pipeline")]
[OutputType(typeof(Checkpoint))]
public sealed class ImportSafetensorsCommand : DareCmdlet
{
    private const string PathSet = "Path";
    private const string LiteralPathSet = "LiteralPath";

    /// <summary>Files or model folders; wildcards allowed.</summary>
    [Parameter(Mandatory = true, Position = 0, ParameterSetName = PathSet, ValueFromPipeline = true)]
    [SupportsWildcards]
    public string[] Path { get; set; } = Array.Empty<string>();

    /// <summary>Files or model folders, used exactly as typed (also bound from FullName/PSPath of piped items).</summary>
    [Parameter(Mandatory = true, ParameterSetName = LiteralPathSet, ValueFromPipelineByPropertyName = true)]
    [Alias("PSPath", "FullName")]
    public string[] LiteralPath { get; set; } = Array.Empty<string>();

    protected override void ProcessRecord()
    {
        var literal = ParameterSetName == LiteralPathSet;
        foreach (var path in literal ? LiteralPath : Path)
        {
            RunForItem(() =>
            {
                foreach (var resolved in PathResolver.ResolveExisting(SessionState, path, literal))
                {
                    Cancellation.ThrowIfCancellationRequested();
                    WriteVerbose($"Reading headers of '{resolved}'.");
                    WriteObject(Checkpoint.Open(resolved));
                }
            }, path);
        }
    }
}
