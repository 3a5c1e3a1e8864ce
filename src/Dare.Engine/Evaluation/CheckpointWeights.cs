using Dare.Engine.Safetensors;
using static TorchSharp.torch;

namespace Dare.Engine.Evaluation;

/// <summary>
/// Weights of a checkpoint by Hugging Face name, read on demand through Dare's reader and converted to the compute
/// type and device. Every tensor returned belongs to the caller's dispose scope; nothing is cached, so memory holds
/// only what the current layer uses.
/// </summary>
internal sealed class CheckpointWeights
{
    private readonly Checkpoint _model;
    private readonly TensorReader _reader;
    private readonly ScalarType _dtype;
    private readonly Device _device;

    public CheckpointWeights(Checkpoint model, TensorReader reader, ScalarType dtype, Device device)
    {
        _model = model;
        _reader = reader;
        _dtype = dtype;
        _device = device;
    }

    public Tensor? TryGet(string name)
    {
        if (_model.Find(name) is not { } info) return null;
        if (info.DType is not (SafetensorsDType.BF16 or SafetensorsDType.F16 or SafetensorsDType.F32 or SafetensorsDType.F64))
        {
            throw new DareException(DareErrorId.TensorDTypeMismatch, DareErrorKind.InvalidData,
                $"Tensor '{name}' in '{info.File}' is {info.DType}; Measure-Perplexity reads floating-point weights (BF16, F16, F32, F64).") { FilePath = info.File, TensorName = name };
        }
        var stored = _reader.Read(info);
        if (stored.dtype == _dtype && stored.device == _device) return stored;
        using (stored) return stored.to(_dtype, _device);
    }

    public Tensor Get(string name) => TryGet(name) ?? throw LlamaForward.MissingTensor(name);

    /// <summary>lm_head.weight, or the embedding when the config ties them (or the checkpoint has no separate head).</summary>
    public Tensor Head(LlamaConfig config) =>
        (config.TieWordEmbeddings ? null : TryGet("lm_head.weight")) ?? Get("model.embed_tokens.weight");
}
