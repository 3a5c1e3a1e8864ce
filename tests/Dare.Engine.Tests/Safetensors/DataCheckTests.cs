using System.Diagnostics;
using Dare.Engine.Safetensors;
using Xunit;

namespace Dare.Engine.Tests.Safetensors;

/// <summary>The NaN/Inf scan against a per-value reference, input identity checks, and regular-file checks.</summary>
public sealed class DataCheckTests : IDisposable
{
    private readonly TempDirectory _temp = new();

    public DataCheckTests() => TorchRuntime.EnsureInitialized();

    public void Dispose() => _temp.Dispose();

    /// <summary>Random finite values of <paramref name="dtype"/> with NaN/±Inf at <paramref name="poisoned"/>, and the reference count (via Half/float/double).</summary>
    private static (byte[] Bytes, long Expected) Values(SafetensorsDType dtype, int count, int[] poisoned, int seed)
    {
        var random = new Random(seed);
        var size = dtype.ElementSize();
        var bytes = new byte[count * size];
        var specials = new[] { double.NaN, double.PositiveInfinity, double.NegativeInfinity };
        var marked = poisoned.ToHashSet();
        for (var i = 0; i < count; i++)
        {
            // Large finite magnitudes too, so a check that looked at anything but the all-ones exponent would fail.
            var value = marked.Contains(i) ? specials[i % 3] : (random.NextDouble() - 0.5) * Math.Pow(2, random.Next(-20, 15));
            var span = bytes.AsSpan(i * size, size);
            switch (dtype)
            {
                case SafetensorsDType.F64: BitConverter.TryWriteBytes(span, value); break;
                case SafetensorsDType.F32: BitConverter.TryWriteBytes(span, (float)value); break;
                case SafetensorsDType.F16: BitConverter.TryWriteBytes(span, (Half)value); break;
                case SafetensorsDType.BF16: BitConverter.TryWriteBytes(span, (ushort)(BitConverter.SingleToUInt32Bits((float)value) >> 16)); break;
            }
        }
        long expected = 0;
        for (var i = 0; i < count; i++)
        {
            var span = bytes.AsSpan(i * size, size);
            var finite = dtype switch
            {
                SafetensorsDType.F64 => double.IsFinite(BitConverter.ToDouble(span)),
                SafetensorsDType.F32 => float.IsFinite(BitConverter.ToSingle(span)),
                SafetensorsDType.F16 => Half.IsFinite(BitConverter.ToHalf(span)),
                _ => float.IsFinite(BitConverter.UInt32BitsToSingle((uint)BitConverter.ToUInt16(span) << 16)),
            };
            if (!finite) expected++;
        }
        return (bytes, expected);
    }

    [Theory]
    [InlineData(SafetensorsDType.BF16)]
    [InlineData(SafetensorsDType.F16)]
    [InlineData(SafetensorsDType.F32)]
    [InlineData(SafetensorsDType.F64)]
    public unsafe void Scan_and_count_agree_with_a_per_value_reference_at_every_position_and_length(SafetensorsDType dtype)
    {
        // Lengths around the vector widths and the 4x unrolled loop; one poisoned value at each position in turn.
        foreach (var count in new[] { 0, 1, 7, 15, 16, 17, 63, 64, 65, 130 })
        {
            var (clean, none) = Values(dtype, count, Array.Empty<int>(), count);
            fixed (byte* data = clean)
            {
                Assert.Equal(0, none);
                Assert.False(FiniteCheck.AnyNonFinite(data, clean.Length, dtype), $"{dtype} x{count} clean");
                Assert.Equal(0, FiniteCheck.CountNonFinite(data, clean.Length, dtype));
            }
            for (var position = 0; position < count; position++)
            {
                var (bytes, expected) = Values(dtype, count, new[] { position }, count * 31 + position);
                fixed (byte* data = bytes)
                {
                    Assert.Equal(1, expected);
                    Assert.True(FiniteCheck.AnyNonFinite(data, bytes.Length, dtype), $"{dtype} x{count} at {position}");
                    Assert.Equal(expected, FiniteCheck.CountNonFinite(data, bytes.Length, dtype));
                }
            }
        }
    }

    [Theory]
    [InlineData(SafetensorsDType.BF16)]
    [InlineData(SafetensorsDType.F32)]
    public unsafe void Chunks_large_enough_to_be_split_over_cores_are_scanned_to_their_last_value(SafetensorsDType dtype)
    {
        var count = (12 << 20) / dtype.ElementSize() + 3; // 12 MB and a tail: several parts, uneven
        foreach (var position in new[] { 0, count / 2, count - 1 })
        {
            var (bytes, expected) = Values(dtype, count, new[] { position, position / 3 }, position);
            fixed (byte* data = bytes)
            {
                Assert.True(FiniteCheck.AnyNonFinite(data, bytes.Length, dtype));
                Assert.Equal(expected, FiniteCheck.CountNonFinite(data, bytes.Length, dtype));
            }
        }
        var (clean, _) = Values(dtype, count, Array.Empty<int>(), 5);
        fixed (byte* data = clean) Assert.False(FiniteCheck.AnyNonFinite(data, clean.Length, dtype));
    }

