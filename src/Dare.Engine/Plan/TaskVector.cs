using System.Globalization;
using Dare.Engine.Adapters;
using Dare.Engine.Safetensors;

namespace Dare.Engine.Merge;

public enum DareRescale
{
    /// <summary>Survivors × 1/(1−p): the paper's rescale, E[DARE(δ)] = δ.</summary>
    InverseKeep,
    /// <summary>Survivors scaled so the tensor's L1 norm is unchanged (current mergekit).</summary>
    L1,
    /// <summary>Drop only.</summary>
    None,
    /// <summary>DAREx-q (Deng et al., ICLR 2025): survivors × 1/q with a chosen q instead of 1 − p.</summary>
    Q,
}

public enum SignMethod { Sum, Count }

/// <summary>DARE applied to one task vector. The mask is a pure function of (Seed, Stream, tensor name, element index).</summary>
public sealed record DareOptions(TensorParameter DropRate, long Seed, int Stream, DareRescale Rescale = DareRescale.InverseKeep)
{
    /// <summary>DAREx-q's q when <see cref="Rescale"/> is <see cref="DareRescale.Q"/>.</summary>
    public double Q { get; init; }
}

/// <summary>How several task vectors are combined: the method (see <see cref="MergeMethods"/>) and its parameters.</summary>
public sealed record MergeOptions(
    MergeMethod Method,
    IReadOnlyList<TensorParameter> Weights,
    bool Normalize,
    double Lambda = 1.0,
    IReadOnlyList<TensorParameter>? KeepRatios = null,
    SignMethod SignMethod = SignMethod.Sum)
{
    /// <summary>Further merge-wide parameters a method declares, by recipe key (e.g. nearswap's t).</summary>
    public IReadOnlyDictionary<string, TensorParameter> Settings { get; init; } = new Dictionary<string, TensorParameter>();

    /// <summary>The merge-wide parameter <paramref name="key"/>, or null.</summary>
    public TensorParameter? Setting(string key) => Settings.TryGetValue(key, out var value) ? value : null;

    /// <summary>A boolean setting (stored as 1 or 0), else its declared default.</summary>
    public bool Flag(ParameterSpec spec) => Setting(spec.Key) is { } value ? value.PossibleValues.First() != 0 : spec.Default is true;

    /// <summary>
    /// Whether a spherical method reads the inputs' whole weights (base + δᵢ) rather than their task vectors: mergekit's
    /// nuslerp and multislerp without a base_model. The base then only anchors the δs.
    /// </summary>
    public bool WholeWeights { get; init; }
}

/// <summary>
/// A lazy plan for a task vector: either one input (δ against the base: a fine-tuned model, or a computed delta) with
/// an optional DARE step (a transform), or a merge of such vectors by a method. Immutable; nothing is computed until
/// a <see cref="MergeExecutor"/> runs it.
/// </summary>
public sealed class TaskVector
{
    private TaskVector(string name, Checkpoint @base, ITaskInput? input, DareOptions? dare, MergeOptions? merge, IReadOnlyList<TaskVector> inputs, DellaOptions? della = null, BreadcrumbsOptions? breadcrumbs = null)
    {
        Name = name;
        Base = @base;
        _input = input;
        Dare = dare;
        Della = della;
        Breadcrumbs = breadcrumbs;
        Merge = merge;
        Inputs = SummarisedList.Joined(inputs);
    }

    private readonly ITaskInput? _input;

    /// <summary>Where a single vector's δ comes from (null for a merged vector).</summary>
    internal ITaskInput Input => _input ?? throw new InvalidOperationException($"'{Name}' is a merge; its inputs have the deltas.");

    /// <summary>The single vectors whose δs a merge combines, or this vector alone.</summary>
    internal IReadOnlyList<TaskVector> Leaves => IsMerged ? Inputs : new[] { this };

    public string Name { get; }
    public Checkpoint Base { get; }

    /// <summary>The fine-tuned model (null for a merged vector, or a computed input).</summary>
    public Checkpoint? FineTuned => _input?.Model;

    public DareOptions? Dare { get; }

    /// <summary>The output vocabulary the vector was made for (tokenizer_source).</summary>
    public TokenizerChoice Tokenizer { get; private init; } = TokenizerChoice.Base;

    /// <summary>The DELLA step (MagPrune), if any; a vector has at most one drop step (DARE or DELLA).</summary>
    public DellaOptions? Della { get; }

    /// <summary>The breadcrumbs step (drop outliers and the smallest magnitudes), if any.</summary>
    public BreadcrumbsOptions? Breadcrumbs { get; }
    public MergeOptions? Merge { get; }

    /// <summary>The task vectors a merged vector combines (empty for a single model).</summary>
    public IReadOnlyList<TaskVector> Inputs { get; }

