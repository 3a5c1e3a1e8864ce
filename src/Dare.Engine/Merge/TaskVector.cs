using System.Globalization;
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
}

public enum SignMethod { Sum, Count }

public enum MergeMethod { Linear, Ties }

/// <summary>DARE applied to one task vector. The mask is a pure function of (Seed, Stream, tensor name, element index).</summary>
public sealed record DareOptions(TensorParameter DropRate, long Seed, int Stream, DareRescale Rescale = DareRescale.InverseKeep);

/// <summary>How several task vectors are combined.</summary>
public sealed record MergeOptions(
    MergeMethod Method,
    IReadOnlyList<TensorParameter> Weights,
    bool Normalize,
    double Lambda = 1.0,
    IReadOnlyList<TensorParameter>? KeepRatios = null,
    SignMethod SignMethod = SignMethod.Sum);

/// <summary>
/// A lazy plan for a task vector (fine-tuned − base): either one fine-tuned model with an optional DARE step, or
/// a merge of such vectors. Immutable; nothing is computed until a <see cref="MergeExecutor"/> runs it.
/// </summary>
public sealed class TaskVector
{
    private TaskVector(string name, Checkpoint @base, Checkpoint? fineTuned, DareOptions? dare, MergeOptions? merge,
        IReadOnlyList<TaskVector> inputs, IReadOnlyList<string> missingTensors)
    {
        Name = name;
        Base = @base;
        FineTuned = fineTuned;
        Dare = dare;
        Merge = merge;
        Inputs = SummarisedList.Joined(inputs);
        MissingTensors = SummarisedList.Joined(missingTensors);
    }

    public string Name { get; }
    public Checkpoint Base { get; }

    /// <summary>The fine-tuned model (null for a merged vector).</summary>
    public Checkpoint? FineTuned { get; }

    public DareOptions? Dare { get; }
    public MergeOptions? Merge { get; }

    /// <summary>The task vectors a merged vector combines (empty for a single model).</summary>
    public IReadOnlyList<TaskVector> Inputs { get; }

    /// <summary>Base tensors the fine-tuned model lacks; they contribute a zero delta.</summary>
    public IReadOnlyList<string> MissingTensors { get; }

    public bool IsMerged => Merge is not null;

    /// <summary>The fine-tuned models this vector draws on.</summary>
    public IReadOnlyList<Checkpoint> Sources => SummarisedList.Joined<Checkpoint>(IsMerged ? Inputs.Select(i => i.FineTuned!).ToList() : new[] { FineTuned! });

    public string Source => string.Join(", ", Sources.Select(s => s.Name));
    public int TensorCount => Base.TensorCount;
    public long ParameterCount => Base.Tensors.Where(t => t.DType.IsMergeable()).Sum(t => t.ElementCount);

    /// <summary>Human-readable list of the steps applied so far.</summary>
    public IReadOnlyList<string> Steps
    {
        get
        {
            if (!IsMerged)
            {
                var steps = new List<string> { $"TaskVector({FineTuned!.Name} - {Base.Name})" };
                if (Dare is { } d) steps.Add($"DareDrop(p={d.DropRate}, seed={d.Seed}, stream={d.Stream}, rescale={d.Rescale})");
                return SummarisedList.Joined(steps);
            }
            var m = Merge!;
            var detail = m.Method == MergeMethod.Ties
                ? $"keep={string.Join("/", m.KeepRatios!.Select(k => k.ToString()))}, sign={m.SignMethod}, "
                : "";
            return SummarisedList.Joined(Inputs.SelectMany(i => i.Steps)
                .Append($"Merge{m.Method}({detail}weights={string.Join("/", m.Weights)}, normalize={m.Normalize}, lambda={m.Lambda.ToString(CultureInfo.InvariantCulture)})"));
        }
    }

    public override string ToString() => Name;

    /// <summary>
    /// δ = fine-tuned − base. Checks every shared tensor up front: a shape mismatch, or a dtype mismatch involving a
    /// non-float tensor, is an error naming the tensor; tensors missing from the fine-tuned model are recorded.
    /// </summary>
    public static TaskVector FromModels(Checkpoint @base, Checkpoint fineTuned, string? name = null)
    {
        var missing = new List<string>();
        foreach (var baseTensor in @base.Tensors)
        {
            var tuned = fineTuned.Find(baseTensor.Name);
            if (tuned is null)
            {
                missing.Add(baseTensor.Name);
                continue;
            }
            if (!tuned.Shape.SequenceEqual(baseTensor.Shape))
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
        return new TaskVector(name ?? fineTuned.Name, @base, fineTuned, null, null, Array.Empty<TaskVector>(), missing);
    }

    /// <summary>A new vector with DARE added (this one is unchanged).</summary>
    public TaskVector WithDare(DareOptions dare)
    {
        if (IsMerged)
        {
            throw new DareException(DareErrorId.TaskVectorInvalid, DareErrorKind.InvalidArgument,
                $"'{Name}' is already merged; apply DARE to each task vector before merging them.");
        }
        if (Dare is not null)
        {
            throw new DareException(DareErrorId.TaskVectorInvalid, DareErrorKind.InvalidArgument,
                $"'{Name}' already has a DARE step (p={Dare.DropRate}); start again from the task vector without it.");
        }
        foreach (var rate in dare.DropRate.PossibleValues) DareMask.Threshold(rate);
        return new TaskVector(Name, Base, FineTuned, dare, null, Inputs, MissingTensors);
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
        if (merge.Weights.Count != inputs.Count)
        {
            throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument,
                $"{merge.Weights.Count} weights were given for {inputs.Count} task vectors; give one weight per task vector.");
        }
        if (merge.Method == MergeMethod.Ties)
        {
            if (merge.KeepRatios is null || merge.KeepRatios.Count != inputs.Count)
            {
                throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument, "TIES needs one keep ratio (density) per task vector.");
            }
            var invalid = merge.KeepRatios.SelectMany(k => k.PossibleValues).Where(k => !(k > 0 && k <= 1)).ToList();
            if (invalid.Count > 0)
            {
                throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument, $"The keep ratio (density) must satisfy 0 < k <= 1, not {invalid[0]}.");
            }
        }
        if (merge.Normalize && merge.Weights.SelectMany(w => w.PossibleValues).Any(w => w < 0))
        {
            throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument,
                "Negative weights cannot be normalized (the sum of weights could be zero or flip the sign); use -Normalize:$false.");
        }
        if (double.IsNaN(merge.Lambda) || double.IsInfinity(merge.Lambda))
        {
            throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument, $"Lambda must be a finite number, not {merge.Lambda}.");
        }
        var mergedName = name ?? $"{merge.Method.ToString().ToLowerInvariant()}({string.Join("+", inputs.Select(i => i.Name))})";
        return new TaskVector(mergedName, @base, null, null, merge, inputs, Array.Empty<string>());
    }
}
