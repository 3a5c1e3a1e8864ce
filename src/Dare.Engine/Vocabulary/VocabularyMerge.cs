using System.Text.Json;
using System.Text.Json.Nodes;
using Dare.Engine.Safetensors;
using static TorchSharp.torch;

namespace Dare.Engine.Merge;

/// <summary>Files and config.json changes an output with its own vocabulary needs (a merged tokenizer.json, vocab_size).</summary>
public sealed record VocabularyOutput(IReadOnlyDictionary<string, string> Files, long VocabSize)
{
    /// <summary>tokenizer_source: &lt;model&gt;: the folder whose tokenizer files (tokenizer.model included) replace the base's.</summary>
    public string? TokenizerFilesFrom { get; init; }
}

/// <summary>
/// Turns a <see cref="VocabularyAlignment"/> into what the executor merges: the base with its vocabulary tensors
/// re-rowed to the output vocabulary (rows gathered from the stored tensors, plus computed default rows) and one input
/// per model whose δ is (its row − the base's row) where it has the token, and zero where it takes the default (so a
/// row a model lacks contributes no delta, as with mergekit's permuted embeddings).
/// </summary>
internal static class VocabularyMerge
{
    private const int RowBlock = 256;

    public static (Checkpoint Base, FineTunedDelta[] Inputs) Build(VocabularyAlignment a, IReadOnlyList<IReadOnlyList<string>> missing, IReadOnlyList<IReadOnlyList<string>> notes)
    {
        // Rows are averaged and converted through torch: aligning vocabularies loads libtorch.
        TorchRuntime.EnsureInitialized();
        using var scope = NewDisposeScope();
        using var reader = new TensorReader();
        var @base = a.Participants[0];
        var replaced = new Dictionary<string, TensorInfo>(StringComparer.Ordinal);
        foreach (var name in a.Tensors)
        {
            var extended = ExtendedBase(a, reader, name);
            if (extended is not null) replaced[name] = extended;
        }
        var output = OutputFiles(a);
        var outputBase = replaced.Count == 0 && output is null ? @base : @base.WithReplacedTensors(replaced, output);
        var inputs = new FineTunedDelta[a.Participants.Length - 1];
        for (var p = 1; p < a.Participants.Length; p++)
        {
            var aliases = new Dictionary<string, TensorInfo>(StringComparer.Ordinal);
            var aligned = new Dictionary<string, AlignedRows>(StringComparer.Ordinal);
            foreach (var name in a.Tensors)
            {
                var tuned = a.TensorOf(p, name);
                if (tuned is null) continue;
                var own = Enumerable.Range(0, (int)a.OutRows).Select(r => a.OwnRow(p, r)).ToArray();
                var unchanged = !replaced.ContainsKey(name) && tuned.Shape[0] == a.OutRows && own.Select((row, r) => row == r).All(x => x);
                if (unchanged)
                {
                    if (!ReferenceEquals(tuned, a.Participants[p].Find(name))) aliases[name] = tuned;
                    continue;
                }
                var baseRows = outputBase.Find(name)!;
                aligned[name] = new AlignedRows(tuned, baseRows.Shape[1], own, MeanDeltas(a, reader, p, tuned, baseRows));
            }
            // Heads a tied model lacks (when the vocabularies agree) are its embedding.
            foreach (var info in @base.Tensors)
            {
                if (!aligned.ContainsKey(info.Name) && !aliases.ContainsKey(info.Name) && a.Participants[p].Find(info.Name) is null
                    && a.Architecture.TiedSource(a.Participants[p], info.Name) is { } tied && tied.Shape.SequenceEqual(info.Shape)) aliases[info.Name] = tied;
            }
            inputs[p - 1] = new FineTunedDelta(a.Participants[p], missing[p - 1].Where(m => !aliases.ContainsKey(m) && !aligned.ContainsKey(m)).ToList(), aliases, aligned, notes[p - 1]);
        }
        return (outputBase, inputs);
    }

