using System.Diagnostics;
using Dare.Engine.Charts;
using Dare.Engine.Merge;
using Dare.Engine.Recipes;
using Dare.Engine.Safetensors;

namespace Dare.Engine.Sweeps;

/// <summary>What to sweep: the models, the grid of drop rates (and keep ratios for dare_ties), and where the best goes.</summary>
public sealed record SweepOptions
{
    /// <summary>The methods a sweep runs: DARE on every model, then TIES sign election (with an optional trim) or a weighted average.</summary>
    public static readonly IReadOnlyList<string> Methods = new[] { "dare_ties", "dare_linear" };

    public required Checkpoint Base { get; init; }
    public required IReadOnlyList<Checkpoint> Models { get; init; }
    public required IReadOnlyList<double> DropRates { get; init; }

    /// <summary>TIES keep ratios for dare_ties (default: 1, mergekit's dare_ties, which does not trim).</summary>
    public IReadOnlyList<double>? KeepRatios { get; init; }

    public string Method { get; init; } = "dare_ties";

    /// <summary>The one seed of every variant: variants differ only in their parameters, model i always draws mask stream i.</summary>
    public long Seed { get; init; }

    /// <summary>Higher scores are better (accuracy); the default, lower is better, fits perplexity and loss.</summary>
    public bool Maximize { get; init; }

    /// <summary>Where the best variant's model is moved; null removes every variant.</summary>
    public string? KeepBest { get; init; }

    /// <summary>Replace an existing model export at <see cref="KeepBest"/>.</summary>
    public bool Force { get; init; }

    public string? CurrentLocation { get; init; }
    public SafetensorsDType? OutputDType { get; init; }

    /// <summary>Where the score-versus-drop-rate chart goes (.png or .svg), or null.</summary>
    public string? ChartPath { get; init; }

    /// <summary>Where the variants' merge math runs (null: the SIMD kernels); recorded in each variant's dare_recipe.yml.</summary>
    public ComputeDevice? Device { get; init; }
}

/// <summary>
/// Invoke-DareSweep's engine: merges each variant through <see cref="MergeExecutor.Export"/> (the path of
/// Export-Safetensors) into its own folder of a private working folder, scores it with the caller's evaluator, keeps the
/// best and removes the rest. The working folder is a Dare temporary (.dare-XXXXXXXX with an owner record) beside
/// -KeepBest, so keeping the best is one rename on the same file system, and a sweep killed outright is reclaimed by
/// the next export there. Disposing removes it, also after a failure or Ctrl+C.
/// </summary>
public sealed class DareSweep : IDisposable
{
    private readonly SweepOptions _options;
    private readonly IMergeObserver? _observer;
    private readonly CancellationToken _cancellation;
    private readonly List<SweepResult> _results = new();
    private readonly string? _keepTarget;
    private readonly bool _fillInPlace;
    private string? _workspace;
    private string? _bestFolder;

    public DareSweep(SweepOptions options, IMergeObserver? observer = null, CancellationToken cancellation = default)
    {
        Check(options);
        _options = options;
        _observer = observer;
        _cancellation = cancellation;
        if (options.ChartPath is { } chart) LineChart.CheckPath(chart);
        options.Device?.EnsureAvailable();
        if (options.KeepBest is { } keep)
        {
            OutputFolder.Check(keep, options.Force, ProtectedPaths(options), options.CurrentLocation);
            (_keepTarget, _, _fillInPlace) = OutputFolder.Locate(Path.GetFullPath(keep));
        }
        Variants = VariantsOf(options);
    }

    /// <summary>The grid, in order: every keep ratio for each drop rate.</summary>
    public IReadOnlyList<SweepVariant> Variants { get; }

    /// <summary>Every variant run so far.</summary>
    public IReadOnlyList<SweepResult> Results => _results;

    /// <summary>The best scored variant so far (lowest score, or highest with Maximize); null when none succeeded.</summary>
    public SweepResult? Best
    {
        get
        {
            var scored = _results.Where(r => r.Succeeded && double.IsFinite(r.Score!.Value)).ToList();
            if (scored.Count == 0) return null;
            return _options.Maximize ? scored.MaxBy(r => r.Score!.Value) : scored.MinBy(r => r.Score!.Value);
        }
    }

    public static IReadOnlyList<SweepVariant> VariantsOf(SweepOptions options)
    {
        var keeps = options.Method == "dare_ties" ? (options.KeepRatios is { Count: > 0 } k ? k.Select(x => (double?)x).ToList() : new List<double?> { 1.0 }) : new List<double?> { null };
        return options.DropRates.SelectMany(p => keeps.Select(k => (p, k))).Select((v, i) => new SweepVariant(i, options.Method, v.p, v.k, options.Seed)).ToList();
    }

