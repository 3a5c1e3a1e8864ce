using System.Management.Automation;
using Dare.Engine;

namespace Dare.PowerShell;

/// <summary>
/// Base for Dare cmdlets: turns engine failures into ErrorRecords with stable ErrorIds, and turns Ctrl+C
/// (StopProcessing) into cancellation of the engine work in progress.
/// </summary>
public abstract class DareCmdlet : PSCmdlet, IDisposable
{
    private readonly CancellationTokenSource _cancellation = new();

    /// <summary>Cancelled when the pipeline is stopped (Ctrl+C, Stop-Job, PowerShell.Stop()).</summary>
    protected CancellationToken Cancellation => _cancellation.Token;

    protected override void StopProcessing() => _cancellation.Cancel();

    public void Dispose() => _cancellation.Dispose();

    /// <summary>Runs <paramref name="action"/>; a failure becomes a terminating error.</summary>
    protected void Run(Action action) => Guarded(action, ex => ThrowTerminatingError(ToErrorRecord(ex, null)));

    /// <summary>Runs <paramref name="action"/> for one input; a failure becomes a non-terminating error.</summary>
    protected void RunForItem(Action action, object? target) => Guarded(action, ex => WriteError(ToErrorRecord(ex, target)));

    /// <summary>Runs <paramref name="action"/>: a cancellation stops the pipeline, any other failure goes to <paramref name="report"/>.</summary>
    private void Guarded(Action action, Action<Exception> report)
    {
        try
        {
            action();
        }
        catch (OperationCanceledException) when (_cancellation.IsCancellationRequested)
        {
            throw new PipelineStoppedException();
        }
        catch (Exception ex) when (ex is not PipelineStoppedException and not PipelineClosedException)
        {
            report(ex);
        }
    }

    internal static ErrorRecord ToErrorRecord(Exception ex, object? target)
    {
        if (ex is DareException dare)
        {
            return new ErrorRecord(dare, dare.ErrorId.ToString(), ToCategory(dare.Kind), target ?? dare.FilePath ?? dare.TensorName);
        }
        if (ex is OperationCanceledException)
        {
            return new ErrorRecord(ex, nameof(DareErrorId.OperationCanceled), ErrorCategory.OperationStopped, target);
        }
        if (ex is IOException or UnauthorizedAccessException)
        {
            return new ErrorRecord(ex, "FileSystemError", ErrorCategory.WriteError, target);
        }
        return new ErrorRecord(ex, "UnexpectedError", ErrorCategory.NotSpecified, target);
    }

    private static ErrorCategory ToCategory(DareErrorKind kind) => kind switch
    {
        DareErrorKind.InvalidData => ErrorCategory.InvalidData,
        DareErrorKind.ObjectNotFound => ErrorCategory.ObjectNotFound,
        DareErrorKind.InvalidArgument => ErrorCategory.InvalidArgument,
        DareErrorKind.ResourceExists => ErrorCategory.ResourceExists,
        DareErrorKind.WriteError => ErrorCategory.WriteError,
        DareErrorKind.ReadError => ErrorCategory.ReadError,
        DareErrorKind.NotInstalled => ErrorCategory.NotInstalled,
        DareErrorKind.OperationStopped => ErrorCategory.OperationStopped,
        DareErrorKind.NotImplemented => ErrorCategory.NotImplemented,
        _ => ErrorCategory.NotSpecified,
    };
}
