using System.Collections;
using System.Globalization;
using System.Management.Automation;
using System.Management.Automation.Language;
using System.Reflection;
using Dare.Engine.Merge;

namespace Dare.PowerShell;

/// <summary>
/// Completes a parameter that sets a declared method or DARE parameter (<see cref="ValidateDeclaredAttribute"/>)
/// with the values its declaration names: the cmdlet's default, the recipes' default and the range's inclusive
/// ends, each with the declaration's description and range as the tooltip.
/// </summary>
public sealed class DeclaredValueCompleter : IArgumentCompleter
{
    public IEnumerable<CompletionResult> CompleteArgument(string commandName, string parameterName, string wordToComplete, CommandAst commandAst, IDictionary fakeBoundParameters)
    {
        var type = typeof(DeclaredValueCompleter).Assembly.GetTypes().FirstOrDefault(t =>
            t.GetCustomAttribute<CmdletAttribute>() is { } c && string.Equals($"{c.VerbName}-{c.NounName}", commandName, StringComparison.OrdinalIgnoreCase));
        var declared = type?.GetProperties().FirstOrDefault(p => string.Equals(p.Name, parameterName, StringComparison.OrdinalIgnoreCase) ||
                (p.GetCustomAttribute<AliasAttribute>()?.AliasNames.Contains(parameterName, StringComparer.OrdinalIgnoreCase) ?? false))
            ?.GetCustomAttribute<ValidateDeclaredAttribute>();
        if (declared is null) yield break;
        var spec = ValidateDeclaredAttribute.Spec(declared.Method, declared.Key);
        var range = spec.Range is { } r ? $" ({r.Rule(spec.CmdletName ?? spec.Key)})" : "";
        var candidates = new List<(double Value, string Why)>();
        if (spec.CmdletDefault is double cmdlet) candidates.Add((cmdlet, "this cmdlet's default"));
        if (spec.Default is double or long) candidates.Add((Convert.ToDouble(spec.Default, CultureInfo.InvariantCulture), $"mergekit's default for {spec.Key}"));
        if (spec.Range is { MinInclusive: true } low && double.IsFinite(low.Min)) candidates.Add((low.Min, "the smallest allowed"));
        if (spec.Range is { MaxInclusive: true } high && double.IsFinite(high.Max)) candidates.Add((high.Max, "the largest allowed"));
        foreach (var group in candidates.GroupBy(c => c.Value))
        {
            var text = group.Key.ToString("R", CultureInfo.InvariantCulture);
            if (!text.StartsWith(wordToComplete, StringComparison.Ordinal)) continue;
            yield return new CompletionResult(text, text, CompletionResultType.ParameterValue,
                $"{string.Join("; ", group.Select(c => c.Why))}. {spec.Description}{range}");
        }
    }
}
