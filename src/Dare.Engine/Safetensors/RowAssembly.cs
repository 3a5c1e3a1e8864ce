namespace Dare.Engine.Safetensors;

/// <summary>
/// A run of consecutive rows of an assembled tensor: rows [FirstRow, FirstRow + RowCount) come either from rows
/// [SourceFirstRow, …) of a stored tensor of the same dtype, or are one constant row repeated (its bytes in the
/// assembled tensor's dtype).
/// </summary>
internal sealed record RowRun(long FirstRow, long RowCount, TensorInfo? Source, long SourceFirstRow, byte[]? Constant);

/// <summary>
/// The data of a tensor that no file stores whole: its rows gathered from stored tensors and computed rows (a base
/// embedding extended to a merged vocabulary). <see cref="TensorReader"/> reads such a tensor like a stored one.
/// </summary>
internal sealed class RowAssembly
{
    private readonly RowRun[] _runs;

    public RowAssembly(long rowLength, SafetensorsDType dtype, IEnumerable<RowRun> runs)
    {
        RowLength = rowLength;
        DType = dtype;
        _runs = runs.OrderBy(r => r.FirstRow).ToArray();
        foreach (var run in _runs)
        {
            if (run.Source is { } source && source.DType != dtype) throw new ArgumentException($"Rows of '{source.Name}' are {source.DType}, not {dtype}.");
            if (run.Constant is { } constant && constant.Length != rowLength * dtype.ElementSize()) throw new ArgumentException("A constant row has the wrong length.");
        }
    }

    public long RowLength { get; }
    public SafetensorsDType DType { get; }
    public long RowCount => _runs.Length == 0 ? 0 : _runs[^1].FirstRow + _runs[^1].RowCount;

    /// <summary>A tensor info for these rows, named and reported as <paramref name="name"/> of <paramref name="file"/>.</summary>
    public TensorInfo Info(string name, string file) =>
        new(name, DType, new[] { RowCount, RowLength }, file, 0, RowCount * RowLength * DType.ElementSize()) { Assembly = this };

    /// <summary>Copies elements [first, first + count) into <paramref name="destination"/>, run by run.</summary>
    public unsafe void Read(TensorReader reader, long first, long count, byte* destination)
    {
        var size = DType.ElementSize();
        var end = first + count;
        foreach (var run in _runs)
        {
            var runStart = run.FirstRow * RowLength;
            var runEnd = runStart + run.RowCount * RowLength;
            var from = Math.Max(first, runStart);
            var to = Math.Min(end, runEnd);
            if (from >= to) continue;
            var target = destination + (from - first) * size;
            if (run.Source is { } source)
            {
                reader.ReadElements(source, run.SourceFirstRow * RowLength + (from - runStart), to - from, target);
                continue;
            }
            var row = run.Constant!;
            for (var element = from; element < to;)
            {
                var inRow = (element - runStart) % RowLength;
                var take = Math.Min(RowLength - inRow, to - element);
                fixed (byte* constant = row) Buffer.MemoryCopy(constant + inRow * size, target, take * size, take * size);
                target += take * size;
                element += take;
            }
        }
    }
}
