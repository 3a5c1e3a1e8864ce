using Dare.Engine;
using TorchSharp;
using Xunit;

namespace Dare.Engine.Tests;

public class TorchRuntimeTests
{
    [Fact]
    public void Bfloat16_round_trip_keeps_values_that_bf16_represents_exactly()
    {
        TorchRuntime.EnsureInitialized();
        // 1.5, -2.25, 0.0078125 (2^-7) and 3.0e38-ish scale values all have 8-bit mantissas.
        float[] values = { 1.5f, -2.25f, 0.0078125f, 256f };
        using var f32 = torch.tensor(values);
        using var bf16 = f32.to_type(torch.ScalarType.BFloat16);
        using var back = bf16.to_type(torch.ScalarType.Float32);
        Assert.Equal(values, back.data<float>().ToArray());
    }

    [Fact]
    public void Bfloat16_conversion_rounds_to_nearest_even()
    {
        TorchRuntime.EnsureInitialized();
        // 1 + 2^-8 lies exactly halfway between bf16 neighbours 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
        // 1 + 3*2^-8 lies halfway between 1 + 2^-7 and 1 + 2^-6: ties go to 1 + 2^-6.
        using var f32 = torch.tensor(new[] { 1f + 1f / 256, 1f + 3f / 256 });
        using var back = f32.to_type(torch.ScalarType.BFloat16).to_type(torch.ScalarType.Float32);
        Assert.Equal(new[] { 1f, 1f + 1f / 64 }, back.data<float>().ToArray());
    }

    [Fact]
    public void Environment_probe_reports_the_pinned_versions()
    {
        var environment = DareEnvironment.Probe();
        Assert.Equal("0.107.0", environment.TorchSharpVersion);
        Assert.Equal("2.10.0", environment.LibTorchVersion);
        Assert.Contains("cpu", environment.Devices);
        Assert.True(environment.TorchThreads >= 1);
    }
}
