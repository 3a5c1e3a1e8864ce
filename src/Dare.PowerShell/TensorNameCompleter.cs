using System.Collections;
using System.Management.Automation;
using System.Management.Automation.Language;
using Dare.Engine.Merge;
using Dare.Engine.Safetensors;

namespace Dare.PowerShell;

/// <summary>
/// Tab completion of Get-TaskVectorTensor -Name: the base model's floating-point tensor names. The base comes from
/// -InputObject when it is bound, else from what feeds the pipeline: a variable holding task vectors, or a
/// Get-TaskVector command whose -Base/-LiteralBase (or first positional argument) is a literal path or a variable.
/// Only the header is read (Checkpoint.Open), so completing against a 13 GB model costs one small read.
/// </summary>
public sealed class TensorNameCompleter : IArgumentCompleter
{
    public IEnumerable<CompletionResult> CompleteArgument(string commandName, string parameterName, string wordToComplete,
        CommandAst commandAst, IDictionary fakeBoundParameters)
    {
        Checkpoint? checkpoint;
        try
        {
            checkpoint = BaseOf(fakeBoundParameters["InputObject"]) ?? BaseFromPipeline(commandAst);
        }
        catch (Exception)
        {
            return Array.Empty<CompletionResult>(); // completion must never throw at the user's prompt
        }
        if (checkpoint is null) return Array.Empty<CompletionResult>();
        var pattern = WildcardPattern.Get(wordToComplete.Trim('\'', '"') + "*", WildcardOptions.IgnoreCase);
        return checkpoint.Tensors
            .Where(t => t.DType.IsMergeable() && pattern.IsMatch(t.Name))
            .Select(t => new CompletionResult(Quote(t.Name), t.Name, CompletionResultType.ParameterValue, $"{t.Name} {t.DType} {t.ShapeText}"))
            .ToList();
    }

    private static string Quote(string name) =>
        name.IndexOfAny(new[] { ' ', '$', '`', '\'', '"', '(', ')', '{', '}', ';', ',', '&', '@', '#' }) >= 0 ? "'" + name.Replace("'", "''") + "'" : name;

    private static Checkpoint? BaseOf(object? value) => (value is PSObject ps ? ps.BaseObject : value) switch
    {
        TaskVector vector => vector.Base,
        object[] { Length: > 0 } many => BaseOf(many[0]),
        _ => null,
    };

    private static Checkpoint? BaseFromPipeline(CommandAst commandAst)
    {
        if (commandAst.Parent is not PipelineAst pipeline) return null;
        foreach (var element in pipeline.PipelineElements.TakeWhile(e => e != commandAst))
        {
            switch (element)
            {
                case CommandExpressionAst { Expression: VariableExpressionAst variable }:
                    if (BaseOf(VariableValue(variable)) is { } fromVariable) return fromVariable;
                    break;
                case CommandAst command when string.Equals(command.GetCommandName(), "Get-TaskVector", StringComparison.OrdinalIgnoreCase):
                    return BaseArgumentOf(command);
            }
        }
        return null;
    }

    /// <summary>The checkpoint that Get-TaskVector's -Base (named, abbreviated, or first positional) names.</summary>
    private static Checkpoint? BaseArgumentOf(CommandAst command)
    {
        var elements = command.CommandElements;
        CommandElementAst? argument = null;
        var literal = false;
        for (var i = 1; i < elements.Count && argument is null; i++)
        {
            if (elements[i] is CommandParameterAst parameter)
            {
                var name = parameter.ParameterName;
                var isBase = name.Length > 0 && "Base".StartsWith(name, StringComparison.OrdinalIgnoreCase);
                var isLiteralBase = name.Length > 1 && "LiteralBase".StartsWith(name, StringComparison.OrdinalIgnoreCase)
                    && !"LiteralFineTuned".StartsWith(name, StringComparison.OrdinalIgnoreCase);
                var value = parameter.Argument ?? (i + 1 < elements.Count ? elements[i + 1] : null);
                if (isBase || isLiteralBase)
                {
                    argument = value;
                    literal = isLiteralBase;
                }
                else if (parameter.Argument is null) i++; // skip this parameter's value
            }
            else
            {
                argument = elements[i]; // the first positional argument is -Base
            }
        }
        var resolved = argument switch
        {
            StringConstantExpressionAst text => text.Value,
            VariableExpressionAst variable => VariableValue(variable),
            _ => null,
        };
        if (resolved is PSObject ps) resolved = ps.BaseObject;
        return resolved switch
        {
            Checkpoint checkpoint => checkpoint,
            string path => OpenPath(path, literal),
            _ => null,
        };
    }

    private static Checkpoint? OpenPath(string path, bool literal)
    {
        // The completer runs while the prompt's pipeline is busy, so the session is reached through a nested
        // PowerShell on the current runspace (SessionStateProxy refuses concurrent calls).
        var resolved = InCurrentRunspace(ps => ps.AddScript(
            "param($p, $literal) if ($literal -or -not [WildcardPattern]::ContainsWildcardCharacters($p)) { " +
            "$ExecutionContext.SessionState.Path.GetUnresolvedProviderPathFromPSPath($p) } " +
            "else { $ExecutionContext.SessionState.Path.GetResolvedProviderPathFromPSPath($p, [ref] $null) | Select-Object -First 1 }")
            .AddArgument(path).AddArgument(literal)) as string;
        return resolved is not null && (File.Exists(resolved) || Directory.Exists(resolved)) ? Checkpoint.Open(resolved) : null;
    }

    private static object? VariableValue(VariableExpressionAst variable) =>
        InCurrentRunspace(ps => ps.AddCommand("Get-Variable").AddParameter("Name", variable.VariablePath.UserPath).AddParameter("ValueOnly"));

    private static object? InCurrentRunspace(Action<System.Management.Automation.PowerShell> build)
    {
        using var ps = System.Management.Automation.PowerShell.Create(RunspaceMode.CurrentRunspace);
        build(ps);
        var results = ps.Invoke();
        return results.Count switch
        {
            0 => null,
            1 => results[0]?.BaseObject,
            _ => results.Select(r => r?.BaseObject).ToArray(),
        };
    }
}
