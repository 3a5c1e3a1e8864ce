using System.Buffers.Binary;
using System.Diagnostics;
using System.Text;
using System.Text.RegularExpressions;
using Dare.Engine.Safetensors;
using Xunit;
using Xunit.Abstractions;

namespace Dare.Engine.Tests.Safetensors;

/// <summary>
/// Seeded random mutations of valid files. Whatever the bytes, opening either fails with a DareException or succeeds
/// with a consistent layout whose every tensor then reads without any other exception type. Never a crash, never a hang.
/// </summary>
public sealed partial class SafetensorsFuzzTests : IDisposable
{
    private const int Seed = 1234;
    private static readonly TimeSpan HangLimit = TimeSpan.FromSeconds(60);

    private readonly TempDirectory _temp = new();
    private readonly ITestOutputHelper _output;

    public SafetensorsFuzzTests(ITestOutputHelper output)
    {
        _output = output;
        TorchRuntime.EnsureInitialized();
    }

    public void Dispose() => _temp.Dispose();

    /// <summary>False when <paramref name="run"/> is still going after <see cref="HangLimit"/> (a hang); its own failure rethrows.</summary>
    private static async Task<bool> Finishes(Task run)
    {
        try
        {
            await run.WaitAsync(HangLimit);
            return true;
        }
        catch (TimeoutException)
        {
            return false;
        }
    }

    private sealed class Outcomes
    {
        public int Cases;
        public int Accepted;
        public readonly Dictionary<DareErrorId, int> Rejected = new();
        public readonly List<string> Failures = new();
        public override string ToString() =>
            $"{Cases} cases: {Accepted} accepted, rejected as " + string.Join(", ", Rejected.OrderByDescending(p => p.Value).Select(p => $"{p.Key} ({p.Value})"));
    }

    private static IReadOnlyList<byte[]> ValidFiles() => new[]
    {
        RawSafetensors.Build(Samples.AllDTypes()),
        RawSafetensors.Build(Samples.SmallModel(1), new Dictionary<string, string> { ["format"] = "pt", ["note"] = "fuzz" }),
        RawSafetensors.Build(new[] { new RawTensor("w", "F32", new long[] { 2, 3 }, RawData.F32(1, 2, 3, 4, 5, 6)) }, pad: false),
        RawSafetensors.Build(new[]
        {
            new RawTensor("empty", "BF16", new long[] { 0, 3 }, Array.Empty<byte>()),
            new RawTensor("scalar", "I64", Array.Empty<long>(), RawData.I64(7)),
            new RawTensor("b", "BOOL", new long[] { 3 }, RawData.Bool(true, false, true)),
        }),
    };

    [Fact]
    public async Task Mutated_files_either_fail_with_DareException_or_read_completely()
    {
        var outcomes = new Outcomes();
        var path = _temp["fuzz.safetensors"];
        var run = Task.Run(() =>
        {
            var random = new Random(Seed);
            var originals = ValidFiles();
            foreach (var original in originals) Check(original, path, "unmutated", outcomes); // the baselines must open
            Assert.Equal(originals.Count, outcomes.Accepted);

            var mutators = Mutators();
            for (var i = 0; i < 5000; i++)
            {
                var original = originals[random.Next(originals.Count)];
                var (name, mutate) = mutators[random.Next(mutators.Length)];
                var mutated = mutate(original, random);
                if (random.Next(4) == 0 && mutated.Length >= 16) // sometimes stack a second mutation
                {
                    var (second, mutateAgain) = mutators[random.Next(mutators.Length)];
                    mutated = mutateAgain(mutated, random);
                    name += " + " + second;
                }
                Check(mutated, path, $"case {i}: {name}", outcomes);
            }
        });

        var stopwatch = Stopwatch.StartNew();
        Assert.True(await Finishes(run), $"fuzzing did not finish within {HangLimit} ({outcomes.Cases} cases done): a hang");
        _output.WriteLine($"{outcomes} in {stopwatch.Elapsed.TotalSeconds:0.0} s");

        Assert.Empty(outcomes.Failures);
        // The mutations must reach both outcomes and many distinct checks, or this test proves little.
        Assert.InRange(outcomes.Accepted, 50, outcomes.Cases - 50);
        Assert.True(outcomes.Rejected.Count >= 8, $"only {outcomes.Rejected.Count} distinct error ids were reached: {outcomes}");
    }

