using System.Management.Automation;
using Dare.Engine.Merge;

namespace Dare.PowerShell;

/// <summary>Turns engine progress and messages into Write-Progress, Write-Verbose and Write-Warning (on the pipeline thread).</summary>
internal sealed class CmdletObserver : IMergeObserver
{
    private readonly Cmdlet _cmdlet;
    private readonly int _activityId;
    private DateTime _lastProgress = DateTime.MinValue;
    private string? _openActivity;

    public CmdletObserver(Cmdlet cmdlet, int activityId = 1)
    {
        _cmdlet = cmdlet;
        _activityId = activityId;
    }

    /// <summary>What the progress bar is about (e.g. the recipe and its place in a batch); shown after the engine's activity.</summary>
    public string? Subject { get; set; }

    public void Progress(MergeProgress progress)
    {
        var finished = progress.TensorsDone >= progress.TensorCount;
        // Progress records are cheap but not free; a few per second is plenty for a human.
        if (!finished && (DateTime.UtcNow - _lastProgress).TotalMilliseconds < 200) return;
        _lastProgress = DateTime.UtcNow;
        var activity = Subject is null ? progress.Activity : $"{progress.Activity} {Subject}";
        var record = new ProgressRecord(_activityId, activity,
            $"{progress.TensorsDone}/{progress.TensorCount} tensors, {progress.BytesDone / 1e6:0} of {progress.TotalBytes / 1e6:0} MB read, {progress.BytesPerSecond / 1e6:0} MB/s")
        {
            PercentComplete = progress.PercentComplete,
            CurrentOperation = progress.CurrentTensor ?? "",
            SecondsRemaining = progress.Remaining is { } left ? (int)left.TotalSeconds : -1,
            RecordType = finished ? ProgressRecordType.Completed : ProgressRecordType.Processing,
        };
        _openActivity = finished ? null : activity;
        _cmdlet.WriteProgress(record);
    }

    /// <summary>Closes the progress bar if the engine left one open (it does not report completion of every pass).</summary>
    public void Complete()
    {
        if (_openActivity is null) return;
        var record = new ProgressRecord(_activityId, _openActivity, "Done") { RecordType = ProgressRecordType.Completed };
        _openActivity = null;
        _cmdlet.WriteProgress(record);
    }

    public void Verbose(string message) => _cmdlet.WriteVerbose(message);

    public void Warning(string message) => _cmdlet.WriteWarning(message);
}