    /// <summary>
    /// Runs the variants <paramref name="confirm"/> accepts, one at a time: merge, then <paramref name="evaluate"/>(model
    /// folder), then the folder is removed unless it is the best so far. A merge or evaluator failure is that variant's
    /// result (with its error); cancellation stops the sweep. Results are yielded as each variant ends.
    /// </summary>
    public IEnumerable<SweepResult> Run(Func<SweepVariant, bool> confirm, Func<string, double> evaluate, string scoreName = "score")
    {
        foreach (var variant in Variants)
        {
            _cancellation.ThrowIfCancellationRequested();
            if (!confirm(variant)) continue;
            var result = new SweepResult(variant) { ScoreName = scoreName };
            var folder = Path.Combine(Workspace(), $"variant-{variant.Index:D3}");
            var clock = Stopwatch.StartNew();
            try
            {
                var vector = VectorOf(variant);
                var export = new MergeExecutor(_observer, _cancellation).Export(vector, new ExportOptions
                {
                    Destination = folder,
                    OutputDType = _options.OutputDType,
                    CurrentLocation = _options.CurrentLocation,
                    RecipeYaml = RecipeWriter.ToYaml(vector, _options.OutputDType, device: _options.Device),
                    Device = _options.Device,
                });
                result.RealisedDropRate = export.RealisedDropRate;
                result.MergeTime = clock.Elapsed;
                clock.Restart();
                try
                {
                    result.Score = evaluate(folder);
                }
                catch (Exception ex) when (!_cancellation.IsCancellationRequested && ex is not OperationCanceledException and not DareException)
                {
                    throw new DareException(DareErrorId.SweepEvaluatorFailed, DareErrorKind.InvalidData,
                        $"The evaluator failed on variant {variant.Label} ('{folder}'): {ex.Message}", ex) { FilePath = folder };
                }
                result.EvaluationTime = clock.Elapsed;
                if (!double.IsFinite(result.Score!.Value)) _observer?.Warning($"The evaluator scored variant {variant.Label} {result.Score}; it cannot be the best.");
            }
            catch (Exception ex) when (!_cancellation.IsCancellationRequested && ex is not OperationCanceledException)
            {
                if (result.MergeTime == TimeSpan.Zero) result.MergeTime = clock.Elapsed;
                else result.EvaluationTime = clock.Elapsed;
                result.Score = null;
                result.Error = ex.Message;
                result.ErrorId = ex is DareException dare ? dare.ErrorId.ToString() : "UnexpectedError";
                result.Exception = ex;
            }
            _results.Add(result);
            KeepOnlyBest(folder);
            yield return result;
        }
    }

    /// <summary>
    /// Ends the sweep: marks the best result, moves its model to KeepBest (checked again, then placed atomically) and draws
    /// the chart, then removes the working folder. Returns the best result, or null when no variant succeeded (then
    /// KeepBest is SweepNoSuccessfulVariant).
    /// </summary>
    public SweepResult? Finish()
    {
        var best = Best;
        if (best is not null) best.IsBest = true;
        if (_options.ChartPath is { } chart && _results.Any(r => r.Succeeded)) DrawChart(chart);
        if (_options.KeepBest is { } keep)
        {
            if (best is null || _bestFolder is null)
            {
                throw new DareException(DareErrorId.SweepNoSuccessfulVariant, DareErrorKind.InvalidData,
                    $"No variant of the sweep was merged and scored, so nothing was kept at '{keep}' ({_results.Count} run, {_results.Count(r => !r.Succeeded)} failed).") { FilePath = keep };
            }
            OutputFolder.Check(keep, _options.Force, ProtectedPaths(_options), _options.CurrentLocation);
            OutputFolder.Place(_bestFolder, _keepTarget!, _fillInPlace, _observer is null ? null : _observer.Warning);
            _bestFolder = null;
            best.KeptPath = Path.GetFullPath(keep);
        }
        Dispose();
        return best;
    }

    /// <summary>Score against drop rate, one line per keep ratio (one line for dare_linear).</summary>
    public void DrawChart(string path)
    {
        var scoreName = _results.FirstOrDefault()?.ScoreName ?? "score";
        var series = _results.Where(r => r.Succeeded).GroupBy(r => r.KeepRatio).OrderBy(g => g.Key)
            .Select(g =>
            {
                var points = g.OrderBy(r => r.DropRate).ToList();
                var label = g.Key is { } k ? $"{_options.Method}, keep ratio {k:0.###}" : _options.Method;
                return new ChartSeries(label, points.Select(r => r.DropRate).ToList(), points.Select(r => r.Score!.Value).ToList());
            }).ToList();
        var better = _options.Maximize ? "higher is better" : "lower is better";
        new LineChart($"{scoreName} by DARE drop rate ({better})", "drop rate p", scoreName, series).Save(path);
    }

