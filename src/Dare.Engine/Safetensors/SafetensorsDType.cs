using TorchSharp;

namespace Dare.Engine.Safetensors;

/// <summary>The element types of the safetensors format (names as they appear in headers).</summary>
public enum SafetensorsDType
{
    F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL, F8_E4M3, F8_E5M2,
}

public static class SafetensorsDTypes
{
    public static int ElementSize(this SafetensorsDType dtype) => dtype switch
    {
        SafetensorsDType.F64 or SafetensorsDType.I64 => 8,
        SafetensorsDType.F32 or SafetensorsDType.I32 => 4,
        SafetensorsDType.F16 or SafetensorsDType.BF16 or SafetensorsDType.I16 => 2,
        _ => 1,
    };

    /// <summary>Floating-point types the engine merges. FP8 is passed through unchanged (TorchSharp cannot compute on it).</summary>
    public static bool IsMergeable(this SafetensorsDType dtype) =>
        dtype is SafetensorsDType.F64 or SafetensorsDType.F32 or SafetensorsDType.F16 or SafetensorsDType.BF16;

    /// <summary>Exact header names only. (Enum.TryParse would also take "1", " F32" and "F32, I8".)</summary>
    public static bool TryParse(string text, out SafetensorsDType dtype)
    {
        foreach (var candidate in Enum.GetValues<SafetensorsDType>())
        {
            if (string.Equals(candidate.ToString(), text, StringComparison.Ordinal))
            {
                dtype = candidate;
                return true;
            }
        }
        dtype = default;
        return false;
    }

    /// <summary>The torch element type a tensor of this dtype is read into (FP8 as raw bytes).</summary>
    public static torch.ScalarType ToScalarType(this SafetensorsDType dtype) => dtype switch
    {
        SafetensorsDType.F64 => torch.ScalarType.Float64,
        SafetensorsDType.F32 => torch.ScalarType.Float32,
        SafetensorsDType.F16 => torch.ScalarType.Float16,
        SafetensorsDType.BF16 => torch.ScalarType.BFloat16,
        SafetensorsDType.I64 => torch.ScalarType.Int64,
        SafetensorsDType.I32 => torch.ScalarType.Int32,
        SafetensorsDType.I16 => torch.ScalarType.Int16,
        SafetensorsDType.I8 => torch.ScalarType.Int8,
        SafetensorsDType.BOOL => torch.ScalarType.Bool,
        _ => torch.ScalarType.Byte,
    };

    /// <summary>Parses the user-facing names (bfloat16, float16, float32, and the safetensors names).</summary>
    public static SafetensorsDType ParseOutputDType(string text) => text.Trim().ToLowerInvariant() switch
    {
        "bfloat16" or "bf16" => SafetensorsDType.BF16,
        "float16" or "fp16" or "f16" or "half" => SafetensorsDType.F16,
        "float32" or "fp32" or "f32" or "float" => SafetensorsDType.F32,
        _ => throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument,
            $"Unsupported output dtype '{text}'. Use bfloat16, float16 or float32."),
    };

    /// <summary>The name config.json uses for torch_dtype.</summary>
    public static string TorchDTypeName(this SafetensorsDType dtype) => dtype switch
    {
        SafetensorsDType.BF16 => "bfloat16",
        SafetensorsDType.F16 => "float16",
        SafetensorsDType.F32 => "float32",
        SafetensorsDType.F64 => "float64",
        _ => dtype.ToString().ToLowerInvariant(),
    };
}
