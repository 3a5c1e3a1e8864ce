using System.Runtime.InteropServices;
using static TorchSharp.torch;

namespace Dare.Engine;

/// <summary>
/// Raw access to a CPU tensor's storage. TorchSharp's <c>Tensor.bytes</c> is a Span and so stops at 2^31 bytes;
/// model tensors can be larger, so what hands torch memory to native code (the tensor backend's buffers, LoRA
/// products, whole-tensor reads) works on the pointer.
/// </summary>
internal static unsafe partial class TensorMemory
{
    [LibraryImport("LibTorchSharp")]
    private static partial IntPtr THSTensor_data(IntPtr handle);

    /// <summary>Pointer to the first element of a contiguous CPU tensor (valid while the tensor lives).</summary>
    public static byte* Pointer(Tensor tensor)
    {
        if (tensor.device_type != TorchSharp.DeviceType.CPU) throw new ArgumentException("The tensor must be on the CPU.", nameof(tensor));
        if (!tensor.is_contiguous()) throw new ArgumentException("The tensor must be contiguous.", nameof(tensor));
        return (byte*)THSTensor_data(tensor.Handle);
    }
}
