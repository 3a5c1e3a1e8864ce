using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using TorchSharp;
using static TorchSharp.torch;

namespace Dare.Engine.Adapters;

/// <summary>
/// Writes any task vector as a PEFT LoRA adapter (what mergekit-extract-lora does): per target matrix, δ from the
/// executor, a truncated SVD δ ≈ U·S·Vᵀ, and the factors A = √S·Vᵀ, B = U·√S (lora_alpha = r, so s = 1). One matrix
/// is in memory at a time; the factors, which are small, are kept until the adapter is written, because a rank chosen
/// per matrix is known only after its SVD. Embeddings are saved whole (modules_to_save) or as embedding LoRAs. The
/// folder appears only when complete (the same temporary-folder-and-rename as every export).
/// </summary>
public sealed class LoraExtractor(IMergeObserver? observer = null, CancellationToken cancellation = default)
{
    public const string RecipeFileName = MergeExecutor.RecipeFileName;
    private static readonly string[] EmbeddingModules = { "embed_tokens", "wte", "word_embeddings", "embed_in", "tok_embeddings" };

    /// <summary>Whether a base tensor is an input embedding (by its module's name, as the architectures name them).</summary>
    public static bool IsEmbedding(string tensorName)
    {
        var module = tensorName.EndsWith(".weight", StringComparison.Ordinal) ? tensorName[..^".weight".Length] : tensorName;
        return EmbeddingModules.Contains(module[(module.LastIndexOf('.') + 1)..], StringComparer.Ordinal);
    }

    public LoraExportResult Export(TaskVector vector, LoraExportOptions options)
    {
        var clock = Stopwatch.StartNew();
        Check(options);
        options.Device?.EnsureAvailable();
        var destination = Path.GetFullPath(options.Destination).TrimEnd(Path.DirectorySeparatorChar);
        var inputs = OutputFolder.InputPathsOf(vector);
        OutputFolder.Check(destination, options.Force, inputs, options.CurrentLocation);
        var (targets, skipped) = Targets(vector.Base, options);
        var executor = new MergeExecutor(observer, cancellation);

        // Factor every LoRA module first: its rank (and so the file's layout) is known only after its SVD.
        var factors = new List<Factors>();
        for (var i = 0; i < targets.Count; i++)
        {
            cancellation.ThrowIfCancellationRequested();
            var (info, kind) = targets[i];
            observer?.Progress(new MergeProgress("Extracting LoRA", i, targets.Count, 0, 0, clock.Elapsed, info.Name));
            if (kind == LoraModuleKind.Full) continue;
            using var scope = NewDisposeScope();
            using var delta = executor.ComputeDelta(vector, info.Name);
            CheckFinite(delta, info);
            var f = Factorize(kind == LoraModuleKind.Embedding ? delta.t() : delta, options, DTypeOf(info, options).ToScalarType());
            factors.Add(f with { Info = info, Kind = kind });
            observer?.Verbose($"{info.Name} {info.ShapeText}: rank {f.Rank}, relative error {f.RelativeError:0.######} ({f.Svd.ToString().ToLowerInvariant()} SVD)");
        }

        var plan = new List<PlannedTensor>();
        foreach (var f in factors)
        {
            var (a, b) = FactorNames(f.Info.Name, f.Kind);
            plan.Add(new PlannedTensor(a, DTypeOf(f.Info, options), new[] { (long)f.Rank, f.Columns }));
            plan.Add(new PlannedTensor(b, DTypeOf(f.Info, options), new[] { f.Rows, (long)f.Rank }));
        }
        var full = targets.Where(t => t.Kind == LoraModuleKind.Full).Select(t => t.Info).ToList();
        plan.AddRange(full.Select(t => new PlannedTensor(LoraAdapter.PeftPrefix + t.Name, DTypeOf(t, options), t.Shape)));

        var modules = factors.Select(f => new LoraModuleExport(ModuleOf(f.Info.Name), f.Info.Name, f.Kind, f.Rank, f.Info.Shape, f.RelativeError, f.Svd))
            .Concat(full.Select(t => new LoraModuleExport(ModuleOf(t.Name), t.Name, LoraModuleKind.Full, 0, t.Shape, 0))).ToList();
        var rank = factors.Select(f => f.Rank).DefaultIfEmpty(0).Max();
        var extra = new Dictionary<string, string> { [LoraAdapterConfig.FileName] = ConfigJson(vector, options, modules, rank) };
        // As a merge's recipe: it replays the task vector, after checking its inputs' files (dare_inputs).
        if (options.RecipeYaml is { } recipe) extra[RecipeFileName] = recipe + Recipes.InputFingerprints.Section(vector) + Figures(options, modules);
        var writeOptions = new CheckpointWriteOptions
        {
            SingleFileName = LoraAdapter.WeightsFileName,
            MaxShardSize = long.MaxValue,
            Force = options.Force,
            ProtectedPaths = inputs,
            CurrentLocation = options.CurrentLocation,
            Warning = observer is null ? null : observer.Warning,
            ExtraFiles = extra,
            Metadata = new Dictionary<string, string> { ["dare_version"] = typeof(LoraExtractor).Assembly.GetName().Version?.ToString(3) ?? "0", ["dare_content"] = "lora" },
        };
        using var writer = CheckpointWriter.Create(destination, plan, writeOptions);
        foreach (var f in factors)
        {
            using var scope = NewDisposeScope();
            var (a, b) = FactorNames(f.Info.Name, f.Kind);
            writer.WriteTensor(a, tensor(f.A, new[] { (long)f.Rank, f.Columns }).to_type(DTypeOf(f.Info, options).ToScalarType()));
            writer.WriteTensor(b, tensor(f.B, new[] { f.Rows, (long)f.Rank }).to_type(DTypeOf(f.Info, options).ToScalarType()));
        }
        using (var reader = new TensorReader())
        {
            foreach (var info in full)
            {
                cancellation.ThrowIfCancellationRequested();
                using var scope = NewDisposeScope();
                using var delta = executor.ComputeDelta(vector, info.Name);
                CheckFinite(delta, info);
                var whole = reader.Read(info).to_type(ScalarType.Float32).add_(delta);
                writer.WriteTensor(LoraAdapter.PeftPrefix + info.Name, whole.to_type(DTypeOf(info, options).ToScalarType()).contiguous());
            }
        }
        var written = writer.Commit();
        observer?.Progress(new MergeProgress("Extracting LoRA", targets.Count, targets.Count, 0, 0, clock.Elapsed, null));
        return new LoraExportResult(written.Path, written.Files, rank, modules, skipped, clock.Elapsed);
    }

