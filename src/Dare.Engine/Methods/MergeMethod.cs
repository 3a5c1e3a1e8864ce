using System.Reflection;

namespace Dare.Engine.Merge;

/// <summary>
/// How a recipe names a method (mergekit's <c>merge_method</c>) and what that name means on top of the engine
/// method: defaults that differ, whether density is DARE's keep fraction (the dare_* forms), whether a base is needed.
/// </summary>
public sealed record RecipeForm(string Name, string Summary)
{
    /// <summary>normalize's default under this name.</summary>
    public bool NormalizeByDefault { get; init; }

    /// <summary>Whether task vectors need a base_model (mergekit's linear does not: the weighted mean is the same from any model).</summary>
    public bool NeedsBase { get; init; } = true;

    /// <summary>Whether density is DARE's keep fraction (drop rate = 1 − density) rather than the method's own.</summary>
    public bool DensityIsDareKeep { get; init; }

    /// <summary>Whether density (with epsilon) is DELLA's MagPrune keep probability (della, della_linear): each input gets a DELLA step.</summary>
    public bool DensityIsDellaKeep { get; init; }

    /// <summary>Whether density (with gamma) is Model Breadcrumbs' kept band (breadcrumbs, breadcrumbs_ties): each input gets a breadcrumbs step.</summary>
    public bool DensityIsBreadcrumbsKeep { get; init; }

    /// <summary>Whether the form gives each input its own pruning step (DELLA or breadcrumbs), so DARE's drop_rate has no place.</summary>
    public bool PrunesEachInput => DensityIsDellaKeep || DensityIsBreadcrumbsKeep;

    /// <summary>
    /// Whether base_model is optional and changes what is merged (nuslerp, multislerp): with one, the other models'
    /// task vectors; without one, the models' whole weights (the first model anchors the δs).
    /// </summary>
    public bool BaseIsOptional { get; init; }

    /// <summary>Whether a base_model that the models do not list joins them as one more model (mergekit's karcher).</summary>
    public bool BaseJoinsModels { get; init; }

    /// <summary>Whether λ applies (mergekit's linear has none).</summary>
    public bool HasLambda { get; init; } = true;

    /// <summary>The engine method that merges; set by the registry.</summary>
    public MergeMethod Method { get; internal set; } = null!;

    /// <summary>Whether a recipe key means something under this name.</summary>
    public bool Accepts(string key) =>
        Method.Parameters.Any(p => p.Key == key && (key != "lambda" || HasLambda)) || (DensityIsDareKeep && key == "density") ||
        (DensityIsDellaKeep && (key == "density" || DellaDropParameters.All.Any(p => p.Key == key))) ||
        (DensityIsBreadcrumbsKeep && (key == "density" || BreadcrumbsParameters.All.Any(p => p.Key == key))) ||
        (Method.TakesTransforms && MergeMethods.TransformParameters.Any(p => p.Key == key) && !(PrunesEachInput && key == "drop_rate") && !DensityIsBreadcrumbsKeep);
}

/// <summary>
/// A merge method: its name (mergekit's), its parameters, declared once (<see cref="ParameterSpec"/>), the names
/// recipes use for it, and how it merges one tensor (<see cref="ITensorMerge"/>). Methods are discovered by
/// <see cref="MergeMethods"/>: adding one is one file (see docs/ARCHITECTURE.md).
/// </summary>
public abstract class MergeMethod
{
    /// <summary>mergekit's name of the plain form, e.g. "ties".</summary>
    public abstract string Name { get; }

    /// <summary>The name in plan steps, e.g. "Ties" (MergeTies(...)).</summary>
    public abstract string DisplayName { get; }

    public abstract IReadOnlyList<ParameterSpec> Parameters { get; }

    /// <summary>The recipe names that merge with this method.</summary>
    public abstract IReadOnlyList<RecipeForm> RecipeForms { get; }

    /// <summary>Whether inputs may carry transforms (DARE) before this method combines them.</summary>
    public virtual bool TakesTransforms => true;

    /// <summary>The parameter with recipe key <paramref name="key"/>.</summary>
    public ParameterSpec Parameter(string key) => Parameters.First(p => p.Key == key);

    /// <summary>Checks a merge before it is planned (input count, ranges); throws <see cref="DareException"/>.</summary>
    internal virtual void Validate(MergeOptions options, int inputCount) { }

    /// <summary>The per-tensor merge (options null: a single task vector as it is).</summary>
    internal abstract ITensorMerge CreateTensorMerge(MergeOptions? options, TensorMergeSetup setup);

    /// <summary>The per-tensor merge on the TorchSharp tensor backend (-Device): every method has one, writing what <see cref="CreateTensorMerge"/>'s writes.</summary>
    internal abstract IDeviceMerge CreateDeviceMerge(MergeOptions? options, TensorMergeSetup setup);

