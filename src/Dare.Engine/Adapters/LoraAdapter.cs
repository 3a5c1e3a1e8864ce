using Dare.Engine.Safetensors;

namespace Dare.Engine.Adapters;

/// <summary>What one adapter module holds: low-rank factors (a linear layer's or an embedding's) or a full tensor.</summary>
public enum LoraModuleKind { Linear, Embedding, Full }

/// <summary>
/// One module of an adapter. For a LoRA module, <see cref="A"/> is [r, in] and <see cref="B"/> is [out, r] (an
/// embedding's lora_embedding_A is [r, vocabulary], lora_embedding_B [dim, r]); a full tensor (modules_to_save, a
/// trained bias) is in <see cref="A"/> alone. <see cref="Module"/> is the module's name in the model (PEFT's prefix
/// base_model.model. removed).
/// </summary>
public sealed record LoraModule(string Module, LoraModuleKind Kind, TensorInfo A, TensorInfo? B)
{
    public int Rank => Kind == LoraModuleKind.Full ? 0 : (int)A.Shape[0];
}

/// <summary>
/// A PEFT LoRA adapter folder: adapter_config.json and adapter_model.safetensors. Opening reads the config and the
/// safetensors header and pairs the factors; nothing else is read until a merge asks for δ (see <see cref="LoraDelta"/>).
/// </summary>
public sealed class LoraAdapter
{
    public const string WeightsFileName = "adapter_model.safetensors";
    public const string PickleFileName = "adapter_model.bin";

    /// <summary>PEFT's prefix of every saved tensor name.</summary>
    public const string PeftPrefix = "base_model.model.";

    private LoraAdapter(string path, LoraAdapterConfig config, string weightsFile, IReadOnlyList<LoraModule> modules)
    {
        Path = path;
        Config = config;
        WeightsFile = weightsFile;
        Modules = modules;
    }

    /// <summary>The adapter folder (full path).</summary>
    public string Path { get; }
    public string Name => System.IO.Path.GetFileName(Path.TrimEnd('/', '\\'));
    public LoraAdapterConfig Config { get; }
    public string WeightsFile { get; }
    public IReadOnlyList<LoraModule> Modules { get; }

    /// <summary>The largest rank of its LoRA modules (0 when it holds only full tensors).</summary>
    public int Rank => Modules.Select(m => m.Rank).DefaultIfEmpty(0).Max();

    public override string ToString() => Path;

    /// <summary>Whether <paramref name="path"/> is an adapter folder (holds adapter_config.json), or a file in one.</summary>
    public static bool IsAdapter(string path)
    {
        var full = System.IO.Path.GetFullPath(path);
        var folder = Directory.Exists(full) ? full : System.IO.Path.GetDirectoryName(full);
        return folder is not null && File.Exists(System.IO.Path.Combine(folder, LoraAdapterConfig.FileName))
            && (Directory.Exists(full) || System.IO.Path.GetFileName(full) is LoraAdapterConfig.FileName or WeightsFileName);
    }

    /// <summary>Opens an adapter folder (or its adapter_config.json or adapter_model.safetensors).</summary>
    public static LoraAdapter Open(string path)
    {
        var full = System.IO.Path.GetFullPath(path);
        var folder = Directory.Exists(full) ? full.TrimEnd('/', '\\') : File.Exists(full) ? System.IO.Path.GetDirectoryName(full)! : null;
        if (folder is null)
        {
            throw new DareException(DareErrorId.PathNotFound, DareErrorKind.ObjectNotFound, $"Cannot find the adapter '{full}': no such file or folder.") { FilePath = full };
        }
        var configPath = System.IO.Path.Combine(folder, LoraAdapterConfig.FileName);
        if (!File.Exists(configPath))
        {
            throw new DareException(DareErrorId.AdapterInvalid, DareErrorKind.ObjectNotFound,
                $"The folder '{folder}' is not a PEFT adapter: it has no {LoraAdapterConfig.FileName}.") { FilePath = folder };
        }
        var config = LoraAdapterConfig.Read(configPath);
        var weights = System.IO.Path.Combine(folder, WeightsFileName);
        if (!File.Exists(weights))
        {
            var pickle = System.IO.Path.Combine(folder, PickleFileName);
            if (File.Exists(pickle))
            {
                throw new DareException(DareErrorId.AdapterUnsupported, DareErrorKind.NotImplemented,
                    $"The adapter '{folder}' stores its weights as {PickleFileName} (a Python pickle, which Dare never loads). " +
                    "Save it again with safe_serialization=True (PEFT's default) to get adapter_model.safetensors.") { FilePath = pickle };
            }
            throw new DareException(DareErrorId.AdapterInvalid, DareErrorKind.ObjectNotFound,
                $"The adapter folder '{folder}' has {LoraAdapterConfig.FileName} but no {WeightsFileName}.") { FilePath = folder };
        }
        var file = SafetensorsFile.Open(weights);
        return new LoraAdapter(folder, config, weights, PairModules(file.Tensors, weights));
    }

