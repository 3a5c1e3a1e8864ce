using Dare.Engine.Safetensors;

namespace Dare.Engine.Merge;

/// <summary>
/// δ = fine-tuned − base, read from a fine-tuned checkpoint. A base tensor the model stores under another name (a
/// tied model's head is its embedding) is read through <paramref name="aliases"/>; a vocabulary tensor whose rows
/// follow another tokenizer through <paramref name="aligned"/> (<see cref="AlignedRows"/>).
/// </summary>
internal sealed class FineTunedDelta(Checkpoint model, IReadOnlyList<string> missingTensors,
    IReadOnlyDictionary<string, TensorInfo>? aliases = null, IReadOnlyDictionary<string, AlignedRows>? aligned = null, IReadOnlyList<string>? notes = null) : ITaskInput
{
    public string Name => model.Name;
    public Checkpoint? Model => model;
    public IReadOnlyList<string> MissingTensors => missingTensors;
    public IReadOnlyList<string> Notes => notes ?? Array.Empty<string>();

    public IInputTensor? Open(TensorInfo baseTensor)
    {
        if (aligned is not null && aligned.TryGetValue(baseTensor.Name, out var rows)) return new RowsPart(rows);
        if (aliases is not null && aliases.TryGetValue(baseTensor.Name, out var alias)) return new StoredMinusBase(alias);
        return model.Find(baseTensor.Name) is { } tuned ? new StoredMinusBase(tuned) : null;
    }

    /// <summary>δ of a re-rowed vocabulary tensor: (own row − base row) where the model has the row's token, a given δ for padding rows, else 0.</summary>
    private sealed class RowsPart(AlignedRows rows) : IInputTensor
    {
        public TensorInfo? StoredBFloat16 => null;
        public bool NeedsBase => true;

        public unsafe ChunkView ReadDelta(ChunkReader chunks, int slot, ChunkView baseChunk, long first, long count)
        {
            var delta = chunks.Workspace.Floats(slot, count).Zero();
            var width = rows.RowLength;
            var end = first + count;
            for (var row = first / width; row * width < end;)
            {
                var start = Math.Max(first, row * width);
                var own = rows.Own[row];
                if (rows.ConstantDeltas.TryGetValue(row, out var constant))
                {
                    var stop = Math.Min(end, (row + 1) * width);
                    constant.AsSpan((int)(start - row * width), (int)(stop - start)).CopyTo(new Span<float>(delta.Slice(start - first, stop - start).Floats, (int)(stop - start)));
                    row++;
                    continue;
                }
                if (own < 0)
                {
                    row++;
                    continue;
                }
                // A run of rows whose model rows follow each other is read at once (usually the whole chunk).
                var last = row;
                while (last + 1 < rows.Own.Length && (last + 1) * width < end && rows.Own[last + 1] == rows.Own[last] + 1 && !rows.ConstantDeltas.ContainsKey(last + 1)) last++;
                var runEnd = Math.Min(end, (last + 1) * width);
                var stored = chunks.Stage(rows.Tuned, own * width + (start - row * width), runEnd - start);
                delta.Slice(start - first, runEnd - start).CopyFrom(stored).Subtract(baseChunk.Slice(start - first, runEnd - start));
                row = last + 1;
            }
            return delta;
        }

        public void Prefetch(TensorReader reader, long first, long count, bool readOnce) { }
    }
}

/// <summary>δ = a stored tensor − the base tensor of the same shape (a fine-tuned model's, or an adapter's full replacement).</summary>
internal sealed class StoredMinusBase(TensorInfo stored) : IInputTensor
{
    public TensorInfo? StoredBFloat16 => stored.DType == SafetensorsDType.BF16 ? stored : null;
    public bool NeedsBase => true;

    public ChunkView ReadDelta(ChunkReader chunks, int slot, ChunkView baseChunk, long first, long count)
    {
        var values = chunks.ReadFloat32(slot, stored, first, count);
        using (PhaseProfile.Time(chunks.Profile, Phase.Delta)) return values.Subtract(baseChunk);
    }

    public void Prefetch(TensorReader reader, long first, long count, bool readOnce) => reader.Prefetch(stored, first, count, readOnce);
}

/// <summary>A model's vocabulary tensor re-rowed to the output vocabulary: output row r is its row Own[r] (−1: no δ there), padding rows take a given δ.</summary>
internal sealed record AlignedRows(TensorInfo Tuned, long RowLength, int[] Own, IReadOnlyDictionary<long, float[]> ConstantDeltas);