    [Fact]
    public async Task Mutated_shard_indexes_either_fail_with_DareException_or_open_consistently()
    {
        var folder = _temp.CreateFolder("sharded");
        var tensors = Samples.SmallModel(2);
        RawSafetensors.WriteShardedFolder(folder, new IReadOnlyList<RawTensor>[] { tensors.Take(3).ToList(), tensors.Skip(3).Take(3).ToList(), tensors.Skip(6).ToList() });
        var indexPath = Path.Combine(folder, RawSafetensors.IndexFileName);
        var original = File.ReadAllBytes(indexPath);
        var outcomes = new Outcomes();

        var run = Task.Run(() =>
        {
            var random = new Random(Seed);
            var mutators = JsonTextMutators();
            for (var i = 0; i < 600; i++)
            {
                var (name, mutate) = mutators[random.Next(mutators.Length)];
                File.WriteAllBytes(indexPath, mutate(original, random));
                outcomes.Cases++;
                try
                {
                    var checkpoint = Checkpoint.Open(folder);
                    outcomes.Accepted++;
                    // Accepted: the index still describes exactly these tensors.
                    if (!checkpoint.Tensors.Select(t => t.Name).Order().SequenceEqual(tensors.Select(t => t.Name).Order()))
                    {
                        outcomes.Failures.Add($"case {i}: {name}: opened with tensors {string.Join(", ", checkpoint.Tensors.Select(t => t.Name))}");
                    }
                }
                catch (DareException ex)
                {
                    outcomes.Rejected[ex.ErrorId] = outcomes.Rejected.GetValueOrDefault(ex.ErrorId) + 1;
                }
                catch (Exception ex)
                {
                    outcomes.Failures.Add($"case {i}: {name}: {ex.GetType().Name}: {ex.Message}");
                }
            }
        });

        Assert.True(await Finishes(run), $"fuzzing did not finish within {HangLimit}: a hang");
        _output.WriteLine(outcomes.ToString());
        Assert.Empty(outcomes.Failures);
        Assert.InRange(outcomes.Accepted, 10, outcomes.Cases - 10);
    }

    /// <summary>Opens and reads one candidate file, recording how it ended.</summary>
    private static void Check(byte[] bytes, string path, string description, Outcomes outcomes)
    {
        outcomes.Cases++;
        File.WriteAllBytes(path, bytes);
        try
        {
            Checkpoint checkpoint;
            try
            {
                checkpoint = Checkpoint.Open(path);
            }
            catch (DareException ex)
            {
                outcomes.Rejected[ex.ErrorId] = outcomes.Rejected.GetValueOrDefault(ex.ErrorId) + 1;
                return;
            }
            outcomes.Accepted++;

            // Accepted files must really be valid: the tensors tile the data block after the header.
            var headerLength = (long)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
            if (checkpoint.SizeBytes != bytes.Length - 8 - headerLength)
            {
                outcomes.Failures.Add($"{description}: accepted, but tensors cover {checkpoint.SizeBytes} bytes of a {bytes.Length - 8 - headerLength}-byte data block");
            }
            using var reader = new TensorReader();
            foreach (var info in checkpoint.Tensors)
            {
                if (info.DataOffset < 8 + headerLength || info.DataOffset + info.ByteLength > bytes.Length)
                {
                    outcomes.Failures.Add($"{description}: accepted tensor '{info.Name}' lies outside the data block");
                    continue;
                }
                try
                {
                    using var tensor = reader.Read(info);
                    if (tensor.NumberOfElements * tensor.ElementSize != info.ByteLength)
                    {
                        outcomes.Failures.Add($"{description}: tensor '{info.Name}' read as {tensor.NumberOfElements * tensor.ElementSize} bytes, expected {info.ByteLength}");
                    }
                }
                catch (DareException)
                {
                    // Allowed: a reported read failure.
                }
            }
        }
        catch (Exception ex)
        {
            if (outcomes.Failures.Count < 20) outcomes.Failures.Add($"{description}: {ex.GetType().FullName}: {ex.Message.Split('\n')[0]}");
        }
    }

    private delegate byte[] Mutator(byte[] original, Random random);

    private static long HeaderEnd(byte[] bytes) =>
        bytes.Length < 8 ? bytes.Length : (long)Math.Min(BinaryPrimitives.ReadUInt64LittleEndian(bytes), (ulong)(bytes.Length - 8)) + 8;

