using System.Management.Automation;
using Dare.Engine.Merge;

namespace Dare.PowerShell;

/// <summary>
/// Validates a cmdlet parameter (each element of an array) against the engine's declaration of the method or DARE
/// parameter it sets (<see cref="ParameterSpec"/>), so ranges and messages are those recipes use, in the user's
/// terms ("KeepRatio must satisfy 0 &lt; KeepRatio &lt;= 1; 0 does not"); NaN and infinities are always rejected.
/// </summary>
[AttributeUsage(AttributeTargets.Property)]
public sealed class ValidateDeclaredAttribute(string method, string key) : ValidateEnumeratedArgumentsAttribute
{
    /// <summary>"dare" for the DARE transform's parameters.</summary>
    public const string Dare = "dare";

    /// <summary>"della" for the DELLA transform's parameters (density, epsilon).</summary>
    public const string Della = "della";

    /// <summary>"breadcrumbs" for the breadcrumbs transform's parameters (density, gamma).</summary>
    public const string Breadcrumbs = "breadcrumbs";

    /// <summary>The method's mergekit name, <see cref="Dare"/> or <see cref="Della"/>.</summary>
    public string Method { get; } = method;

    /// <summary>The parameter's recipe key.</summary>
    public string Key { get; } = key;

    /// <summary>The declaration: a method's parameter, or the DARE transform's for <see cref="Dare"/>.</summary>
    public static ParameterSpec Spec(string method, string key) => method == Dare
        ? MergeMethods.TransformParameters.First(p => p.Key == key)
        : method == Della ? new[] { DellaDropParameters.Density }.Concat(DellaDropParameters.All).First(p => p.Key == key)
        : method == Breadcrumbs ? new[] { BreadcrumbsParameters.Density }.Concat(BreadcrumbsParameters.All).First(p => p.Key == key)
        : (MergeMethods.Find(method) ?? throw new ArgumentException($"No merge method '{method}'.", nameof(method))).Parameter(key);

    protected override void ValidateElement(object element)
    {
        var spec = Spec(Method, Key);
        var value = LanguagePrimitives.ConvertTo<double>(element);
        if (spec.Problem(value, spec.CmdletName) is { } problem) throw new ValidationMetadataException(problem + ".");
    }
}