    [Fact]
    public unsafe void A_piece_scanned_on_one_core_allocates_nothing()
    {
        // The kernels scan every 64K-element piece of input and output as they go (~100K scans in a large export).
        var (clean, _) = Values(SafetensorsDType.BF16, 1 << 16, Array.Empty<int>(), 6);
        fixed (byte* data = clean)
        {
            Assert.False(FiniteCheck.AnyNonFinite(data, clean.Length, SafetensorsDType.BF16));
            var before = GC.GetAllocatedBytesForCurrentThread();
            for (var i = 0; i < 1000; i++) FiniteCheck.AnyNonFinite(data, clean.Length, SafetensorsDType.BF16);
            Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
        }
    }

    private string WriteModel(string name, float[] values, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var data = new byte[values.Length * 4];
        Buffer.BlockCopy(values, 0, data, 0, data.Length);
        return RawSafetensors.WriteFile(_temp[name], new[] { new RawTensor("w", "F32", new long[] { values.Length }, data) }, metadata);
    }

    [Fact]
    public unsafe void A_reader_with_a_guard_fails_on_a_NaN_naming_tensor_file_and_the_whole_tensor_count()
    {
        var values = Enumerable.Range(0, 100).Select(i => (float)i).ToArray();
        values[10] = float.NaN;
        values[90] = float.NegativeInfinity;
        var path = WriteModel("nan.safetensors", values);
        var info = SafetensorsFile.Open(path).Tensors[0];
        using var reader = new TensorReader(new NonFiniteGuard(allow: false, warn: null));
        var buffer = new float[20];
        fixed (float* destination = buffer)
        {
            reader.ReadElements(info, 20, 20, (byte*)destination); // a clean range passes
            var address = (IntPtr)destination;
            var failure = Assert.Throws<DareException>(() => reader.ReadElements(info, 0, 20, (byte*)address));
            Assert.Equal(DareErrorId.NonFiniteValues, failure.ErrorId);
            Assert.Equal(path, failure.FilePath);
            Assert.Equal("w", failure.TensorName);
            Assert.Contains(" 2 NaN/Inf", failure.Message); // counted over the tensor, not the chunk
        }
    }

    [Theory]
    [InlineData(5)] // in the first piece of the read
    [InlineData(700_000)] // in the third (reads are scanned 1 MB at a time)
    [InlineData(1_000_000 / 2 - 1)] // either side of where two cores split the read
    [InlineData(1_000_000 / 2)]
    [InlineData(1_000_000 - 1)] // the last element of the last, shorter piece
    public unsafe void A_NaN_is_found_in_any_piece_of_a_read_of_several_megabytes(int at)
    {
        var values = new float[1_000_000];
        values[at] = float.NaN;
        var path = WriteModel($"nan-{at}.safetensors", values);
        var info = SafetensorsFile.Open(path).Tensors[0];
        using var reader = new TensorReader(new NonFiniteGuard(allow: false, warn: null));
        var buffer = new float[values.Length];
        fixed (float* destination = buffer)
        {
            var address = (IntPtr)destination;
            var failure = Assert.Throws<DareException>(() => reader.ReadElements(info, 0, values.Length, (byte*)address));
            Assert.Equal(DareErrorId.NonFiniteValues, failure.ErrorId);
            Assert.Contains(" 1 NaN/Inf", failure.Message);
        }
    }

    [Fact]
    public unsafe void A_read_split_over_the_cores_puts_every_element_in_its_place()
    {
        var values = Enumerable.Range(0, 1_000_003).Select(i => (float)i).ToArray();
        var path = WriteModel("split.safetensors", values);
        var info = SafetensorsFile.Open(path).Tensors[0];
        using var reader = new TensorReader(new NonFiniteGuard(allow: false, warn: null));
        var buffer = new float[values.Length - 10];
        fixed (float* destination = buffer) reader.ReadElements(info, 7, buffer.Length, (byte*)destination);
        Assert.Equal(values.Skip(7).Take(buffer.Length), buffer);
    }