    /// <summary>Replaces the header text and rewrites the length prefix to match (keeps the data block).</summary>
    private static byte[] WithHeader(byte[] original, string header)
    {
        var end = (int)HeaderEnd(original);
        return RawSafetensors.Assemble(Encoding.UTF8.GetBytes(header), original[end..]);
    }

    private static string HeaderText(byte[] original) => Encoding.UTF8.GetString(original, 8, (int)HeaderEnd(original) - 8);

    private static readonly string[] InterestingNumbers =
    {
        "0", "1", "-1", "2", "3", "7", "8", "9", "15", "16", "17", "255", "256", "65535", "2147483647", "2147483648", "4294967295",
        "4294967296", "9223372036854775807", "9223372036854775808", "18446744073709551615", "18446744073709551616",
        "-9223372036854775808", "1.5", "-0", "0.0", "1e3", "1E400", "00", "99999999999999999999999999",
    };

    private static readonly string[] InterestingText =
    {
        "F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2", "F128", "", "__metadata__", "a", "1",
    };

    private static (string, Mutator)[] Mutators() => new (string, Mutator)[]
    {
        ("flip header bytes", (o, r) =>
        {
            var m = o.ToArray();
            var end = (int)HeaderEnd(m);
            for (var k = r.Next(1, 5); k > 0; k--) m[r.Next(8, end)] ^= (byte)r.Next(1, 256);
            return m;
        }),
        ("set a header byte to JSON punctuation", (o, r) =>
        {
            var m = o.ToArray();
            const string punctuation = "{}[]\":,- 0123456789eE.\\";
            m[r.Next(8, (int)HeaderEnd(m))] = r.Next(10) == 0 ? (byte)r.Next(0x80, 0x100) : (byte)punctuation[r.Next(punctuation.Length)];
            return m;
        }),
        ("flip any bytes", (o, r) =>
        {
            var m = o.ToArray();
            for (var k = r.Next(1, 9); k > 0; k--) m[r.Next(m.Length)] ^= (byte)(1 << r.Next(8));
            return m;
        }),
        ("truncate", (o, r) => o[..r.Next(o.Length)]),
        ("truncate inside the data block", (o, r) => o[..r.Next((int)HeaderEnd(o), o.Length)]),
        ("change the length prefix by a little", (o, r) =>
        {
            var m = o.ToArray();
            var length = BinaryPrimitives.ReadUInt64LittleEndian(m);
            BinaryPrimitives.WriteUInt64LittleEndian(m, unchecked(length + (ulong)(r.Next(-16, 17))));
            return m;
        }),
        ("replace the length prefix", (o, r) =>
        {
            var m = o.ToArray();
            ulong[] choices = { 0, 1, 2, (ulong)m.Length, (ulong)m.Length - 8, 100UL << 20, (100UL << 20) + 1, uint.MaxValue, long.MaxValue, ulong.MaxValue, 1UL << 63 };
            BinaryPrimitives.WriteUInt64LittleEndian(m, r.Next(3) == 0 ? (ulong)r.NextInt64() : choices[r.Next(choices.Length)]);
            return m;
        }),
        ("flip a bit of the length prefix", (o, r) =>
        {
            var m = o.ToArray();
            m[r.Next(8)] ^= (byte)(1 << r.Next(8));
            return m;
        }),
        ("splice random bytes in", (o, r) =>
        {
            var at = r.Next(o.Length + 1);
            var insert = new byte[r.Next(1, 17)];
            r.NextBytes(insert);
            return o[..at].Concat(insert).Concat(o[at..]).ToArray();
        }),
        ("overwrite a run with random bytes", (o, r) =>
        {
            var m = o.ToArray();
            var at = r.Next(m.Length);
            var run = new byte[Math.Min(r.Next(1, 33), m.Length - at)];
            r.NextBytes(run);
            run.CopyTo(m, at);
            return m;
        }),
        ("delete a run", (o, r) =>
        {
            var at = r.Next(o.Length);
            return o[..at].Concat(o[Math.Min(o.Length, at + r.Next(1, 17))..]).ToArray();
        }),
        ("splice random bytes into the header, prefix fixed up", (o, r) =>
        {
            var header = Encoding.UTF8.GetBytes(HeaderText(o));
            var at = r.Next(header.Length + 1);
            var insert = new byte[r.Next(1, 9)];
            r.NextBytes(insert);
            return RawSafetensors.Assemble(header[..at].Concat(insert).Concat(header[at..]).ToArray(), o[(int)HeaderEnd(o)..]);
        }),
        ("edit a JSON number", (o, r) => WithHeader(o, ReplaceRandomMatch(HeaderText(o), NumberPattern(), r, () => InterestingNumbers[r.Next(InterestingNumbers.Length)]))),
        ("nudge a JSON number", (o, r) => WithHeader(o, ReplaceRandomMatch(HeaderText(o), NumberPattern(), r, m => (long.Parse(m) + r.Next(-9, 10)).ToString()))),
        ("edit a JSON string", (o, r) => WithHeader(o, ReplaceRandomMatch(HeaderText(o), StringPattern(), r, () => $"\"{InterestingText[r.Next(InterestingText.Length)]}\""))),
        ("give a tensor another tensor's name", (o, r) =>
        {
            var header = HeaderText(o);
            var keys = KeyPattern().Matches(header).Select(m => m.Value).Distinct().ToList();
            if (keys.Count < 2) return o;
            var (from, to) = (keys[r.Next(keys.Count)], keys[r.Next(keys.Count)]);
            var at = header.IndexOf(from, StringComparison.Ordinal);
            return WithHeader(o, header[..at] + to + header[(at + from.Length)..]);
        }),
        ("append to the data block", (o, r) => o.Concat(new byte[r.Next(1, 9)]).ToArray()),
        ("append to the header", (o, r) =>
            WithHeader(o, HeaderText(o) + new[] { " ", "}", ",", "\0", "{}", "\"x\"" }[r.Next(6)])),
    };

