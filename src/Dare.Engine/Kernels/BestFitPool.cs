namespace Dare.Engine.Merge;

/// <summary>
/// A bounded pool handing out the smallest item that is large enough (<see cref="KernelScratch"/>'s native blocks,
/// <see cref="CleanArrays{T}"/>' zeroed arrays). Thread-safe.
/// </summary>
internal sealed class BestFitPool<T>(int maxPooled, Func<T, long> sizeOf)
{
    private readonly List<T> _pooled = new();

    /// <summary>How many items the pool holds.</summary>
    public int Count
    {
        get { lock (_pooled) return _pooled.Count; }
    }

    /// <summary>Takes the smallest pooled item of at least <paramref name="size"/>; false when none is that large.</summary>
    public bool TryTake(long size, out T item)
    {
        lock (_pooled)
        {
            var best = -1;
            for (var i = 0; i < _pooled.Count; i++)
            {
                if (sizeOf(_pooled[i]) >= size && (best < 0 || sizeOf(_pooled[i]) < sizeOf(_pooled[best]))) best = i;
            }
            item = best >= 0 ? _pooled[best] : default!;
            if (best >= 0) _pooled.RemoveAt(best);
            return best >= 0;
        }
    }

    /// <summary>Pools <paramref name="item"/>; false when the pool is full (the caller disposes of it).</summary>
    public bool TryAdd(T item)
    {
        lock (_pooled)
        {
            if (_pooled.Count >= maxPooled) return false;
            _pooled.Add(item);
            return true;
        }
    }

    /// <summary>Empties the pool and returns what it held.</summary>
    public List<T> TakeAll()
    {
        lock (_pooled)
        {
            var all = new List<T>(_pooled);
            _pooled.Clear();
            return all;
        }
    }
}
