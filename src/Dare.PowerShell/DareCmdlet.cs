using System.Management.Automation;
using System.Runtime.InteropServices;
using Dare.Engine;

namespace Dare.PowerShell;

/// <summary>
/// Base for Dare cmdlets: turns engine failures into ErrorRecords with stable ErrorIds, and turns Ctrl+C
/// (StopProcessing), SIGTERM and SIGHUP into cancellation of the engine work in progress.
/// </summary>
public abstract class DareCmdlet : PSCmdlet, IDisposable
{
    private readonly CancellationTokenSource _cancellation = new();
    private List<PosixSignalRegistration>? _signalRegistrations;

    // The session's first Dare cmdlet starts what a later export would otherwise wait for.
    static DareCmdlet() => Dare.Engine.Recipes.RecipeWriter.WarmUpInBackground();

    // Process-wide: the signal received (0: none), and how many Dare actions are running (nested when one cmdlet's
    // WriteObject runs the next cmdlet of the pipeline).
    private static volatile int s_signalNumber;
    private static int s_runningActions;

    /// <summary>Cancelled when the pipeline is stopped (Ctrl+C, Stop-Job, PowerShell.Stop()) or the process gets SIGTERM/SIGHUP.</summary>
    protected CancellationToken Cancellation => _cancellation.Token;

    protected override void StopProcessing() => _cancellation.Cancel();

    /// <summary>The preference variable that silences the DARE guidance's warnings ('SilentlyContinue', 'Ignore' or $false).</summary>
    public const string GuidancePreferenceVariable = "DareGuidancePreference";

    private readonly HashSet<string> _guidanceWritten = new(StringComparer.Ordinal);

    /// <summary>
    /// Writes the DARE guidance's warnings (each message once per command) unless $DareGuidancePreference silences them;
    /// -WarningAction applies as to any warning.
    /// </summary>
    protected void WriteGuidance(IEnumerable<string> messages)
    {
        var preference = SessionState.PSVariable.GetValue(GuidancePreferenceVariable);
        if (preference is PSObject wrapped) preference = wrapped.BaseObject;
        var silenced = preference switch
        {
            bool enabled => !enabled,
            ActionPreference action => action is ActionPreference.SilentlyContinue or ActionPreference.Ignore,
            string text => text.Equals(nameof(ActionPreference.SilentlyContinue), StringComparison.OrdinalIgnoreCase) || text.Equals(nameof(ActionPreference.Ignore), StringComparison.OrdinalIgnoreCase),
            _ => false,
        };
        if (silenced) return;
        foreach (var message in messages.Where(_guidanceWritten.Add)) WriteWarning(message);
    }

    public void Dispose()
    {
        foreach (var registration in _signalRegistrations ?? new()) registration.Dispose();
        _signalRegistrations = null;
        _cancellation.Dispose();
    }

    /// <summary>
    /// While a Dare cmdlet runs, SIGTERM (docker stop, systemd, timeout) and SIGHUP (a closed terminal) cancel its work
    /// like Ctrl+C instead of ending the process at once: the temporary output is removed, then the process exits
    /// with 128 + the signal's number.
    /// </summary>
    private void ListenForSignals()
    {
        if (_signalRegistrations is not null || OperatingSystem.IsWindows()) return;
        _signalRegistrations = new()
        {
            PosixSignalRegistration.Create(PosixSignal.SIGTERM, context => OnSignal(context, 15)),
            PosixSignalRegistration.Create(PosixSignal.SIGHUP, context => OnSignal(context, 1)),
        };
    }

    private void OnSignal(PosixSignalContext context, int number)
    {
        context.Cancel = true;
        s_signalNumber = number;
        try { _cancellation.Cancel(); }
        catch (ObjectDisposedException) { /* this cmdlet has finished */ }
        // No Dare work in progress (the pipeline is in another command): nothing to clean up, end as the signal asks.
        if (Volatile.Read(ref s_runningActions) == 0) ExitIfSignalled();
    }

    /// <summary>After a signal, once cleanup is done: the process ends as the signal asked, with the conventional code.</summary>
    private static void ExitIfSignalled()
    {
        if (s_signalNumber != 0) Environment.Exit(128 + s_signalNumber);
    }

    /// <summary>Runs <paramref name="action"/>; a failure becomes a terminating error.</summary>
    protected void Run(Action action) => Guarded(action, ex => ThrowTerminatingError(ToErrorRecord(ex, null)));

    /// <summary>Runs <paramref name="action"/> for one input; a failure becomes a non-terminating error.</summary>
    protected void RunForItem(Action action, object? target) => Guarded(action, ex => WriteError(ToErrorRecord(ex, target)));

    /// <summary>Runs <paramref name="action"/>: a cancellation stops the pipeline, any other failure goes to <paramref name="report"/>.</summary>
    private void Guarded(Action action, Action<Exception> report)
    {
        ListenForSignals();
        Interlocked.Increment(ref s_runningActions);
        try
        {
            action();
        }
        catch (OperationCanceledException) when (_cancellation.IsCancellationRequested)
        {
            ExitIfSignalled();
            throw new PipelineStoppedException();
        }
        catch (Exception ex) when (ex is not PipelineStoppedException and not PipelineClosedException)
        {
            ExitIfSignalled();
            report(ex);
        }
        finally
        {
            Interlocked.Decrement(ref s_runningActions);
        }
        ExitIfSignalled();
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
        DareErrorKind.ResourceBusy => ErrorCategory.ResourceBusy,
        _ => ErrorCategory.NotSpecified,
    };
}
