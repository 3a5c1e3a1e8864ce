using Dare.Engine.Merge;
using Dare.Engine.Safetensors;

namespace Dare.Engine.Recipes;

/// <summary>Choices made outside the recipe (Invoke-DareMerge's parameters).</summary>
public sealed class RecipePlanOptions
{
    /// <summary>Output folder of the last (or only) recipe; overrides its output.path.</summary>
    public string? OutputPath { get; init; }

    /// <summary>Output dtype of the last recipe; overrides its out_dtype/dtype.</summary>
    public SafetensorsDType? OutputDType { get; init; }

    /// <summary>Largest shard of the last recipe's output; overrides its output.max_shard_size.</summary>
    public long? MaxShardSize { get; init; }

    /// <summary>Replace existing non-empty output folders.</summary>
    public bool Force { get; init; }

    /// <summary>Seed for DARE steps when the recipe gives no random_seed.</summary>
    public long DefaultSeed { get; init; }

    /// <summary>Write NaN/Inf with a warning per tensor instead of failing (every recipe of the batch).</summary>
    public bool AllowNonFinite { get; init; }
    /// <summary>Keep output folders that already hold this recipe's completed export (resumes an interrupted batch).</summary>
    public bool SkipExisting { get; init; }

    /// <summary>Replay a recipe whose recorded inputs (dare_inputs) differ from the files now, with a warning per difference.</summary>
    public bool AllowChangedInputs { get; init; }

    /// <summary>Write only this partition of the last (or only) recipe's output (see <see cref="Partitions.ExportPartition"/>).</summary>
    public Partitions.ExportPartition? Partition { get; init; }

    /// <summary>Where every recipe of the batch merges (-Device); overrides each recipe's device:.</summary>
    public ComputeDevice? Device { get; init; }
}

/// <summary>One recipe turned into a task-vector plan and export options, checked and ready to run.</summary>
public sealed class MergePlan
{
    public required MergeRecipe Recipe { get; init; }
    public required TaskVector Vector { get; init; }
    public required ExportOptions Export { get; init; }
    public required RecipePlanSummary Summary { get; init; }

    /// <summary>Earlier recipes whose outputs this one reads. Until they exist the plan stands their base models in for them.</summary>
    public IReadOnlyList<int> ReadsOutputsOf { get; init; } = Array.Empty<int>();

    /// <summary>True when a DARE step took <see cref="RecipePlanOptions.DefaultSeed"/> because the recipe gives no random_seed.</summary>
    public bool UsesDefaultSeed { get; init; }

    /// <summary>Settings that have no effect with this method (mergekit ignores them too).</summary>
    public IReadOnlyList<string> Warnings { get; init; } = Array.Empty<string>();

    /// <summary>The DARE guidance's warnings (<see cref="MergeMistakes"/>) with locations, apart so that they can be silenced.</summary>
    public IReadOnlyList<string> Guidance { get; init; } = Array.Empty<string>();

    /// <summary>With <see cref="RecipePlanOptions.SkipExisting"/>: the output folder already holds this recipe's export, so it is not run.</summary>
    public bool AlreadyWritten { get; internal set; }

    public override string ToString() => $"{Recipe.DisplayName} -> {Export.Destination}";
}

/// <summary>Every recipe of a batch planned before anything runs, so any error stops the batch before work starts.</summary>
public sealed class BatchPlan
{
    internal BatchPlan(RecipeBatch batch, RecipePlanOptions options, IReadOnlyList<string> outputs)
    {
        Batch = batch;
        Options = options;
        Outputs = outputs;
    }

    public RecipeBatch Batch { get; }
    public RecipePlanOptions Options { get; }

    /// <summary>Full output folder of each recipe, in batch order.</summary>
    public IReadOnlyList<string> Outputs { get; }

    public IReadOnlyList<MergePlan> Plans { get; internal set; } = Array.Empty<MergePlan>();

    /// <summary>Plans recipe <paramref name="index"/> again against the outputs earlier recipes have now written.</summary>
    public MergePlan PlanWithWrittenOutputs(int index) => RecipePlanner.PlanRecipe(this, index, standIns: false);
}

