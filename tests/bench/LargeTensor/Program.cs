// Writes one U8 tensor of 2^31 + 1,000,003 elements (> 2^31 bytes, > 2^31 elements) through CheckpointWriter in
// chunks, reads it back through Checkpoint + TensorReader (ranged reads across the 2^31 boundary and one
// whole-tensor read), and checks every byte against the pattern. Exit code 0 on success.
using System.Diagnostics;
using Dare.Engine;
using Dare.Engine.Safetensors;
using TorchSharp;
using static TorchSharp.torch;

const long Elements = (1L << 31) + 1_000_003;
static byte Pattern(long i) => (byte)((i * 31 + 7) ^ (i >> 31) * 101);

var folder = args.Length > 0 ? args[0] : Path.Combine(Path.GetTempPath(), "dare-large-tensor");
var clock = Stopwatch.StartNew();
TorchRuntime.EnsureInitialized();
if (Directory.Exists(folder)) Directory.Delete(folder, true);

var plan = new[] { new PlannedTensor("big", SafetensorsDType.U8, new[] { Elements }), new PlannedTensor("after", SafetensorsDType.F32, new long[] { 3 }) };
var chunk = new byte[64 << 20];
unsafe
{
    using var writer = CheckpointWriter.Create(folder, plan, new CheckpointWriteOptions());
    writer.BeginTensor("big");
    for (long first = 0; first < Elements; first += chunk.Length)
    {
        var count = (int)Math.Min(chunk.Length, Elements - first);
        for (var j = 0; j < count; j++) chunk[j] = Pattern(first + j);
        fixed (byte* p = chunk) writer.Append(p, count);
    }
    using var after = tensor(new[] { 1f, 2f, 3f });
    writer.WriteTensor("after", after);
    writer.Commit();
}
Console.WriteLine($"wrote {Elements:N0} bytes in {clock.Elapsed.TotalSeconds:0.0} s");

var checkpoint = Checkpoint.Open(folder);
var info = checkpoint.Find("big")!;
Check(info.ByteLength == Elements && info.ElementCount == Elements, "header reports the full length");
using var reader = new TensorReader();
long mismatches = 0;
foreach (var start in new[] { 0L, (1L << 31) - 5000, Elements - 70000 })
{
    using var range = reader.ReadRange(info, start, 70000);
    var bytes = range.bytes;
    for (var j = 0; j < bytes.Length; j++) if (bytes[j] != Pattern(start + j)) mismatches++;
}
Check(mismatches == 0, "ranged reads across the 2^31 boundary match");

using (var whole = reader.Read(info))
{
    Check(whole.shape[0] == Elements, "whole read has every element");
    foreach (var i in new[] { 0L, 12345L, (1L << 31) - 1, 1L << 31, Elements - 1 })
    {
        Check(whole[i].ToByte() == Pattern(i), $"element {i} of the whole read");
    }
}
using (var after = reader.Read(checkpoint.Find("after")!))
{
    Check(after.data<float>().SequenceEqual(new[] { 1f, 2f, 3f }), "the tensor after the big one reads back");
}
Directory.Delete(folder, true);
Console.WriteLine($"large tensor round trip OK in {clock.Elapsed.TotalSeconds:0.0} s");

static void Check(bool condition, string what)
{
    if (condition) return;
    Console.Error.WriteLine($"FAILED: {what}");
    Environment.Exit(1);
}