    private static void Check(LoraExportOptions options)
    {
        if (options.Rank < 1) throw Invalid($"The rank must be at least 1, not {options.Rank}.");
        if (options.RetainedEnergy is { } e && !(e > 0 && e <= 1)) throw Invalid($"The retained energy must be in (0, 1], not {e.ToString(CultureInfo.InvariantCulture)}.");
        if (options.MinSingularValue is { } t && !(t >= 0 && double.IsFinite(t))) throw Invalid($"The singular-value threshold must be finite and not negative, not {t.ToString(CultureInfo.InvariantCulture)}.");
        if (options.RetainedEnergy is not null && options.MinSingularValue is not null) throw Invalid("Give the retained energy or the singular-value threshold, not both.");
    }

    // An SVD of NaN or ±Inf gives NaN factors (or fails inside LAPACK); refuse before anything is written.
    private static void CheckFinite(Tensor delta, TensorInfo info)
    {
        using var finite = delta.isfinite().all();
        if (!finite.ToBoolean())
        {
            throw new DareException(DareErrorId.NonFiniteValues, DareErrorKind.InvalidData,
                $"The task vector's delta of '{info.Name}' holds NaN or infinite values; no adapter can be extracted from it.") { TensorName = info.Name, FilePath = info.File };
        }
    }

    private static DareException Invalid(string message) => new(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument, message);

