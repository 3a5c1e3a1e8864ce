using System.Collections;
using System.Management.Automation;
using System.Management.Automation.Language;

namespace Dare.PowerShell;

/// <summary>Completes -TokenizerSource with Base and Union (a model's path is typed).</summary>
public sealed class TokenizerSourceCompleter : IArgumentCompleter
{
    public IEnumerable<CompletionResult> CompleteArgument(string commandName, string parameterName, string wordToComplete, CommandAst commandAst, IDictionary fakeBoundParameters) =>
        new[] { "Base", "Union" }.Where(v => v.StartsWith(wordToComplete, StringComparison.OrdinalIgnoreCase))
            .Select(v => new CompletionResult(v, v, CompletionResultType.ParameterValue, v));
}
