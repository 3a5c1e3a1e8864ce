using Dare.Engine.Merge;
using Dare.Engine.Safetensors;
using TorchSharp;
using static TorchSharp.torch;

namespace Dare.Engine.Adapters;

/// <summary>
/// A LoRA adapter as the input of a merge: per target module δ = s·B·A in the base tensor's layout (transposed for an
/// embedding or with fan_in_fan_out), and δ = stored − base for a full tensor (modules_to_save). δ is computed for the
/// rows a chunk covers only (a row block of the left factor times the right factor), so no δ is held whole. Base
/// tensors the adapter does not touch contribute zero; that is what an adapter means, so they are not reported missing.
/// </summary>
internal sealed class LoraDelta : ITaskInput
{
    private readonly Dictionary<string, LoraModule> _byBaseTensor;

    private LoraDelta(LoraAdapter adapter, Dictionary<string, LoraModule> byBaseTensor)
    {
        Adapter = adapter;
        _byBaseTensor = byBaseTensor;
    }

    public LoraAdapter Adapter { get; }
    public string Name => Adapter.Name;
    public Checkpoint? Model => null;
    public IReadOnlyList<string> MissingTensors => Array.Empty<string>();

    /// <summary>The base tensors the adapter changes.</summary>
    public IReadOnlyCollection<string> BaseTensors => _byBaseTensor.Keys;

    public IInputTensor? Open(TensorInfo baseTensor)
    {
        if (!_byBaseTensor.TryGetValue(baseTensor.Name, out var module)) return null;
        if (module.Kind == LoraModuleKind.Full) return new StoredMinusBase(module.A);
        var transposed = module.Kind == LoraModuleKind.Embedding || Adapter.Config.FanInFanOut;
        return new LowRankPart(module, transposed, Adapter.Config.ScaleOf(module.Module), baseTensor.Shape[1]);
    }

    /// <summary>Maps every module of <paramref name="adapter"/> to a tensor of <paramref name="base"/> and checks shapes, ranks and types.</summary>
    public static LoraDelta Bind(Checkpoint @base, LoraAdapter adapter)
    {
        var map = new Dictionary<string, LoraModule>(StringComparer.Ordinal);
        foreach (var module in adapter.Modules)
        {
            var wanted = module.Kind == LoraModuleKind.Full ? module.Module : module.Module + ".weight";
            var target = Find(@base, wanted) ?? throw new DareException(DareErrorId.AdapterInvalid, DareErrorKind.InvalidData,
                $"The adapter '{adapter.Path}' changes '{wanted}' (from '{module.A.Name}'), which the base '{@base.Path}' does not have; is the adapter for another model?")
                { FilePath = adapter.WeightsFile, TensorName = module.A.Name };
            if (!target.DType.IsMergeable())
            {
                throw new DareException(DareErrorId.TensorDTypeMismatch, DareErrorKind.InvalidData,
                    $"The adapter '{adapter.Path}' changes '{target.Name}', which is {target.DType} in the base; only floating-point tensors have a delta.")
                    { FilePath = adapter.WeightsFile, TensorName = module.A.Name };
            }
            var expected = ExpectedShape(module, adapter.Config.FanInFanOut);
            if (!expected.SequenceEqual(target.Shape))
            {
                throw new DareException(DareErrorId.TensorShapeMismatch, DareErrorKind.InvalidData,
                    $"The adapter '{adapter.Path}' gives '{target.Name}' the shape {Text(expected)} ({Describe(module)}) but it is {target.ShapeText} in the base '{@base.Path}'.")
                    { FilePath = adapter.WeightsFile, TensorName = module.A.Name };
            }
            if (module.Kind != LoraModuleKind.Full && module.Rank != adapter.Config.RankOf(module.Module))
            {
                throw new DareException(DareErrorId.AdapterInvalid, DareErrorKind.InvalidData,
                    $"The adapter '{adapter.Path}' has rank {module.Rank} factors for '{module.Module}' but its config says r = {adapter.Config.RankOf(module.Module)} (r, or rank_pattern) there.")
                    { FilePath = adapter.WeightsFile, TensorName = module.A.Name };
            }
            if (!map.TryAdd(target.Name, module))
            {
                throw new DareException(DareErrorId.AdapterInvalid, DareErrorKind.InvalidData,
                    $"The adapter '{adapter.Path}' changes '{target.Name}' twice (from '{map[target.Name].A.Name}' and '{module.A.Name}').")
                    { FilePath = adapter.WeightsFile, TensorName = module.A.Name };
            }
        }
        return new LoraDelta(adapter, map);
    }