/// <summary>
/// Turns parsed recipes into <see cref="TaskVector"/> plans with mergekit's semantics: method defaults, parameter
/// precedence (a model's setting, else the global one, else the method default), filters and gradients. Everything
/// that can be checked without reading tensor data is checked here: value ranges, model paths, architectures,
/// shapes, output folders.
/// </summary>
public static partial class RecipePlanner
{
    // vocab_size may differ: embedding rows follow the tokenizers (tokenizer_source).
    internal static readonly string[] ArchitectureKeys = { "hidden_size", "num_hidden_layers" };

    private static readonly StringComparer PathComparer = OperatingSystem.IsWindows() ? StringComparer.OrdinalIgnoreCase : StringComparer.Ordinal;

    /// <summary>Plans every recipe of <paramref name="batch"/>; throws on the first problem, before anything is written.</summary>
    public static BatchPlan Plan(RecipeBatch batch, RecipePlanOptions options)
    {
        var last = batch.Recipes.Count - 1;
        var outputs = new List<string>();
        for (var i = 0; i <= last; i++)
        {
            var recipe = batch.Recipes[i];
            var destination = (i == last ? options.OutputPath : null) ?? recipe.OutputPath ?? throw RecipeParser.Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidArgument, recipe.Location,
                batch.Recipes.Count == 1
                    ? "says nowhere to write the merged model: give -OutputPath or 'output: { path: <folder> }' in the recipe."
                    : $"'{recipe.DisplayName}' says nowhere to write its model: in a batch every recipe but the last needs 'output: {{ path: <folder> }}' (the last may take -OutputPath).");
            destination = Path.GetFullPath(destination).TrimEnd(Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar);
            var clash = outputs.FindIndex(o => PathComparer.Equals(o, destination));
            if (clash >= 0)
            {
                throw RecipeParser.Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidArgument, recipe.OutputPathLocation ?? recipe.Location,
                    $"writes to '{destination}', as '{batch.Recipes[clash].DisplayName}' does; each recipe needs its own output folder.");
            }
            outputs.Add(destination);
        }
        var plans = new List<MergePlan>();
        // Later recipes look up earlier plans (for their outputs' stand-ins) while the list grows.
        var plan = new BatchPlan(batch, options, outputs) { Plans = plans };
        for (var i = 0; i <= last; i++)
        {
            var recipePlan = PlanRecipe(plan, i, standIns: true);
            plans.Add(recipePlan);
            if (options.SkipExisting) recipePlan.AlreadyWritten = RecipeResume.AlreadyWritten(plan, i, recipePlan, options.Force);
        }
        for (var i = 0; i <= last; i++)
        {
            if (!plans[i].AlreadyWritten) CheckpointWriter.CheckDestination(outputs[i], options.Force);
        }
        return plan;
    }

    /// <summary>A model reference resolved: an existing path, or the output of an earlier recipe of the batch.</summary>
    private sealed record ModelReference(string Text, RecipeLocation Location, string FullPath, int? ProducedBy);

    internal static MergePlan PlanRecipe(BatchPlan batchPlan, int index, bool standIns)
    {
        var batch = batchPlan.Batch;
        var recipe = batch.Recipes[index];
        var warnings = new List<string>();
        var form = recipe.Method;
        var normalize = recipe.Parameters.Normalize ?? form.NormalizeByDefault;
        // Values and model paths are checked one by one and reported together; the checks after them need all of them right.
        var mistakes = new RecipeDiagnostics(batch.Source);
        CheckValues(recipe, normalize, warnings, mistakes);
        CheckRecordedInputs(recipe, batch.BaseDirectory, batchPlan.Options.AllowChangedInputs, warnings);

        if (recipe.BaseModel is null && form.NeedsBase)
        {
            mistakes.Add(RecipeParser.Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, recipe.MethodLocation,
                $"{form.Name} needs a 'base_model:': its task vectors are each model minus the base."));
        }
        var baseReference = recipe.BaseModel is null ? null : mistakes.Try(() => Resolve(batchPlan, index, recipe.BaseModel, recipe.BaseModelLocation!), null);
        var modelReferences = recipe.Models.Select(m => (Entry: m, Reference: mistakes.Try(() => Resolve(batchPlan, index, m.Model, m.Location), null)!)).ToList();
        var sliceReferences = (recipe.Slices ?? Array.Empty<RecipeSlice>()).Select(slice => slice.Sources
            .Select(source => (Source: source, Reference: mistakes.Try(() => Resolve(batchPlan, index, source.Model, source.Location), null)!)).ToList()).ToList();

        var opened = new Dictionary<string, Checkpoint>(PathComparer);
        Checkpoint Open(ModelReference reference)
        {
            if (opened.TryGetValue(reference.FullPath, out var known)) return known;
            var checkpoint = reference.ProducedBy is { } producer
                ? OpenProduced(batchPlan, producer, reference, standIns)
                : OpenExisting(reference, batch.BaseDirectory);
            opened[reference.FullPath] = checkpoint;
            return checkpoint;
        }

        foreach (var reference in modelReferences.Select(m => m.Reference).Concat(sliceReferences.SelectMany(s => s.Select(x => x.Reference))).Prepend(baseReference).OfType<ModelReference>())
        {
            mistakes.Try(() => Open(reference));
        }
        mistakes.ThrowIfAny();

        string baseFullPath;
        Checkpoint @base;
        List<(RecipeModelEntry Entry, ModelReference Reference, Checkpoint Checkpoint)> models;
        if (recipe.Slices is not null)
        {
            (@base, baseFullPath, models) = StackSlices(recipe, form, baseReference, sliceReferences, Open);
        }
        else
        {
            // mergekit's linear needs no base: the weighted mean is the same whichever model the task vectors start from.
            baseFullPath = baseReference?.FullPath ?? modelReferences[0].Reference.FullPath;
            @base = Open(baseReference ?? modelReferences[0].Reference);
            // The base listed among the models has no task vector (mergekit skips it), except in linear, where its weight counts.
            // nuslerp and multislerp: with a base, task vectors of the others; without, whole weights anchored at the first model.
            var taskVectors = form.NeedsBase || (form.BaseIsOptional && baseReference is not null);
            var inputs = !taskVectors
                ? modelReferences
                : modelReferences.Where(m => m.Entry.Lora is not null || !PathComparer.Equals(m.Reference.FullPath, baseFullPath)).ToList();
            // karcher: mergekit adds a base_model the models do not list as one more model.
            if (form.BaseJoinsModels && baseReference is not null && !modelReferences.Any(m => PathComparer.Equals(m.Reference.FullPath, baseFullPath)))
            {
                inputs = inputs.Append((Entry: new RecipeModelEntry { Model = recipe.BaseModel!, Location = recipe.BaseModelLocation! }, Reference: baseReference)).ToList();
            }
            if (inputs.Count == 0)
            {
                throw RecipeParser.Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, recipe.Models[0].Location,
                    "lists only the base model; there is nothing to merge into it.");
            }
            models = inputs.Select(i => (i.Entry, i.Reference, Checkpoint: Open(i.Reference))).ToList();
            foreach (var model in models) CheckArchitecture(@base, baseReference ?? modelReferences[0].Reference, model.Checkpoint, model.Reference);
        }
        var adapters = models.Select(m => m.Entry.Lora is null ? null : OpenAdapter(m.Entry, m.Reference, baseFullPath, batch.BaseDirectory)).ToList();

        var usesDefaultSeed = false;
        var vectors = new List<TaskVector>();
        var tokenizer = TokenizerChoiceOf(recipe, batchPlan, index, opened);
        var aligned = TaskVector.FromModels(@base, models.Select(m => m.Checkpoint).ToList(), tokenizer,
            models.Select(m => m.Reference.ProducedBy is { } p ? batch.Recipes[p].DisplayName : null).ToList());
        var weights = new List<TensorParameter>();
        var keepRatios = new List<TensorParameter>();
        for (var i = 0; i < models.Count; i++)
        {
            var (entry, reference, checkpoint) = models[i];
            var resolved = ResolveModelParameters(recipe, entry, i, batchPlan.Options.DefaultSeed, warnings);
            usesDefaultSeed |= resolved.UsesDefaultSeed;
            // An adapter entry's model is the base: its δ is the adapter's; a full model's is its vocabulary-aligned vector.
            var vector = adapters[i] is { } adapter ? FromAdapter(@base, aligned[i], adapter, entry) : aligned[i];
            vector = WithDropStep(vector, WithGradientRule(resolved, recipe.GradientOutsideLayers), form, recipe, entry);
            vectors.Add(vector);
            weights.Add(WithGradientRule(resolved.Weight, recipe.GradientOutsideLayers));
            keepRatios.Add(WithGradientRule(resolved.KeepRatio, recipe.GradientOutsideLayers));
        }

        var lambda = form.HasLambda ? recipe.Parameters.Lambda ?? 1.0 : 1.0;
        var ties = form.Method == MergeMethod.Ties;
        if (form.Method == MergeMethod.Linear && !form.NeedsBase && !normalize) CheckUnnormalizedLinear(recipe, @base, weights);
        if (normalize && form.Accepts("normalize")) CheckWeightSums(recipe, @base, weights);
        if (ties && !form.DensityIsDareKeep && !form.PrunesEachInput && !models.Any(m => m.Entry.Parameters.DropRate is not null) && recipe.Parameters.DropRate is null &&
            (recipe.Parameters.Rescale ?? DareRescale.None) != DareRescale.None)
        {
            throw RecipeParser.Error(DareErrorId.RecipeUnsupported, DareErrorKind.NotImplemented, recipe.Parameters.Locations["rescale"],
                "rescaling after TIES's magnitude trim is not supported (mergekit's ties rescales the kept entries; Dare keeps them as they are). Remove rescale or set it to false.");
        }

        TaskVector merged;
        if (form.Method is PassthroughMethod)
        {
            // The model (or stack) is its own base; its scale comes per model or per slice.
            merged = PassthroughMethod.Plan(@base, PassthroughScale(recipe, @base, models) is { } scale ? WithGradientRule(scale, recipe.GradientOutsideLayers) : null, recipe.Name);
        }
        else if (vectors.Count == 1 && form.Method == MergeMethod.Linear && lambda == 1.0 && weights[0] is ConstantParameter { Value: 1.0 })
        {
            // One model at weight 1 is its own task vector; merging it would compute the same values.
            merged = vectors[0];
        }
        else
        {
            var options = new MergeOptions(form.Method, weights, normalize, lambda,
                ties ? keepRatios : null, recipe.Parameters.SignMethod ?? SignMethod.Sum)
            {
                Settings = MethodSettings(recipe).ToDictionary(e => e.Key, e => WithGradientRule(e.Value, recipe.GradientOutsideLayers)),
                WholeWeights = form.BaseJoinsModels || (form.BaseIsOptional && baseReference is null),
            };
            merged = TaskVector.Combine(vectors, options, recipe.Name);
        }

        var isLast = index == batch.Recipes.Count - 1;
        var outputDType = (isLast ? batchPlan.Options.OutputDType : null) ?? recipe.OutputDType;
        var shardSize = (isLast ? batchPlan.Options.MaxShardSize : null) ?? recipe.MaxShardSize ?? CheckpointWriteOptions.DefaultMaxShardSize;
        var device = batchPlan.Options.Device ?? recipe.Device;
        var export = new ExportOptions
        {
            Device = device,
            Destination = batchPlan.Outputs[index],
            OutputDType = outputDType,
            MaxShardSize = shardSize,
            DeltaOnly = recipe.DeltaOnly,
            Force = batchPlan.Options.Force,
            AllowNonFinite = batchPlan.Options.AllowNonFinite,
            RecipeYaml = RecipeWriter.ToYaml(merged, outputDType, shardSize == CheckpointWriteOptions.DefaultMaxShardSize ? null : shardSize, recipe.DeltaOnly, device),
            ModelReferences = modelReferences.Select(m => m.Reference).Concat(sliceReferences.SelectMany(s => s.Select(x => x.Reference))).Append(baseReference).OfType<ModelReference>()
                .Where(r => opened.ContainsKey(r.FullPath)).GroupBy(r => opened[r.FullPath].Path).ToDictionary(g => g.Key, g => g.First().Text),
            Partition = isLast ? batchPlan.Options.Partition : null,
        };
        var readsOutputsOf = modelReferences.Select(m => m.Reference).Concat(sliceReferences.SelectMany(s => s.Select(x => x.Reference))).Append(baseReference)
            .Where(r => r?.ProducedBy is not null).Select(r => r!.ProducedBy!.Value).Distinct().Order().ToList();
        return new MergePlan
        {
            Recipe = recipe,
            Vector = merged,
            Export = export,
            Summary = RecipePlanSummary.For(merged, export, baseFullPath,
                models.Select((m, i) => adapters[i] is { } a ? (a.Name, a.Path)
                    : (m.Reference.ProducedBy is { } p ? batch.Recipes[p].DisplayName : m.Checkpoint.Name, m.Reference.FullPath)).ToList(),
                readsOutputsOf.Select(r => batch.Recipes[r].DisplayName).ToList()),
            ReadsOutputsOf = readsOutputsOf,
            UsesDefaultSeed = usesDefaultSeed,
            Warnings = warnings,
            Guidance = Guidance(recipe, models.Select(m => m.Entry).ToList(), merged),
        };
    }

    private sealed record ResolvedModel(TensorParameter Weight, TensorParameter KeepRatio, DareOptions? Dare, bool UsesDefaultSeed)
    {
        public DellaOptions? Della { get; init; }
        public BreadcrumbsOptions? Breadcrumbs { get; init; }
    }

    /// <summary>One model's weight, keep ratio and DARE step: its own setting, else the global one, else the method default.</summary>
    private static ResolvedModel ResolveModelParameters(MergeRecipe recipe, RecipeModelEntry entry, int position, long defaultSeed, List<string> warnings)
    {
        var own = entry.Parameters;
        var global = recipe.Parameters;

        var globalWeight = global.Weight?.ToParameter(null);
        var weight = own.Weight is null ? globalWeight : own.Weight.ToParameter(globalWeight);
        // A method without weights (nearswap) takes each model as it is.
        if (!recipe.Method.Method.Parameters.Contains(CommonParameters.Weight)) weight = 1.0;
        if (weight is null)
        {
            throw RecipeParser.Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, own.Weight?.Location ?? entry.Location,
                own.Weight is null && global.Weight is null
                    ? "has no weight. Give it 'parameters: { weight: <number> }' or a global 'parameters: { weight: ... }' (mergekit requires a weight too)."
                    : "gives no weight for tensors that match none of its filters: add a fallback entry without a filter ('- value: <number>') or a global weight.");
        }
        weight = Flatten(weight);

        // Ties: density is the magnitude keep ratio and drop_rate an extra DARE step before it. The dare methods:
        // density is DARE's keep fraction (drop rate = 1 − density) and drop_rate says the same directly.
        var dareMethod = recipe.Method.DensityIsDareKeep;
        var dellaMethod = recipe.Method.DensityIsDellaKeep;
        var breadcrumbsMethod = recipe.Method.DensityIsBreadcrumbsKeep;
        TensorParameter keepRatio = !dareMethod && !recipe.Method.PrunesEachInput && recipe.Method.Method.Parameters.Contains(TiesMethod.Density)
            ? Setting(own.Density, global.Density, (double)TiesMethod.Density.Default!) : 1.0;
        var ownDrop = own.DropRate ?? (dareMethod ? own.Density?.Map(Complement) : null);
        var globalDrop = global.DropRate ?? (dareMethod ? global.Density?.Map(Complement) : null);
        var dropRate = ownDrop is null && globalDrop is null ? null : Setting(ownDrop, globalDrop, 0.0);
        if (dropRate is ConstantParameter { Value: 0 }) dropRate = null;

        DareOptions? dare = null;
        DellaOptions? della = null;
        BreadcrumbsOptions? breadcrumbs = null;
        var usesDefaultSeed = false;
        var rescale = own.Rescale ?? global.Rescale ?? DareRescale.InverseKeep;
        // q belongs to rescale: q; a q without it is refused when the step is added (TaskVector.WithDare, WithDella).
        var q = own.RescaleQ ?? global.RescaleQ ?? 0;
        if (dellaMethod)
        {
            // della, della_linear: density and epsilon are MagPrune's; density 1 keeps everything (mergekit returns δ as it is).
            var density = Setting(own.Density, global.Density, (double)DellaDropParameters.Density.Default!);
            if (density is not ConstantParameter { Value: >= 1 })
            {
                var seed = own.RandomSeed ?? recipe.RandomSeed;
                usesDefaultSeed = seed is null;
                della = new DellaOptions(density, Setting(own.Setting("epsilon"), global.Setting("epsilon"), (double)DellaDropParameters.Epsilon.Default!),
                    seed ?? defaultSeed, own.MaskStream ?? position, rescale) { Q = q };
            }
        }
        else if (breadcrumbsMethod)
        {
            // breadcrumbs, breadcrumbs_ties: density and gamma are the kept band's; density 1 keeps everything (mergekit returns δ as it is).
            var density = Setting(own.Density, global.Density, (double)BreadcrumbsParameters.Density.Default!);
            if (density is not ConstantParameter { Value: >= 1 })
            {
                breadcrumbs = new BreadcrumbsOptions(density, Setting(own.Setting("gamma"), global.Setting("gamma"), (double)BreadcrumbsParameters.Gamma.Default!));
            }
        }
        else if (dropRate is not null)
        {
            var seed = own.RandomSeed ?? recipe.RandomSeed;
            usesDefaultSeed = seed is null;
            dare = new DareOptions(dropRate, seed ?? defaultSeed, own.MaskStream ?? position, rescale) { Q = q };
        }
        if (dare is null && della is null && !breadcrumbsMethod)
        {
            foreach (var key in new[] { "rescale", "rescale_q", "random_seed", "mask_stream" }.Where(own.Has))
            {
                warnings.Add($"{own.Locations[key]}: has no effect: this model has no {(dellaMethod ? "DELLA step (density 1)" : $"DARE step (no drop_rate{(dareMethod ? " and density 1" : "")})")}.");
            }
        }
        return new ResolvedModel(weight, keepRatio, dare, usesDefaultSeed) { Della = della, Breadcrumbs = breadcrumbs };
    }

    /// <summary>A model's setting; tensors its filters miss take the global setting, then the method default.</summary>
    private static TensorParameter Setting(RecipeSetting? own, RecipeSetting? global, double methodDefault)
    {
        TensorParameter fallback = methodDefault;
        var outer = global?.ToParameter(fallback) ?? fallback;
        return Flatten(own?.ToParameter(outer) ?? outer);
    }

    /// <summary>Rules whose fallback is itself rules become one list (first match still wins), so the recipe writes back flat.</summary>
    private static TensorParameter Flatten(TensorParameter parameter) => parameter switch
    {
        RuleParameter { Default: RuleParameter inner } outer => Flatten(new RuleParameter(outer.Rules.Concat(inner.Rules).ToList(), inner.Default)),
        _ => parameter,
    };

    private static double Complement(double density) => 1.0 - density;

    /// <summary>
    /// mergekit's linear with normalize: false is Σ wᵢ·θᵢ, which equals θ_base + Σ wᵢ·δᵢ only where the weights sum to 1;
    /// elsewhere it also scales the base, which no task-vector merge expresses. Accepted only where the two agree.
    /// </summary>
    private static void CheckUnnormalizedLinear(MergeRecipe recipe, Checkpoint @base, IReadOnlyList<TensorParameter> weights)
    {
        var layout = ModelLayout.Of(@base);
        foreach (var tensor in @base.Tensors.Where(t => t.DType.IsMergeable()))
        {
            var position = layout.Position(tensor.Name);
            var sum = weights.Sum(w => w.Resolve(position));
            if (Math.Abs(sum - 1) > 1e-9)
            {
                throw RecipeParser.Error(DareErrorId.RecipeUnsupported, DareErrorKind.NotImplemented, recipe.Parameters.Locations.GetValueOrDefault("normalize") ?? recipe.MethodLocation,
                    $"linear with normalize: false computes Σ wᵢ·θᵢ, which scales the base model by Σ wᵢ = {sum.ToString(System.Globalization.CultureInfo.InvariantCulture)} at '{tensor.Name}'. " +
                    "Dare merges task vectors, so it supports this only where the weights sum to 1. Use task_arithmetic for base + Σ wᵢ·δᵢ, or normalize: true.");
            }
        }
    }

    /// <summary>Every gradient inside <paramref name="parameter"/> with the recipe's rule for tensors outside the layers.</summary>
    private static TensorParameter WithGradientRule(TensorParameter parameter, GradientOutsideLayers rule) => parameter switch
    {
        GradientParameter g => g with { OutsideLayers = rule },
        RuleParameter r => new RuleParameter(r.Rules.Select(x => x with { Value = WithGradientRule(x.Value, rule) }).ToList(), WithGradientRule(r.Default, rule)),
        _ => parameter,
    };

    /// <summary>A model's drop step (DARE, DELLA or breadcrumbs) with its gradients following the recipe's rule outside layers.</summary>
    private static ResolvedModel WithGradientRule(ResolvedModel model, GradientOutsideLayers rule) => model with
    {
        Dare = model.Dare is { } dare ? dare with { DropRate = WithGradientRule(dare.DropRate, rule) } : null,
        Della = model.Della is { } della ? della with { Density = WithGradientRule(della.Density, rule), Epsilon = WithGradientRule(della.Epsilon, rule) } : null,
        Breadcrumbs = model.Breadcrumbs is { } crumbs ? crumbs with { Density = WithGradientRule(crumbs.Density, rule), Gamma = WithGradientRule(crumbs.Gamma, rule) } : null,
    };
}
