using Dare.Engine.Merge;
using Dare.Engine.Safetensors;

namespace Dare.Engine.Adapters;

/// <summary>How embeddings go into an extracted adapter.</summary>
public enum EmbeddingExport
{
    /// <summary>The whole tensor (base + δ) under modules_to_save, as mergekit-extract-lora does by default.</summary>
    Full,
    /// <summary>An embedding LoRA (lora_embedding_A / lora_embedding_B).</summary>
    Lora,
    /// <summary>Left out of the adapter.</summary>
    Skip,
}

/// <summary>How each matrix's truncated SVD is computed.</summary>
public enum SvdMethod
{
    /// <summary>Exact up to <see cref="LoraExportOptions.FullSvdLimit"/> (every matrix of a 7B Llama), randomized above.</summary>
    Auto,
    /// <summary>
    /// The full decomposition (eigenvalues of the smaller Gram matrix, float64) for every matrix: Eckart–Young's optimal
    /// error at every rank; for a matrix whose smaller side is n it takes n² float64s and O(n³) time.
    /// </summary>
    Exact,
    /// <summary>A randomized low-rank SVD (rank + 10 vectors, 4 power iterations, a fixed seed) for every matrix: faster on large ones, its error at or a little above the optimal one.</summary>
    Randomized,
}

/// <summary>What <see cref="LoraExtractor"/> writes: the rank rule, which matrices, and the output folder.</summary>
public sealed class LoraExportOptions
{
    public required string Destination { get; init; }

    /// <summary>The rank of every module; with <see cref="RetainedEnergy"/> or <see cref="MinSingularValue"/>, the largest rank a module may get.</summary>
    public int Rank { get; init; } = 32;

    /// <summary>When set, each module gets the smallest rank whose singular values hold this fraction of ‖δ‖²_F (0 &lt; e ≤ 1), at most <see cref="Rank"/>.</summary>
    public double? RetainedEnergy { get; init; }

    /// <summary>When set, each module keeps the singular values above this value (mergekit's sv_epsilon), at most <see cref="Rank"/>.</summary>
    public double? MinSingularValue { get; init; }

    /// <summary>Wildcard patterns (* and ?) of base tensor names to extract; every 2-D weight when empty.</summary>
    public IReadOnlyList<string> Include { get; init; } = Array.Empty<string>();

    /// <summary>Wildcard patterns of base tensor names to leave out.</summary>
    public IReadOnlyList<string> Exclude { get; init; } = Array.Empty<string>();

    public EmbeddingExport Embeddings { get; init; } = EmbeddingExport.Full;

    /// <summary>dtype of the saved tensors; null keeps each base tensor's.</summary>
    public SafetensorsDType? OutputDType { get; init; }

    public bool Force { get; init; }

    /// <summary>The caller's current folder, which the output must not be or hold.</summary>
    public string? CurrentLocation { get; init; }

    /// <summary>adapter_config.json's base_model_name_or_path (default: the base's path).</summary>
    public string? BaseModelNameOrPath { get; init; }

    /// <summary>The recipe that reproduces the task vector; written as dare_recipe.yml with the extraction's figures as comments.</summary>
    public string? RecipeYaml { get; init; }

    /// <summary>How each matrix's SVD is computed (see <see cref="SvdMethod"/>).</summary>
    public SvdMethod Svd { get; init; } = SvdMethod.Auto;

    /// <summary>
    /// Where the SVDs run: a CUDA device (δ is still computed on the host), else the CPU. A GPU's eigen-solver rounds
    /// differently, so its factors agree with the CPU's to rounding, not bit for bit.
    /// </summary>
    public ComputeDevice? Device { get; init; }

    /// <summary>With <see cref="SvdMethod.Auto"/>, matrices whose smaller side is above this get the randomized SVD instead of the exact one.</summary>
    public long FullSvdLimit { get; init; } = 4096;
}

/// <summary>One module of an extracted adapter.</summary>
/// <param name="Svd">The SVD that factored it (Exact or Randomized); null for a full tensor.</param>
public sealed record LoraModuleExport(string Module, string Tensor, LoraModuleKind Kind, int Rank, long[] Shape, double RelativeError, SvdMethod? Svd = null)
{
    /// <summary>How much of δ the saved factors hold: ‖δ − B·A‖_F / ‖δ‖_F is the error (0 for a full tensor).</summary>
    public double RetainedFraction => 1 - RelativeError;
}

/// <summary>What Export-LoraAdapter wrote.</summary>
public sealed record LoraExportResult(string Path, IReadOnlyList<string> Files, int Rank, IReadOnlyList<LoraModuleExport> Modules, int SkippedTensors, TimeSpan Elapsed)
{
    /// <summary>The largest per-module relative reconstruction error ‖δ − B·A‖_F / ‖δ‖_F.</summary>
    public double MaxRelativeError => Modules.Select(m => m.RelativeError).DefaultIfEmpty(0).Max();
}