    // PEFT wraps the model it adapts; its module names match the checkpoint's, give or take the "model." of a causal LM.
    private static TensorInfo? Find(Checkpoint @base, string name) =>
        @base.Find(name) ?? (name.StartsWith("model.", StringComparison.Ordinal) ? @base.Find(name["model.".Length..]) : @base.Find("model." + name));

    private static long[] ExpectedShape(LoraModule module, bool fanInFanOut) => module.Kind switch
    {
        LoraModuleKind.Full => module.A.Shape,
        LoraModuleKind.Embedding => new[] { module.A.Shape[1], module.B!.Shape[0] },
        _ => fanInFanOut ? new[] { module.A.Shape[1], module.B!.Shape[0] } : new[] { module.B!.Shape[0], module.A.Shape[1] },
    };

    private static string Describe(LoraModule module) => module.Kind == LoraModuleKind.Full
        ? $"'{module.A.Name}' replaces it whole"
        : $"'{module.A.Name}' is {module.A.ShapeText}, '{module.B!.Name}' is {module.B.ShapeText}";

    private static string Text(long[] shape) => "[" + string.Join(", ", shape) + "]";

    /// <summary>
    /// δ = s·L·R in the base tensor's layout: L = B, R = A for a linear layer; L = Aᵀ, R = Bᵀ when the base stores the
    /// transpose (an embedding, or fan_in_fan_out). The factors are read once, in float64, and the product is taken in
    /// float64, so δ is s·B·A rounded once to float32.
    /// </summary>
    private sealed class LowRankPart(LoraModule module, bool transposed, double scale, long columns) : IInputTensor
    {
        private double[]? _left, _right;
        private int Rank => module.Rank;

        public TensorInfo? StoredBFloat16 => null;
        public bool NeedsBase => false;

        public unsafe ChunkView ReadDelta(ChunkReader chunks, int slot, ChunkView baseChunk, long first, long count)
        {
            using (PhaseProfile.Time(chunks.Profile, Phase.Delta))
            {
                // The only input that computes with torch: libtorch loads with the first adapter.
                TorchRuntime.EnsureInitialized();
                using var scope = NewDisposeScope();
                if (_left is null) Load(chunks.Reader);
                var rowFirst = first / columns;
                var rowEnd = (first + count + columns - 1) / columns;
                var rows = rowEnd - rowFirst;
                using var threads = SmallMatrixThreads.For(rows * columns);
                using var left = tensor(_left.AsSpan((int)(rowFirst * Rank), (int)(rows * Rank)).ToArray(), new[] { rows, (long)Rank }, ScalarType.Float64);
                using var right = tensor(_right!, new[] { (long)Rank, columns }, ScalarType.Float64);
                using var block = left.matmul(right);
                using var product = block.mul_(scale).to_type(ScalarType.Float32).view(-1).narrow(0, first - rowFirst * columns, count).contiguous();
                var values = chunks.Workspace.Floats(slot, count);
                Buffer.MemoryCopy(TensorMemory.Pointer(product), values.Data, values.ByteLength, values.ByteLength);
                return values;
            }
        }

        private void Load(TensorReader reader)
        {
            using var scope = NewDisposeScope();
            var a = reader.Read(module.A).to_type(ScalarType.Float64);
            var b = reader.Read(module.B!).to_type(ScalarType.Float64);
            var (left, right) = transposed ? (a.t(), b.t()) : (b, a);
            _left = left.contiguous().data<double>().ToArray();
            _right = right.contiguous().data<double>().ToArray();
        }

        public void Prefetch(TensorReader reader, long first, long count, bool readOnce) { }
    }
}
