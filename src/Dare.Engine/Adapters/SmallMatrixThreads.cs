using TorchSharp;

namespace Dare.Engine.Adapters;

/// <summary>
/// Runs torch's matrix work on one thread while the matrix is small: LAPACK and BLAS split even a 64×64 SVD across
/// every OpenMP thread, and on a busy machine the threads' hand-offs cost far more than the work (seconds instead of
/// milliseconds). Larger matrices keep torch's thread count. Restores the previous count when disposed.
/// </summary>
internal readonly struct SmallMatrixThreads : IDisposable
{
    /// <summary>Matrices up to this many elements run on one thread.</summary>
    public const long Limit = 1L << 20;

    private readonly int _previous;

    private SmallMatrixThreads(int previous) => _previous = previous;

    public static SmallMatrixThreads For(long elements)
    {
        if (elements > Limit) return default;
        var previous = torch.get_num_threads();
        if (previous > 1) torch.set_num_threads(1);
        return new SmallMatrixThreads(previous);
    }

    public void Dispose()
    {
        if (_previous > 1) torch.set_num_threads(_previous);
    }
}