    /// <summary>Base tensors the fine-tuned model lacks; they contribute a zero delta.</summary>
    public IReadOnlyList<string> MissingTensors => _input?.MissingTensors ?? SummarisedList.Joined(Array.Empty<string>());

    public bool IsMerged => Merge is not null;

    /// <summary>The fine-tuned models this vector draws on.</summary>
    public IReadOnlyList<Checkpoint> Sources => SummarisedList.Joined<Checkpoint>(Leaves.Where(l => l.FineTuned is not null).Select(l => l.FineTuned!).ToList());

    public string Source => string.Join(", ", Leaves.Select(l => l.Input.Name));
    public int TensorCount => Base.TensorCount;
    public long ParameterCount => Base.Tensors.Where(t => t.DType.IsMergeable()).Sum(t => t.ElementCount);

    /// <summary>Human-readable list of the steps applied so far.</summary>
    public IReadOnlyList<string> Steps
    {
        get
        {
            if (!IsMerged)
            {
                var steps = new List<string> { $"TaskVector({Input.Name} - {Base.Name})" };
                if (Dare is { } d) steps.Add($"DareDrop(p={d.DropRate}, seed={d.Seed}, stream={d.Stream}, rescale={DareDropParameters.RescaleText(d.Rescale, d.Q)})");
                if (Della is { } della) steps.Add(della.Step);
                if (Breadcrumbs is { } breadcrumbs) steps.Add(breadcrumbs.Step);
                return SummarisedList.Joined(steps);
            }
            return SummarisedList.Joined(Inputs.SelectMany(i => i.Steps).Append(Merge!.Method.Step(Merge)));
        }
    }

    public override string ToString() => Name;

    /// <summary>
    /// δ = fine-tuned − base, with the output vocabulary the base's (tokenizer_source: base). Checks every shared
    /// tensor up front: a shape mismatch outside the vocabulary tensors (embedding, head), or a dtype mismatch
    /// involving a non-float tensor, is an error naming the tensor; tensors missing from the fine-tuned model are
    /// recorded. Vocabulary rows follow the tokenizers; a tied model's head is its embedding.
    /// </summary>
    public static TaskVector FromModels(Checkpoint @base, Checkpoint fineTuned, string? name = null) =>
        FromModels(@base, new[] { fineTuned }, TokenizerChoice.Base, new[] { name })[0];

    /// <summary>
    /// One task vector per model, all against the same output vocabulary (<paramref name="tokenizer"/>): with a union
    /// or a model's tokenizer their base is the base re-rowed to that vocabulary (see <see cref="VocabularyAlignment"/>).
    /// </summary>
    public static IReadOnlyList<TaskVector> FromModels(Checkpoint @base, IReadOnlyList<Checkpoint> models, TokenizerChoice tokenizer, IReadOnlyList<string?>? names = null)
    {
        var alignment = VocabularyAlignment.Plan(@base, models, tokenizer);
        var vocabularyTensors = new HashSet<string>(alignment.Tensors, StringComparer.Ordinal);
        var missing = new List<IReadOnlyList<string>>();
        var notes = new List<IReadOnlyList<string>>();
        foreach (var fineTuned in models)
        {
            var absent = new List<string>();
            var warnings = new List<string>();
            foreach (var baseTensor in @base.Tensors)
            {
                var tuned = fineTuned.Find(baseTensor.Name);
                if (tuned is null)
                {
                    if (alignment.Architecture.TiedSource(fineTuned, baseTensor.Name) is null) absent.Add(baseTensor.Name);
                    continue;
                }
                if (!tuned.Shape.SequenceEqual(baseTensor.Shape) && !vocabularyTensors.Contains(baseTensor.Name))
                {
                    throw new DareException(DareErrorId.TensorShapeMismatch, DareErrorKind.InvalidData,
                        $"Tensor '{baseTensor.Name}' has shape {baseTensor.ShapeText} in the base '{@base.Path}' but {tuned.ShapeText} in '{fineTuned.Path}'.")
                    { FilePath = tuned.File, TensorName = baseTensor.Name };
                }
                var bothFloat = baseTensor.DType.IsMergeable() && tuned.DType.IsMergeable();
                if (!bothFloat && tuned.DType != baseTensor.DType)
                {
                    throw new DareException(DareErrorId.TensorDTypeMismatch, DareErrorKind.InvalidData,
                        $"Tensor '{baseTensor.Name}' is {baseTensor.DType} {baseTensor.ShapeText} in the base '{@base.Path}' but {tuned.DType} {tuned.ShapeText} in '{fineTuned.Path}'.")
                    { FilePath = tuned.File, TensorName = baseTensor.Name };
                }
            }
            foreach (var head in alignment.Architecture.Heads.Where(h => @base.Find(h) is null && fineTuned.Find(h) is not null && alignment.Architecture.TiedSource(@base, h) is not null))
            {
                warnings.Add($"'{fineTuned.Path}' has its own '{head}', but the base '{@base.Path}' ties its head to its embedding; the output stays tied as the base is, so the changes in that head are not merged.");
            }
            missing.Add(SummarisedList.Joined(absent));
            notes.Add(warnings);
        }
        Checkpoint outputBase;
        ITaskInput[] inputs;
        if (alignment.IsIdentity && alignment.Tensors.Count > 0 || alignment.Tensors.Count == 0)
        {
            outputBase = @base;
            inputs = models.Select((m, i) => (ITaskInput)new FineTunedDelta(m, missing[i], TiedAliases(@base, m, alignment.Architecture), null, notes[i])).ToArray();
        }
        else
        {
            (outputBase, var aligned) = VocabularyMerge.Build(alignment, missing, notes);
            inputs = aligned;
        }
        return models.Select((m, i) => new TaskVector(names?[i] ?? m.Name, outputBase, inputs[i], null, null, Array.Empty<TaskVector>()) { Tokenizer = tokenizer }).ToList();
    }