    /// <summary>The plan step's parameters beyond weights, normalize and λ, e.g. "keep=0.2/0.2, sign=Sum, ".</summary>
    internal virtual string StepDetail(MergeOptions options) => "";

    /// <summary>The merge as a plan step, e.g. MergeTies(keep=0.2/0.2, sign=Sum, weights=1/1, normalize=True, lambda=1).</summary>
    internal virtual string Step(MergeOptions options) =>
        $"Merge{DisplayName}({StepDetail(options)}weights={string.Join("/", options.Weights)}, normalize={options.Normalize}, " +
        $"lambda={options.Lambda.ToString(System.Globalization.CultureInfo.InvariantCulture)})";

    /// <summary>The recipe name that reproduces <paramref name="options"/> (mergekit's linear has no λ, so other linear merges are task_arithmetic).</summary>
    internal virtual string RecipeName(MergeOptions options) => Name;

    /// <summary>The value of per-model parameter <paramref name="key"/> for input <paramref name="input"/>, as planned.</summary>
    internal TensorParameter? ModelValue(MergeOptions options, string key, int input) => key switch
    {
        "weight" => options.Weights[input],
        "density" => options.KeepRatios?[input],
        _ => null,
    };

    /// <summary>The value of merge-wide parameter <paramref name="key"/> as planned: a bool, a number, a per-tensor parameter or a choice's text.</summary>
    internal object? MergeValue(MergeOptions options, string key) => key switch
    {
        "normalize" => options.Normalize,
        "lambda" => options.Lambda,
        "sign_method" => options.SignMethod.ToString().ToLowerInvariant(),
        _ => Parameters.FirstOrDefault(p => p.Key == key) switch
        {
            { Kind: ParameterKind.Boolean } spec => options.Flag(spec),
            { Kind: ParameterKind.Integer } when options.Setting(key) is { } value => (long)value.PossibleValues.First(),
            _ => options.Setting(key),
        },
    };

    public override string ToString() => Name;

    public static MergeMethod Linear => MergeMethods.Get<LinearMethod>();
    public static MergeMethod Ties => MergeMethods.Get<TiesMethod>();
}

/// <summary>The registry of methods: every <see cref="MergeMethod"/> in this assembly, found once by reflection.</summary>
public static class MergeMethods
{
    private static readonly Lazy<IReadOnlyList<MergeMethod>> Discovered = new(() =>
    {
        var methods = typeof(MergeMethod).Assembly.GetTypes()
            .Where(t => t.IsSubclassOf(typeof(MergeMethod)) && !t.IsAbstract)
            .Select(t => (MergeMethod)Activator.CreateInstance(t, nonPublic: true)!)
            .OrderBy(m => m.Name, StringComparer.Ordinal).ToList();
        foreach (var method in methods)
        {
            foreach (var form in method.RecipeForms) form.Method = method;
        }
        return methods;
    });

    public static IReadOnlyList<MergeMethod> All => Discovered.Value;

    /// <summary>Every recipe name, in the order recipes list them (linear, task_arithmetic, ties, dare_linear, dare_ties, della, della_linear, breadcrumbs, breadcrumbs_ties, then the others by name).</summary>
    public static IReadOnlyList<RecipeForm> RecipeForms => All.SelectMany(m => m.RecipeForms)
        .OrderBy(f => Array.IndexOf(ClassicOrder, f.Name) is var i and >= 0 ? i : ClassicOrder.Length).ThenBy(f => f.Name, StringComparer.Ordinal).ToList();

    private static readonly string[] ClassicOrder = { "linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "della", "della_linear", "breadcrumbs", "breadcrumbs_ties" };

    public static RecipeForm? FindRecipeForm(string name) => All.SelectMany(m => m.RecipeForms).FirstOrDefault(f => f.Name == name);

    /// <summary>The method with mergekit name <paramref name="name"/>, or null.</summary>
    public static MergeMethod? Find(string name) => All.FirstOrDefault(m => m.Name == name);

    internal static MergeMethod Get<T>() where T : MergeMethod => All.OfType<T>().Single();

    /// <summary>The parameters of the transforms an input may carry (DARE), valid with every method that takes transforms.</summary>
    public static IReadOnlyList<ParameterSpec> TransformParameters => DareDropParameters.All;

    /// <summary>Every parameter key any method or transform declares.</summary>
    /// <remarks>
    /// A key two declarations share (ram's merge-wide epsilon, DELLA's per-model one) is listed once with the wider
    /// scope, so recipes may write it wherever one allows; the planner then checks it against the chosen method's.
    /// </remarks>
    public static IReadOnlyList<ParameterSpec> AllParameters =>
        All.SelectMany(m => m.Parameters).Concat(TransformParameters).Concat(DellaDropParameters.All).Concat(BreadcrumbsParameters.All)
            .GroupBy(p => p.Key).Select(g => g.FirstOrDefault(p => p.Scope == ParameterScope.Either) ?? g.First()).ToList();
}
