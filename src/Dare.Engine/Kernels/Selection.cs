using System.Numerics;

namespace Dare.Engine.Merge;

/// <summary>The k-th smallest of a span without sorting it (quickselect), for quantiles of large samples.</summary>
internal static class Selection
{
    /// <summary>
    /// Returns the value a sort would put at <paramref name="k"/> and reorders <paramref name="values"/> so that nothing
    /// before k is larger and nothing after k is smaller. Values must not be NaN (they have no place in the order).
    /// </summary>
    public static float Select(Span<float> values, int k) => Select(values, k, 2 * BitOperations.Log2((uint)values.Length) + 8);

    /// <summary>The same, sorting what is left after <paramref name="rounds"/> partitions (tests force the sort).</summary>
    internal static float Select(Span<float> values, int k, int rounds)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(k);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(k, values.Length);
        var (low, high) = (0, values.Length - 1);
        // Each round usually keeps half of the range; a run of bad pivots (patterned data) ends in a sort instead.
        for (; high > low; rounds--)
        {
            if (rounds == 0)
            {
                values[low..(high + 1)].Sort();
                break;
            }
            var pivot = MedianOfThree(values[low], values[low + (high - low) / 2], values[high]);
            // Three ways, so many equal values (zeros, ties) end the search at once: [low, less) < pivot,
            // [less, more] = pivot, (more, high] > pivot.
            var (less, i, more) = (low, low, high);
            while (i <= more)
            {
                var value = values[i];
                if (value < pivot)
                {
                    values[i++] = values[less];
                    values[less++] = value;
                }
                else if (value > pivot)
                {
                    values[i] = values[more];
                    values[more--] = value;
                }
                else
                {
                    i++;
                }
            }
            if (k < less) high = less - 1;
            else if (k > more) low = more + 1;
            else return values[k];
        }
        return values[k];
    }

    private static float MedianOfThree(float a, float b, float c) => Math.Max(Math.Min(a, b), Math.Min(Math.Max(a, b), c));
}