    /// <summary>Groups the saved tensors by module and pairs lora_A with lora_B; anything that is not a factor is a full tensor.</summary>
    private static List<LoraModule> PairModules(IReadOnlyList<TensorInfo> tensors, string file)
    {
        var factors = new Dictionary<string, (TensorInfo? A, TensorInfo? B, bool Embedding)>(StringComparer.Ordinal);
        var modules = new List<LoraModule>();
        foreach (var tensor in tensors)
        {
            var name = tensor.Name.StartsWith(PeftPrefix, StringComparison.Ordinal) ? tensor.Name[PeftPrefix.Length..] : tensor.Name;
            if (name.Contains("lora_magnitude_vector", StringComparison.Ordinal)) throw UnsupportedTensor(tensor, file, "a DoRA magnitude vector (use_dora)");
            if (name.EndsWith(".lora_B.bias", StringComparison.Ordinal)) throw UnsupportedTensor(tensor, file, "a LoRA bias (lora_bias)");
            var (module, part, embedding) =
                name.EndsWith(".lora_A.weight", StringComparison.Ordinal) ? (name[..^".lora_A.weight".Length], 'A', false)
                : name.EndsWith(".lora_B.weight", StringComparison.Ordinal) ? (name[..^".lora_B.weight".Length], 'B', false)
                : name.EndsWith(".lora_embedding_A", StringComparison.Ordinal) ? (name[..^".lora_embedding_A".Length], 'A', true)
                : name.EndsWith(".lora_embedding_B", StringComparison.Ordinal) ? (name[..^".lora_embedding_B".Length], 'B', true)
                : (name, 'F', false);
            if (part == 'F')
            {
                if (name.Contains(".lora_", StringComparison.Ordinal)) throw UnsupportedTensor(tensor, file, "a LoRA tensor of a kind Dare does not read");
                modules.Add(new LoraModule(name, LoraModuleKind.Full, tensor, null));
                continue;
            }
            if (tensor.Shape.Length != 2) throw UnsupportedTensor(tensor, file, $"a {tensor.Shape.Length}-D factor (only linear and embedding LoRAs are read, not convolutions)");
            if (!tensor.DType.IsMergeable()) throw UnsupportedTensor(tensor, file, $"a {tensor.DType} factor (factors are floating-point)");
            var entry = factors.GetValueOrDefault(module);
            if (entry.A is not null && entry.B is not null || (entry.A ?? entry.B) is not null && entry.Embedding != embedding || part == 'A' && entry.A is not null || part == 'B' && entry.B is not null)
            {
                throw new DareException(DareErrorId.AdapterInvalid, DareErrorKind.InvalidData,
                    $"The adapter file '{file}' holds more than one {(part == 'A' ? "A" : "B")} factor for module '{module}' (tensor '{tensor.Name}').") { FilePath = file, TensorName = tensor.Name };
            }
            factors[module] = part == 'A' ? (tensor, entry.B, embedding) : (entry.A, tensor, embedding);
        }
        foreach (var (module, (a, b, embedding)) in factors)
        {
            if (a is null || b is null)
            {
                var present = (a ?? b)!;
                throw new DareException(DareErrorId.AdapterInvalid, DareErrorKind.InvalidData,
                    $"The adapter file '{file}' holds '{present.Name}' but not its {(a is null ? "A" : "B")} factor for module '{module}'.") { FilePath = file, TensorName = present.Name };
            }
            if (a.Shape[0] != b.Shape[1])
            {
                throw new DareException(DareErrorId.TensorShapeMismatch, DareErrorKind.InvalidData,
                    $"The adapter file '{file}' has factors of different ranks for module '{module}': A is {a.ShapeText}, B is {b.ShapeText} (A is [r, in], B is [out, r]).") { FilePath = file, TensorName = a.Name };
            }
            modules.Add(new LoraModule(module, embedding ? LoraModuleKind.Embedding : LoraModuleKind.Linear, a, b));
        }
        return modules;
    }

    private static DareException UnsupportedTensor(TensorInfo tensor, string file, string what) =>
        new(DareErrorId.AdapterUnsupported, DareErrorKind.NotImplemented, $"The adapter file '{file}' holds '{tensor.Name}', {what}, which Dare does not read.")
        { FilePath = file, TensorName = tensor.Name };
}