    /// <summary>Base tensors a tied model reads from its embedding (its head).</summary>
    private static Dictionary<string, TensorInfo> TiedAliases(Checkpoint @base, Checkpoint model, ModelArchitecture architecture)
    {
        var aliases = new Dictionary<string, TensorInfo>(StringComparer.Ordinal);
        foreach (var info in @base.Tensors)
        {
            if (model.Find(info.Name) is null && architecture.TiedSource(model, info.Name) is { } tied && tied.Shape.SequenceEqual(info.Shape)) aliases[info.Name] = tied;
        }
        return aliases;
    }

    /// <summary>A task vector whose δ comes from <paramref name="input"/> (e.g. a computed delta), against <paramref name="base"/>.</summary>
    internal static TaskVector FromInput(Checkpoint @base, ITaskInput input, string? name = null) =>
        new(name ?? input.Name, @base, input, null, null, Array.Empty<TaskVector>());

    /// <summary>
    /// δ = s·B·A per module of a PEFT LoRA adapter (and stored − base for its full tensors), against <paramref name="base"/>.
    /// Every module is matched to a base tensor and checked (shape, rank) now; nothing is read yet.
    /// </summary>
    public static TaskVector FromAdapter(Checkpoint @base, LoraAdapter adapter, string? name = null) =>
        FromInput(@base, LoraDelta.Bind(@base, adapter), name);

    /// <summary>
    /// An adapter's vector beside <paramref name="sibling"/> (a model's vector of the same merge): against its base, which is
    /// <paramref name="base"/> re-rowed when the merge has another vocabulary. An adapter that changes a re-rowed tensor is
    /// refused, since its rows follow the base tokenizer's order.
    /// </summary>
    public static TaskVector FromAdapter(Checkpoint @base, LoraAdapter adapter, TaskVector sibling)
    {
        var delta = LoraDelta.Bind(@base, adapter);
        var outputBase = sibling.Base;
        foreach (var name in delta.BaseTensors.Where(n => !ReferenceEquals(outputBase.Find(n), @base.Find(n))))
        {
            throw new DareException(DareErrorId.AdapterUnsupported, DareErrorKind.NotImplemented,
                $"The adapter '{adapter.Path}' changes '{name}', whose rows this merge re-orders to another vocabulary (tokenizer); Dare cannot re-row an adapter's vocabulary tensors. Merge with the base's tokenizer, or apply the adapter to its base and merge that model.")
                { FilePath = adapter.WeightsFile, TensorName = name };
        }
        return new TaskVector(adapter.Name, outputBase, delta, null, null, Array.Empty<TaskVector>()) { Tokenizer = sibling.Tokenizer };
    }

    /// <summary>The LoRA adapters this vector draws on.</summary>
    public IReadOnlyList<LoraAdapter> LoraAdapters =>
        Leaves.Select(l => l._input).OfType<LoraDelta>().Select(d => d.Adapter).ToList();

    /// <summary>A new vector with DARE added (this one is unchanged).</summary>
    public TaskVector WithDare(DareOptions dare)
    {
        CheckNoDropStep("DARE");
        foreach (var rate in dare.DropRate.PossibleValues) DareMask.Threshold(rate);
        DareDropParameters.CheckRescale(dare.Rescale, dare.Q);
        return new TaskVector(Name, Base, _input, dare, null, Inputs) { Tokenizer = Tokenizer };
    }

