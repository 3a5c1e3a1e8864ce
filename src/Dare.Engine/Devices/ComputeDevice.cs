using System.Globalization;
using TorchSharp;

namespace Dare.Engine.Merge;

/// <summary>
/// Where an export's merge math runs. <c>cpu</c> (the default) is the hand-written SIMD kernels on host memory;
/// <c>cuda</c> / <c>cuda:N</c> is the TorchSharp tensor backend on that CUDA device; <c>torch-cpu</c> is the same
/// tensor backend on the CPU device, which is slower than <c>cpu</c> and exists to test and measure the backend where
/// no GPU is. Both backends produce the same masks, the same TIES selection and the same bytes (see the README).
/// </summary>
public sealed class ComputeDevice
{
    /// <summary>The spellings users may give (-Device, recipes' device:); cuda takes an optional :index.</summary>
    public static readonly IReadOnlyList<string> Spellings = new[] { "cpu", "torch-cpu", "cuda", "cuda:N" };

    /// <summary>The spellings as a pattern, for the cmdlets' -Device validation.</summary>
    public const string Pattern = @"^(?i)(cpu|torch-cpu|cuda(:\d+)?)$";

    public static ComputeDevice Cpu { get; } = new("cpu", null);

    private ComputeDevice(string name, int? cudaIndex, bool torchOnCpu = false)
    {
        Name = name;
        CudaIndex = cudaIndex;
        UsesTorchBackend = cudaIndex is not null || torchOnCpu;
    }

    /// <summary>The canonical spelling (cpu, torch-cpu, cuda:0, ...), as recipes write it.</summary>
    public string Name { get; }

    /// <summary>The CUDA device index, or null for the CPU.</summary>
    public int? CudaIndex { get; }

    /// <summary>Whether tensors are merged by the TorchSharp backend (<see cref="DeviceTensorMerger"/>) rather than the SIMD kernels.</summary>
    public bool UsesTorchBackend { get; }

    public bool IsCuda => CudaIndex is not null;

    public override string ToString() => Name;

    /// <summary>Parses a device spelling; a wrong one is <see cref="DareErrorId.InvalidParameter"/> naming the spellings.</summary>
    public static ComputeDevice Parse(string text)
    {
        var value = (text ?? "").Trim().ToLowerInvariant();
        if (value == "cpu") return Cpu;
        if (value == "torch-cpu") return new ComputeDevice("torch-cpu", null, torchOnCpu: true);
        if (value == "cuda") return new ComputeDevice("cuda:0", 0);
        if (value.StartsWith("cuda:", StringComparison.Ordinal) && int.TryParse(value.AsSpan(5), NumberStyles.None, CultureInfo.InvariantCulture, out var index))
        {
            return new ComputeDevice($"cuda:{index}", index);
        }
        throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument,
            $"'{text}' is not a device: use cpu (the SIMD kernels, the default), cuda or cuda:N (the TorchSharp backend on that GPU), or torch-cpu (the TorchSharp backend on the CPU).");
    }

    /// <summary>
    /// Checks that TorchSharp can use the device before anything is read or written: a CUDA device that TorchSharp does
    /// not offer is <see cref="DareErrorId.DeviceUnavailable"/>, naming what was asked and what TorchSharp reports.
    /// </summary>
    public void EnsureAvailable()
    {
        if (!IsCuda) return;
        TorchRuntime.EnsureInitialized();
        bool available;
        int count;
        string? failure = null;
        try
        {
            available = torch.cuda.is_available();
            count = available ? torch.cuda.device_count() : 0;
        }
        catch (Exception ex)
        {
            available = false;
            count = 0;
            failure = ex.Message;
        }
        if (!available)
        {
            throw new DareException(DareErrorId.DeviceUnavailable, DareErrorKind.NotInstalled,
                $"The device '{Name}' was asked for, but TorchSharp reports that CUDA is not available (torch.cuda.is_available() is false" +
                (failure is null ? "" : $": {failure}") + "). This module is built with TorchSharp-cpu unless it was built with `./build.ps1 Build -Cuda` " +
                "on a machine whose NVIDIA driver matches; use -Device cpu (the default) here.");
        }
        if (CudaIndex >= count)
        {
            throw new DareException(DareErrorId.DeviceUnavailable, DareErrorKind.InvalidArgument,
                $"The device '{Name}' was asked for, but TorchSharp reports {count} CUDA device(s) (cuda:0 to cuda:{count - 1}).");
        }
        torch.InitializeDeviceType(DeviceType.CUDA);
    }

    /// <summary>The TorchSharp device the backend computes on.</summary>
    internal torch.Device TorchDevice => IsCuda ? new torch.Device(DeviceType.CUDA, CudaIndex!.Value) : new torch.Device(DeviceType.CPU);
}