    /// <summary>The base tensors that go into the adapter, each as a LoRA, an embedding LoRA, or a full tensor; and how many float tensors stay out.</summary>
    private static (List<(TensorInfo Info, LoraModuleKind Kind)> Targets, int Skipped) Targets(Checkpoint @base, LoraExportOptions options)
    {
        var include = options.Include.Select(Glob).ToList();
        var exclude = options.Exclude.Select(Glob).ToList();
        var targets = new List<(TensorInfo, LoraModuleKind)>();
        var floats = 0;
        foreach (var info in @base.Tensors.Where(t => t.DType.IsMergeable()))
        {
            floats++;
            if (info.Shape.Length != 2 || !info.Name.EndsWith(".weight", StringComparison.Ordinal)) continue;
            if (include.Count > 0 && !include.Any(p => p.IsMatch(info.Name)) || exclude.Any(p => p.IsMatch(info.Name))) continue;
            var embedding = IsEmbedding(info.Name);
            if (embedding && options.Embeddings == EmbeddingExport.Skip) continue;
            targets.Add((info, !embedding ? LoraModuleKind.Linear : options.Embeddings == EmbeddingExport.Lora ? LoraModuleKind.Embedding : LoraModuleKind.Full));
        }
        if (targets.Count == 0)
        {
            throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument,
                $"No matrix of the base '{@base.Path}' is left to extract (2-D '.weight' tensors, after the include and exclude patterns and the embedding choice).") { FilePath = @base.Path };
        }
        return (targets, floats - targets.Count);
    }

    private static Regex Glob(string pattern) =>
        new("^" + Regex.Escape(pattern).Replace("\\*", ".*").Replace("\\?", ".") + "$", RegexOptions.CultureInvariant | RegexOptions.IgnoreCase);

    private static SafetensorsDType DTypeOf(TensorInfo info, LoraExportOptions options) => options.OutputDType ?? info.DType;

    private static string ModuleOf(string tensorName) => tensorName[..^".weight".Length];

    private static (string A, string B) FactorNames(string tensorName, LoraModuleKind kind)
    {
        var prefix = LoraAdapter.PeftPrefix + ModuleOf(tensorName);
        return kind == LoraModuleKind.Embedding ? ($"{prefix}.lora_embedding_A", $"{prefix}.lora_embedding_B") : ($"{prefix}.lora_A.weight", $"{prefix}.lora_B.weight");
    }

    /// <summary>One module's factors as float32 arrays: A is [Rank, Columns], B is [Rows, Rank].</summary>
    private sealed record Factors(float[] A, float[] B, long Rows, long Columns, int Rank, double RelativeError, SvdMethod Svd)
    {
        public TensorInfo Info { get; init; } = null!;
        public LoraModuleKind Kind { get; init; }
    }

    /// <summary>
    /// The truncated SVD of one matrix (float32, [rows, columns]) as PEFT factors, rounded to the saved dtype, and the
    /// relative error ‖δ − B·A‖_F / ‖δ‖_F of those saved factors, measured in float64 row block by row block.
    /// </summary>
    private static Factors Factorize(Tensor delta, LoraExportOptions options, ScalarType saved)
    {
        // On a GPU (options.Device) the SVD and the error measurement run there; the factors come back to the host.
        var d = (options.Device is { IsCuda: true } device ? delta.to(device.TorchDevice) : delta).contiguous();
        long rows = d.shape[0], columns = d.shape[1];
        using var threads = SmallMatrixThreads.For(rows * columns);
        var smaller = Math.Min(rows, columns);
        var norm2 = d.square().sum(ScalarType.Float64).ToDouble();
        var cap = (int)Math.Min(options.Rank, smaller);
        Tensor u, s, vh;
        var method = options.Svd == SvdMethod.Auto ? (smaller > options.FullSvdLimit ? SvdMethod.Randomized : SvdMethod.Exact) : options.Svd;
        if (method == SvdMethod.Randomized)
        {
            // A randomized SVD finds the leading singular triplets without the full decomposition of a large matrix.
            (u, s, vh) = RandomizedSvd(d, (int)Math.Min(smaller, cap + 10), powerIterations: 4);
        }
        else
        {
            (u, s, vh) = GramSvd(d, cap);
        }
        var values = s.to_type(ScalarType.Float64).cpu().data<double>().ToArray();
        var rank = Math.Max(1, ChooseRank(values, norm2, cap, options));
        var root = s.narrow(0, 0, rank).sqrt();
        var a = vh.narrow(0, 0, rank).mul(root.unsqueeze(1)).to_type(saved).to_type(ScalarType.Float32).contiguous();
        var b = u.narrow(1, 0, rank).mul(root.unsqueeze(0)).to_type(saved).to_type(ScalarType.Float32).contiguous();
        double residual = 0;
        using (var a64 = a.to_type(ScalarType.Float64))
        {
            for (long first = 0; first < rows; first += 4096)
            {
                using var block = NewDisposeScope();
                var count = Math.Min(4096, rows - first);
                var rebuilt = b.narrow(0, first, count).to_type(ScalarType.Float64).matmul(a64);
                residual += d.narrow(0, first, count).to_type(ScalarType.Float64).sub_(rebuilt).pow_(2).sum().ToDouble();
            }
        }
        return new Factors(a.cpu().data<float>().ToArray(), b.cpu().data<float>().ToArray(), rows, columns, rank, norm2 > 0 ? Math.Sqrt(residual / norm2) : 0, method);
    }

    /// <summary>
    /// Every singular value of <paramref name="d"/> and its leading <paramref name="q"/> singular vectors, from the
    /// eigen-decomposition of the smaller Gram matrix (δδᵀ or δᵀδ) in float64: the eigenvectors are one side's
    /// singular vectors, δ's product with them divided by σ the other's. A third to a quarter of the time of
    /// torch.linalg.svd (2048 × 5632: 1.6 s against 6.5 s on this project's machine), the same factors up to the
    /// sign of each pair of singular vectors (which B·A does not see).
    /// </summary>
    private static (Tensor U, Tensor S, Tensor Vh) GramSvd(Tensor d, int q)
    {
        var values = d.to_type(ScalarType.Float64);
        var wide = d.shape[0] <= d.shape[1];
        var (eigenvalues, eigenvectors) = linalg.eigh(wide ? values.matmul(values.t()) : values.t().matmul(values));
        // eigh sorts ascending; rounding can leave the smallest a little below zero.
        var s = eigenvalues.flip(0).clamp_min(0).sqrt();
        var leading = eigenvectors.flip(1).narrow(1, 0, Math.Max(1, q));
        // A singular value at rounding level of the largest has no direction to recover: its vectors become zero.
        var kept = s.narrow(0, 0, leading.shape[1]);
        var divisor = kept.where(kept.gt(s[0] * 1e-12), double.PositiveInfinity);
        return wide
            ? (leading.to_type(ScalarType.Float32), s.to_type(ScalarType.Float32), leading.t().matmul(values).div_(divisor.unsqueeze(1)).to_type(ScalarType.Float32))
            : (values.matmul(leading).div_(divisor.unsqueeze(0)).to_type(ScalarType.Float32), s.to_type(ScalarType.Float32), leading.t().to_type(ScalarType.Float32));
    }

    /// <summary>
    /// The leading <paramref name="q"/> singular triplets by the randomized range finder of Halko, Martinsson and Tropp
    /// (what torch.svd_lowrank does; TorchSharp 0.107 lacks it): Q spans δ·Ω after power iterations, then the SVD of
    /// the small Qᵀ·δ. The test matrix Ω comes from a fixed seed, so the same δ gives the same adapter.
    /// </summary>
    private static (Tensor U, Tensor S, Tensor Vh) RandomizedSvd(Tensor d, int q, int powerIterations)
    {
        using var generator = new Generator(0x5EED);
        // Drawn on the host whatever the device, so a GPU gets the same Ω.
        var omega = randn(new[] { d.shape[1], (long)q }, ScalarType.Float32, generator: generator).to(d.device);
        var (basis, _) = linalg.qr(d.matmul(omega));
        for (var i = 0; i < powerIterations; i++)
        {
            var (back, _) = linalg.qr(d.t().matmul(basis));
            (basis, _) = linalg.qr(d.matmul(back));
        }
        var (small, s, vh) = linalg.svd(basis.t().matmul(d), fullMatrices: false);
        return (basis.matmul(small), s, vh);
    }

    /// <summary>The fixed rank, or the fewest singular values holding the energy fraction, or those above the threshold; at most <paramref name="cap"/>.</summary>
    private static int ChooseRank(double[] singular, double norm2, int cap, LoraExportOptions options)
    {
        if (options.MinSingularValue is { } threshold) return Math.Min(cap, singular.Count(v => v > threshold));
        if (options.RetainedEnergy is not { } energy) return cap;
        double held = 0;
        for (var i = 0; i < Math.Min(cap, singular.Length); i++)
        {
            held += singular[i] * singular[i];
            if (held >= energy * norm2) return i + 1;
        }
        return cap;
    }

    /// <summary>adapter_config.json: lora_alpha = r and alpha_pattern = rank_pattern, so every module's scale is 1.</summary>
    private static string ConfigJson(TaskVector vector, LoraExportOptions options, List<LoraModuleExport> modules, int rank)
    {
        var lora = modules.Where(m => m.Kind != LoraModuleKind.Full).ToList();
        var loraModules = lora.Select(m => m.Module).ToHashSet(StringComparer.Ordinal);
        // A module-name suffix (q_proj) when every base matrix of that name is in the adapter, the full names otherwise.
        var targets = new List<string>();
        foreach (var group in lora.GroupBy(m => Suffix(m.Module)))
        {
            var all = vector.Base.Tensors.Where(t => t.Shape.Length == 2 && t.Name.EndsWith(".weight", StringComparison.Ordinal) && Suffix(ModuleOf(t.Name)) == group.Key);
            if (all.All(t => loraModules.Contains(ModuleOf(t.Name)))) targets.Add(group.Key);
            else targets.AddRange(group.Select(m => m.Module));
        }
        var pattern = new JsonObject();
        foreach (var m in lora.Where(m => m.Rank != rank)) pattern[Regex.Escape(m.Module)] = m.Rank;
        var saveWhole = modules.Where(m => m.Kind == LoraModuleKind.Full).Select(m => (JsonNode?)JsonValue.Create(Suffix(m.Module))).ToArray();
        var config = new JsonObject
        {
            ["base_model_name_or_path"] = options.BaseModelNameOrPath ?? vector.Base.Path,
            ["peft_type"] = "LORA",
            ["task_type"] = "CAUSAL_LM",
            ["r"] = rank,
            ["lora_alpha"] = rank,
            ["use_rslora"] = false,
            ["use_dora"] = false,
            ["fan_in_fan_out"] = false,
            ["lora_dropout"] = 0.0,
            ["bias"] = "none",
            ["inference_mode"] = true,
            ["target_modules"] = new JsonArray(targets.Select(t => (JsonNode?)JsonValue.Create(t)).ToArray()),
            ["modules_to_save"] = saveWhole.Length > 0 ? new JsonArray(saveWhole) : null,
            ["rank_pattern"] = pattern,
            ["alpha_pattern"] = pattern.DeepClone(),
        };
        return config.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
    }

    private static string Suffix(string module) => module[(module.LastIndexOf('.') + 1)..];

    /// <summary>The extraction's figures as YAML comments after the recipe, so the recipe still runs.</summary>
    private static string Figures(LoraExportOptions options, List<LoraModuleExport> modules)
    {
        var rule = options.RetainedEnergy is { } e ? $"retained energy {e.ToString(CultureInfo.InvariantCulture)}, rank at most {options.Rank}"
            : options.MinSingularValue is { } t ? $"singular values above {t.ToString(CultureInfo.InvariantCulture)}, rank at most {options.Rank}"
            : $"rank {options.Rank}";
        var text = new StringBuilder();
        text.Append(CultureInfo.InvariantCulture, $"\n# Export-LoraAdapter ({rule}, embeddings {options.Embeddings}, SVD {options.Svd}{(options.Device is { IsCuda: true } d ? $" on {d}" : "")}): relative reconstruction error ||d - B.A||_F / ||d||_F per module\n");
        foreach (var m in modules)
        {
            text.Append(CultureInfo.InvariantCulture, $"#   {m.Module}: {(m.Kind == LoraModuleKind.Full ? "full tensor" : $"rank {m.Rank}")}, error {m.RelativeError:0.########}{(m.Svd is { } svd ? $", {svd.ToString().ToLowerInvariant()} SVD" : "")}\n");
        }
        return text.ToString();
    }
}