    /// <summary>A new vector with DELLA's MagPrune added (this one is unchanged).</summary>
    public TaskVector WithDella(DellaOptions della)
    {
        CheckNoDropStep("DELLA");
        della.Check();
        return new TaskVector(Name, Base, _input, null, null, Inputs, della) { Tokenizer = Tokenizer };
    }

    /// <summary>A new vector with Model Breadcrumbs' pruning added (this one is unchanged).</summary>
    public TaskVector WithBreadcrumbs(BreadcrumbsOptions breadcrumbs)
    {
        CheckNoDropStep("breadcrumbs");
        breadcrumbs.Check();
        return new TaskVector(Name, Base, _input, null, null, Inputs, null, breadcrumbs) { Tokenizer = Tokenizer };
    }

    private void CheckNoDropStep(string step)
    {
        if (IsMerged)
        {
            throw new DareException(DareErrorId.TaskVectorInvalid, DareErrorKind.InvalidArgument,
                $"'{Name}' is already merged; apply {step} to each task vector before merging them.");
        }
        if (Dare is not null || Della is not null || Breadcrumbs is not null)
        {
            var existing = Dare is not null ? $"a DARE step (p={Dare.DropRate})" : Della is not null ? $"a DELLA step (density={Della.Density})" : $"a breadcrumbs step (density={Breadcrumbs!.Density})";
            throw new DareException(DareErrorId.TaskVectorInvalid, DareErrorKind.InvalidArgument,
                $"'{Name}' already has {existing}; start again from the task vector without it.");
        }
    }

    /// <summary>A merged vector combining <paramref name="inputs"/> (all from the same base, none merged already).</summary>
    public static TaskVector Combine(IReadOnlyList<TaskVector> inputs, MergeOptions merge, string? name = null)
    {
        if (inputs.Count == 0)
        {
            throw new DareException(DareErrorId.TaskVectorInvalid, DareErrorKind.InvalidArgument, "A merge needs at least one task vector.");
        }
        var nested = inputs.FirstOrDefault(i => i.IsMerged);
        if (nested is not null)
        {
            throw new DareException(DareErrorId.TaskVectorInvalid, DareErrorKind.InvalidArgument,
                $"'{nested.Name}' is already a merge; merge all task vectors in one Merge-* call.");
        }
        var @base = inputs[0].Base;
        var other = inputs.FirstOrDefault(i => !string.Equals(i.Base.Path, @base.Path, StringComparison.Ordinal));
        if (other is not null)
        {
            throw new DareException(DareErrorId.BaseModelMismatch, DareErrorKind.InvalidArgument,
                $"Task vectors from different base models cannot be merged: '{inputs[0].Name}' is based on '{@base.Path}', '{other.Name}' on '{other.Base.Path}'.");
        }
        // Vectors made with different output vocabularies (separate union or model tokenizers) have differently re-rowed bases.
        var reRowed = inputs.FirstOrDefault(i => !ReferenceEquals(i.Base, @base) && i.Base.Tensors.Zip(@base.Tensors).Any(p => !p.First.Shape.SequenceEqual(p.Second.Shape) || p.First.Assembly is not null || p.Second.Assembly is not null));
        if (reRowed is not null)
        {
            throw new DareException(DareErrorId.VocabularyMismatch, DareErrorKind.InvalidArgument,
                $"'{inputs[0].Name}' and '{reRowed.Name}' were made for different output vocabularies; make the task vectors of a union (or another model's) tokenizer in one Get-TaskVector call.");
        }
        if (merge.Weights.Count != inputs.Count)
        {
            throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument,
                $"{merge.Weights.Count} weights were given for {inputs.Count} task vectors; give one weight per task vector.");
        }
        merge.Method.Validate(merge, inputs.Count);
        foreach (var weight in merge.Weights) CommonParameters.Weight.Check(weight, "A weight");
        if (merge.Normalize && merge.Weights.SelectMany(w => w.PossibleValues).Any(w => w < 0))
        {
            throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument,
                "Negative weights cannot be normalized (the sum of weights could be zero or flip the sign); use -Normalize:$false.");
        }
        CommonParameters.Lambda.Check(merge.Lambda, "Lambda");
        if (merge.Normalize && merge.Weights.All(w => w is ConstantParameter) && merge.Weights.Sum(w => (double)(float)((ConstantParameter)w).Value) == 0)
        {
            throw new DareException(DareErrorId.WeightSumZero, DareErrorKind.InvalidArgument,
                "The weights sum to 0, so they cannot be normalized; give a non-zero weight or use -Normalize:$false (normalize: false).");
        }
        var mergedName = name ?? $"{merge.Method.Name}({string.Join("+", inputs.Select(i => i.Name))})";
        return new TaskVector(mergedName, @base, null, null, merge, inputs) { Tokenizer = inputs[0].Tokenizer };
    }
}
