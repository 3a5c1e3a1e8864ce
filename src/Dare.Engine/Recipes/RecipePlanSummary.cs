using System.Globalization;
using System.Text;
using Dare.Engine.Merge;
using Dare.Engine.Safetensors;

namespace Dare.Engine.Recipes;

/// <summary>How many floating-point tensors of one model take one value of one parameter.</summary>
public sealed record ParameterUsage(string Model, string Parameter, double Value, int TensorCount)
{
    public override string ToString() => $"{Model}: {Parameter} {Value.ToString("R", CultureInfo.InvariantCulture)} x {TensorCount} tensor(s)";
}

/// <summary>What a plan will do, for -WhatIf and -Verbose: inputs, per-tensor parameter values, output size and memory.</summary>
public sealed class RecipePlanSummary
{
    public required string Name { get; init; }
    public required string Method { get; init; }
    public required string BaseModel { get; init; }
    public required IReadOnlyList<string> Models { get; init; }
    public required IReadOnlyList<ParameterUsage> Parameters { get; init; }
    public required string Destination { get; init; }
    public required int TensorCount { get; init; }
    public required long OutputBytes { get; init; }
    public required int ShardCount { get; init; }

    /// <summary>
    /// Estimated peak working memory of the export: the executor holds one tensor (or one chunk of a huge tensor)
    /// at a time as float32 base + per model (its own read plus a float32 delta) + merged result + output copy.
    /// </summary>
    public required long PeakMemoryBytes { get; init; }

    /// <summary>Earlier recipes of the batch whose outputs this merge reads.</summary>
    public IReadOnlyList<string> ReadsOutputsOf { get; init; } = Array.Empty<string>();

    /// <param name="basePath">The base as the recipe names it (an earlier output of the batch may not exist yet).</param>
    /// <param name="models">Name and path of each merged model, likewise.</param>
    internal static RecipePlanSummary For(TaskVector vector, ExportOptions export, string basePath, IReadOnlyList<(string Name, string Path)> models, IReadOnlyList<string> readsOutputsOf)
    {
        var inputs = vector.IsMerged ? vector.Inputs : new[] { vector };
        var floats = vector.Base.Tensors.Where(t => t.DType.IsMergeable()).ToList();
        var layout = ModelLayout.Of(vector.Base);
        var positions = floats.Select(t => layout.Position(t.Name)).ToList();
        var usage = new List<ParameterUsage>();
        void Count(string model, string parameter, TensorParameter value) =>
            usage.AddRange(positions.GroupBy(value.Resolve).OrderBy(g => g.Key).Select(g => new ParameterUsage(model, parameter, g.Key, g.Count())));
        for (var i = 0; i < inputs.Count; i++)
        {
            var name = models[i].Name;
            if (vector.Merge is { } merge)
            {
                foreach (var spec in merge.Method.Parameters.Where(p => p is { Kind: ParameterKind.Number, Scope: not ParameterScope.Merge }))
                {
                    if (merge.Method.ModelValue(merge, spec.Key, i) is { } value) Count(name, spec.Label, value);
                }
            }
            if (inputs[i].Dare is { } dare) Count(name, DareDropParameters.DropRate.Label, dare.DropRate);
            if (inputs[i].Della is { } della)
            {
                Count(name, "DELLA density", della.Density);
                Count(name, "DELLA epsilon", della.Epsilon);
            }
            if (inputs[i].Breadcrumbs is { } breadcrumbs)
            {
                Count(name, "breadcrumbs density", breadcrumbs.Density);
                Count(name, "breadcrumbs gamma", breadcrumbs.Gamma);
            }
        }
        if (vector.Merge is { } merged)
        {
            foreach (var (key, value) in merged.Settings) Count("all models", merged.Method.Parameter(key).Label, value);
        }

        var written = export.DeltaOnly ? floats : vector.Base.Tensors.ToList();
        long SizeOf(TensorInfo t) => t.DType.IsMergeable() && export.OutputDType is { } d ? t.ElementCount * d.ElementSize() : t.ByteLength;
        var shards = 1;
        long shardBytes = 0;
        foreach (var size in written.Select(SizeOf))
        {
            if (shardBytes > 0 && shardBytes + size > export.MaxShardSize)
            {
                shards++;
                shardBytes = 0;
            }
            shardBytes += size;
        }
        var peak = written.Select(t =>
        {
            if (!t.DType.IsMergeable()) return t.ByteLength;
            var chunk = Math.Min(t.ElementCount, MergeExecutor.DefaultChunkElements);
            // An adapter's δ is computed in float32 (and a float64 row block about the chunk's size).
            var perModel = inputs.Sum(input => (input.FineTuned is { } model ? model.Find(t.Name)?.DType.ElementSize() ?? 0 : 8) + 4L);
            var output = export.OutputDType?.ElementSize() ?? t.DType.ElementSize();
            return chunk * (4 + perModel + 4 + output);
        }).DefaultIfEmpty(0).Max();

        return new RecipePlanSummary
        {
            Name = vector.Name,
            Method = vector.Steps[^1],
            BaseModel = basePath,
            Models = models.Select(m => m.Path).ToList(),
            Parameters = usage,
            Destination = export.Destination,
            TensorCount = written.Count,
            OutputBytes = written.Sum(SizeOf),
            ShardCount = shards,
            PeakMemoryBytes = peak,
            ReadsOutputsOf = readsOutputsOf,
        };
    }

    /// <summary>The plan as lines of text.</summary>
    public string Describe()
    {
        var text = new StringBuilder();
        text.AppendLine($"Merge '{Name}' into '{Destination}'");
        text.AppendLine($"  base:  {BaseModel}");
        foreach (var model in Models) text.AppendLine($"  model: {model}");
        if (ReadsOutputsOf.Count > 0) text.AppendLine($"  (reads the output of {string.Join(", ", ReadsOutputsOf.Select(r => $"'{r}'"))}, written earlier in this batch)");
        text.AppendLine($"  steps: {Method}");
        foreach (var group in Parameters.GroupBy(p => (p.Model, p.Parameter)))
        {
            var values = string.Join(", ", group.Select(p => $"{p.Value.ToString("0.####", CultureInfo.InvariantCulture)} x {p.TensorCount}"));
            text.AppendLine($"  {group.Key.Model} {group.Key.Parameter}: {values} tensor(s)");
        }
        text.AppendLine($"  output: {TensorCount} tensors, ~{ByteSize.Format(OutputBytes)} in {ShardCount} shard(s); estimated peak working memory ~{ByteSize.Format(PeakMemoryBytes)}");
        return text.ToString().TrimEnd();
    }

    public override string ToString() => Describe();
}