    private static (string, Mutator)[] JsonTextMutators() => new (string, Mutator)[]
    {
        ("flip bytes", (o, r) =>
        {
            var m = o.ToArray();
            for (var k = r.Next(1, 4); k > 0; k--) m[r.Next(m.Length)] ^= (byte)r.Next(1, 256);
            return m;
        }),
        ("truncate", (o, r) => o[..r.Next(o.Length)]),
        ("edit a string", (o, r) => Encoding.UTF8.GetBytes(ReplaceRandomMatch(Encoding.UTF8.GetString(o), StringPattern(), r,
            () => new[] { "\"model-00001-of-00003.safetensors\"", "\"model-00003-of-00003.safetensors\"", "\"weight_map\"", "\"../x\"", "\"\"", "\"lm_head.weight\"", "\"metadata\"" }[r.Next(7)]))),
        ("edit a number", (o, r) => Encoding.UTF8.GetBytes(ReplaceRandomMatch(Encoding.UTF8.GetString(o), NumberPattern(), r, () => InterestingNumbers[r.Next(InterestingNumbers.Length)]))),
        ("splice bytes", (o, r) =>
        {
            var at = r.Next(o.Length + 1);
            var insert = new byte[r.Next(1, 6)];
            r.NextBytes(insert);
            return o[..at].Concat(insert).Concat(o[at..]).ToArray();
        }),
        ("duplicate a line", (o, r) =>
        {
            var lines = Encoding.UTF8.GetString(o).Split('\n').ToList();
            var at = r.Next(lines.Count);
            lines.Insert(at, lines[at]);
            return Encoding.UTF8.GetBytes(string.Join('\n', lines));
        }),
        ("delete a line", (o, r) =>
        {
            var lines = Encoding.UTF8.GetString(o).Split('\n').ToList();
            lines.RemoveAt(r.Next(lines.Count));
            return Encoding.UTF8.GetBytes(string.Join('\n', lines));
        }),
    };

    private static string ReplaceRandomMatch(string text, Regex pattern, Random random, Func<string> replacement) =>
        ReplaceRandomMatch(text, pattern, random, _ => replacement());

    private static string ReplaceRandomMatch(string text, Regex pattern, Random random, Func<string, string> replacement)
    {
        var matches = pattern.Matches(text);
        if (matches.Count == 0) return text;
        var match = matches[random.Next(matches.Count)];
        return text[..match.Index] + replacement(match.Value) + text[(match.Index + match.Length)..];
    }

    [GeneratedRegex(@"-?\d{1,18}")]
    private static partial Regex NumberPattern();

    /// <summary>A key followed by an object: a tensor entry or __metadata__.</summary>
    [GeneratedRegex("\"[^\"]*\": ?\\{")]
    private static partial Regex KeyPattern();

    [GeneratedRegex("\"[^\"]*\"")]
    private static partial Regex StringPattern();
}