    /// <summary>The base's tensor re-rowed to the output vocabulary, or null when it is unchanged.</summary>
    private static TensorInfo? ExtendedBase(VocabularyAlignment a, TensorReader reader, string name)
    {
        var stored = a.Participants[0].Find(name)!;
        var rowLength = stored.Shape[1];
        var runs = new List<RowRun>();
        var meanRows = new List<long>();
        var unchanged = a.OutRows == stored.Shape[0];
        for (long r = 0; r < a.OutRows; r++)
        {
            var own = a.OwnRow(0, r);
            unchanged &= own == r;
            if (own >= 0)
            {
                AddStored(runs, r, stored, own);
                continue;
            }
            var fallback = a.Defaults[r]!.Value;
            switch (fallback.Kind)
            {
                case RowDefaultKind.Donor when a.TensorOf(fallback.Participant, name) is { } donor:
                    if (donor.DType == stored.DType) AddStored(runs, r, donor, fallback.Row);
                    else runs.Add(new RowRun(r, 1, null, 0, RowBytes(ReadRows(reader, donor, fallback.Row, 1), stored.DType)));
                    break;
                case RowDefaultKind.Average:
                    var sum = new double[rowLength];
                    var count = 0;
                    foreach (var (participant, row) in fallback.Rows!)
                    {
                        if (a.TensorOf(participant, name) is not { } from) continue;
                        var values = ReadRows(reader, from, row, 1);
                        for (var c = 0; c < rowLength; c++) sum[c] += values[c];
                        count++;
                    }
                    runs.Add(new RowRun(r, 1, null, 0, RowBytes(sum.Select(v => count == 0 ? 0 : v / count).ToArray(), stored.DType)));
                    break;
                case RowDefaultKind.Mean:
                    meanRows.Add(r);
                    break;
                default:
                    runs.Add(new RowRun(r, 1, null, 0, new byte[rowLength * stored.DType.ElementSize()]));
                    break;
            }
        }
        if (unchanged) return null;
        if (meanRows.Count > 0)
        {
            // mergekit: rows added by pad_to_multiple_of take the mean of the (re-rowed) embedding's token rows.
            var partial = new RowAssembly(rowLength, stored.DType, runs).Info(name, stored.File);
            var mean = MeanOfRows(reader, partial, meanRows[0], rowLength, _ => true);
            var bytes = RowBytes(mean, stored.DType);
            foreach (var r in meanRows) runs.Add(new RowRun(r, 1, null, 0, bytes));
        }
        return new RowAssembly(rowLength, stored.DType, runs).Info(name, stored.File);
    }

    /// <summary>δ rows for padding rows: the mean over token rows of (own row − base row) where the model has the token.</summary>
    private static IReadOnlyDictionary<long, float[]> MeanDeltas(VocabularyAlignment a, TensorReader reader, int participant, TensorInfo tuned, TensorInfo baseRows)
    {
        var meanRows = Enumerable.Range(0, (int)a.OutRows).Where(r => a.IsMeanRow(r)).Select(r => (long)r).ToList();
        if (meanRows.Count == 0) return new Dictionary<long, float[]>();
        var rowLength = baseRows.Shape[1];
        var sum = new double[rowLength];
        for (long r = 0; r < meanRows[0]; r++)
        {
            var own = a.OwnRow(participant, r);
            if (own < 0) continue;
            var mine = ReadRows(reader, tuned, own, 1);
            var theirs = ReadRows(reader, baseRows, r, 1);
            for (var c = 0; c < rowLength; c++) sum[c] += mine[c] - theirs[c];
        }
        var delta = sum.Select(v => (float)(v / meanRows[0])).ToArray();
        return meanRows.ToDictionary(r => r, _ => delta);
    }

    private static double[] MeanOfRows(TensorReader reader, TensorInfo info, long rows, long rowLength, Func<long, bool> include)
    {
        var sum = new double[rowLength];
        for (long first = 0; first < rows; first += RowBlock)
        {
            var block = Math.Min(RowBlock, rows - first);
            var values = ReadRows(reader, info, first, block);
            for (var r = 0; r < block; r++)
            {
                for (var c = 0; c < rowLength; c++) sum[c] += values[r * rowLength + c];
            }
        }
        return sum.Select(v => v / rows).ToArray();
    }

    private static void AddStored(List<RowRun> runs, long row, TensorInfo source, long sourceRow)
    {
        if (runs.Count > 0 && runs[^1] is { Source: { } last } run && ReferenceEquals(last, source)
            && run.FirstRow + run.RowCount == row && run.SourceFirstRow + run.RowCount == sourceRow)
        {
            runs[^1] = run with { RowCount = run.RowCount + 1 };
            return;
        }
        runs.Add(new RowRun(row, 1, source, sourceRow, null));
    }

    private static double[] ReadRows(TensorReader reader, TensorInfo info, long firstRow, long rows)
    {
        var rowLength = info.Shape[1];
        using var stored = reader.ReadRange(info, firstRow * rowLength, rows * rowLength);
        using var wide = stored.to_type(ScalarType.Float64);
        return wide.data<double>().ToArray();
    }

    private static byte[] RowBytes(double[] row, SafetensorsDType dtype)
    {
        using var wide = tensor(row);
        using var narrow = wide.to_type(dtype.ToScalarType()).contiguous();
        return narrow.bytes.ToArray();
    }

    /// <summary>The output's tokenizer files when its vocabulary is not the base's: the union's (UnionTokenizerFiles), or the chosen model's files.</summary>
    private static VocabularyOutput? OutputFiles(VocabularyAlignment a)
    {
        var files = new Dictionary<string, string>(StringComparer.Ordinal);
        string? tokenizerFolder = null;
        switch (a.Choice.Kind)
        {
            case TokenizerSourceKind.Model:
                // The writer copies that model's tokenizer files instead of the base's (binary tokenizer.model included, none of the base's left).
                tokenizerFolder = a.Participants.First(m => string.Equals(m.Path, Path.GetFullPath(a.Choice.Model!), StringComparison.Ordinal)).Directory;
                break;
            case TokenizerSourceKind.Union:
                UnionTokenizerFiles.Write(a, files);
                break;
        }
        var baseRows = a.Participants[0].Find(a.Tensors[0])!.Shape[0];
        if (files.Count == 0 && tokenizerFolder is null && a.OutRows == baseRows) return null;
        return new VocabularyOutput(files, a.OutRows) { TokenizerFilesFrom = tokenizerFolder };
    }
}