    /// <summary>The task vector of one variant: DARE(p, seed, stream i) on model i, then the method.</summary>
    public TaskVector VectorOf(SweepVariant variant)
    {
        var vectors = _options.Models.Select((model, i) => TaskVector.FromModels(_options.Base, model).WithDare(new DareOptions(variant.DropRate, variant.Seed, i))).ToList();
        var weights = vectors.Select(_ => (TensorParameter)1.0).ToList();
        var merge = variant.Method == "dare_ties"
            ? new MergeOptions(MergeMethods.Find("ties")!, weights, Normalize: true, KeepRatios: vectors.Select(_ => (TensorParameter)variant.KeepRatio!.Value).ToList())
            : new MergeOptions(MergeMethods.Find("linear")!, weights, Normalize: true);
        return TaskVector.Combine(vectors, merge, $"sweep-{variant.Index:D3}");
    }

    private static void Check(SweepOptions options)
    {
        if (!SweepOptions.Methods.Contains(options.Method))
        {
            throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument,
                $"A sweep runs {string.Join(" or ", SweepOptions.Methods)}, not '{options.Method}'.");
        }
        if (options.Models.Count == 0) throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument, "A sweep needs at least one fine-tuned model.");
        if (options.DropRates.Count == 0) throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument, "A sweep needs at least one drop rate.");
        foreach (var p in options.DropRates) DareDropParameters.DropRate.Check(p, "DropRate");
        if (options.KeepRatios is { Count: > 0 } keeps)
        {
            if (options.Method != "dare_ties")
            {
                throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument,
                    $"-KeepRatio is the TIES trim of dare_ties; {options.Method} has none. Leave it out or use -Method dare_ties.");
            }
            var bad = keeps.FirstOrDefault(k => !(k > 0 && k <= 1), double.NaN);
            if (!double.IsNaN(bad) || keeps.Any(double.IsNaN))
            {
                throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument, $"The keep ratio must satisfy 0 < k <= 1, not {bad}.");
            }
        }
        var duplicate = options.DropRates.GroupBy(p => p).FirstOrDefault(g => g.Count() > 1);
        if (duplicate is not null) throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument, $"The drop rate {duplicate.Key} is given twice.");
    }

    private static IReadOnlyList<string> ProtectedPaths(SweepOptions options) =>
        OutputFolder.InputPathsOf(options.Models.Prepend(options.Base));

    /// <summary>The working folder, made on first use (orphans of killed sweeps and exports there are reclaimed first).</summary>
    private string Workspace()
    {
        if (_workspace is not null) return _workspace;
        var parent = _keepTarget is null ? Path.GetTempPath() : _fillInPlace ? _keepTarget : Path.GetDirectoryName(_keepTarget)!;
        Directory.CreateDirectory(parent);
        OutputFolder.ReclaimOrphans(parent, _observer is null ? null : _observer.Warning);
        _workspace = TempFolderOwner.ForThisProcess(Path.GetFileName(_keepTarget ?? "sweep"), TempFolderRole.Temporary).CreateFolderIn(parent);
        return _workspace;
    }

    /// <summary>After a variant: its folder stays only while it is the best so far (and only when the best is kept).</summary>
    private void KeepOnlyBest(string folder)
    {
        var best = Best;
        var newBest = _options.KeepBest is not null && best is not null && ReferenceEquals(best, _results[^1]) && Directory.Exists(folder);
        if (newBest)
        {
            if (_bestFolder is not null) RemoveFolder(_bestFolder);
            _bestFolder = folder;
        }
        else
        {
            RemoveFolder(folder);
        }
    }

    private void RemoveFolder(string folder)
    {
        try
        {
            if (Directory.Exists(folder)) Directory.Delete(folder, recursive: true);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            _observer?.Warning($"Could not remove the sweep's temporary model '{folder}': {ex.Message}");
        }
    }

    /// <summary>Removes the working folder and every variant still in it (the best is already moved out by <see cref="Finish"/>).</summary>
    public void Dispose()
    {
        if (_workspace is null) return;
        RemoveFolder(_workspace);
        if (!Directory.Exists(_workspace)) TempFolderOwner.RemoveFor(_workspace);
        _workspace = null;
    }
}