    [Fact]
    public unsafe void An_allowing_guard_warns_once_per_tensor_and_the_values_come_through()
    {
        var values = new float[64];
        values[3] = float.PositiveInfinity;
        var path = WriteModel("inf.safetensors", values);
        var info = SafetensorsFile.Open(path).Tensors[0];
        var warnings = new List<string>();
        using var reader = new TensorReader(new NonFiniteGuard(allow: true, warnings.Add));
        var buffer = new float[64];
        fixed (float* destination = buffer)
        {
            reader.ReadElements(info, 0, 64, (byte*)destination);
            reader.ReadElements(info, 0, 64, (byte*)destination); // a second pass: no second warning
        }
        Assert.True(float.IsPositiveInfinity(buffer[3]));
        var warning = Assert.Single(warnings);
        Assert.Contains("'w'", warning);
        Assert.Contains(" 1 NaN/Inf", warning);
    }

    [Fact]
    public void The_writer_fails_an_output_tensor_with_NaN_at_its_end_and_commits_nothing()
    {
        var values = new float[32];
        values[31] = float.NaN;
        var data = new byte[128];
        Buffer.BlockCopy(values, 0, data, 0, 128);
        var tensor = new RawTensor("out", "F32", new long[] { 32 }, data);
        var destination = _temp["written"];
        var failure = Assert.Throws<DareException>(() =>
        {
            using var writer = CheckpointWriter.Create(destination, WriterHelper.Plan(new[] { tensor }),
                new CheckpointWriteOptions { NonFinite = new NonFiniteGuard(false, null) });
            WriterHelper.WriteOne(writer, tensor, chunk: 40);
            writer.Commit();
        });
        Assert.Equal(DareErrorId.NonFiniteValues, failure.ErrorId);
        Assert.Contains(" 1 NaN/Inf", failure.Message);
        Assert.False(Directory.Exists(destination));
        Assert.Empty(Directory.GetDirectories(_temp.Path, ".*", SearchOption.TopDirectoryOnly));
    }

    [Fact]
    public unsafe void A_file_replaced_after_its_header_was_read_is_refused_with_InputChanged()
    {
        var path = WriteModel("model.safetensors", new float[] { 1, 2, 3, 4 });
        var info = SafetensorsFile.Open(path).Tensors[0];
        // Same tensor and values, longer header: the old offsets now point into the header.
        WriteModel("replacement.safetensors", new float[] { 1, 2, 3, 4 }, new Dictionary<string, string> { ["pad"] = new string('x', 4096) });
        File.Move(_temp["replacement.safetensors"], path, overwrite: true);
        using var reader = new TensorReader();
        var buffer = new float[4];
        fixed (float* destination = buffer)
        {
            var address = (IntPtr)destination;
            var failure = Assert.Throws<DareException>(() => reader.ReadElements(info, 0, 4, (byte*)address));
            Assert.Equal(DareErrorId.InputChanged, failure.ErrorId);
            Assert.Equal(path, failure.FilePath);
        }
        Assert.Equal(new float[4], buffer); // nothing was read
    }

    [Fact]
    public void Identity_tells_apart_a_rewrite_in_place_and_stays_equal_for_an_untouched_file()
    {
        var path = WriteModel("same.safetensors", new float[] { 1, 2 });
        var before = FileIdentity.Stat(path);
        using (var handle = File.OpenHandle(path)) Assert.Equal(before.Identity, FileIdentity.Of(handle));
        Assert.Equal(before, FileIdentity.Stat(path));
        File.AppendAllText(path, "x");
        var after = FileIdentity.Stat(path);
        Assert.Equal(FileKind.Regular, after.Kind);
        Assert.Equal(before.Identity.Inode, after.Identity.Inode);
        Assert.NotEqual(before.Identity, after.Identity);
        Assert.Equal(new FileInfo(path).Length, after.Identity.Size);
    }

    [Fact]
    public void Kinds_come_from_stat_without_opening_and_only_regular_or_missing_pass_the_check()
    {
        var fifo = _temp["pipe"];
        using (var mkfifo = Process.Start("mkfifo", fifo)) mkfifo.WaitForExit();
        var regular = WriteModel("file.safetensors", new float[] { 1 });
        File.CreateSymbolicLink(_temp["link"], regular);
        Assert.Equal(FileKind.Fifo, FileIdentity.Stat(fifo).Kind);
        Assert.Equal(FileKind.Directory, FileIdentity.Stat(_temp.Path).Kind);
        Assert.Equal(FileKind.Missing, FileIdentity.Stat(_temp["none"]).Kind);
        Assert.Equal(FileKind.Regular, FileIdentity.Stat(_temp["link"]).Kind);
        Assert.Equal(FileKind.CharacterDevice, FileIdentity.Stat("/dev/null").Kind);
        var failure = Assert.Throws<DareException>(() => Checkpoint.Open(fifo));
        Assert.Equal(DareErrorId.NotRegularFile, failure.ErrorId);
        Assert.Equal(fifo, failure.FilePath);
        Assert.Contains("FIFO", failure.Message);
    }
}
