namespace Dare.Engine;

/// <summary>Stable identifiers for every failure the engine reports; cmdlets use them as ErrorRecord ErrorIds.</summary>
public enum DareErrorId
{
    TorchInitializationFailed,
    PathNotFound,
    NotFileSystemPath,
    NoSafetensorsFound,
    SafetensorsFileTooShort,
    SafetensorsHeaderTooLarge,
    SafetensorsHeaderInvalid,
    SafetensorsTensorEntryInvalid,
    SafetensorsDTypeUnknown,
    SafetensorsShapeInvalid,
    SafetensorsOffsetsInvalid,
    SafetensorsDuplicateTensor,
    SafetensorsIndexInvalid,
    SafetensorsShardMissing,
    SafetensorsTensorMissingFromShard,
    SafetensorsReadFailed,
    ConfigInvalid,
    TensorNotFound,
    TensorShapeMismatch,
    TensorDTypeMismatch,
    InvalidParameter,
    OutputExists,
    ExportFailed,
    OperationCanceled,
    RecipeInvalid,
    RecipeUnsupported,
    RecipeUnknownKey,
    ArchitectureMismatch,
    BaseModelMismatch,
    TaskVectorInvalid,
    WeightSumZero,
    OutputNotReplaceable,
    OutputWriteFailed,
    OutputReplaceFailed,
    OutputInUse,
    NotRegularFile,
    InputChanged,
    NonFiniteValues,
    MergeStepMissing,
    SeveralInputsOneFolder,
    ArchitectureUnsupported,
    TokenizerNotFound,
    TokenizerUnsupported,
    TextTooShort,
    TokenizerInvalid,
    VocabularyMismatch,
    SphericalMeanUndefined,
    LayerRangeInvalid,
    PartitionPlanMismatch,
    PartitionIncomplete,
    PartitionCorrupt,
    PartitionCompletionBusy,
    AdapterInvalid,
    AdapterUnsupported,
    ReplayInputChanged,
    ChartPathInvalid,
    ChartWriteFailed,
    SweepEvaluatorFailed,
    SweepNoSuccessfulVariant,
    DeviceUnavailable,
}

/// <summary>Broad kind of failure; the PowerShell layer maps it to an ErrorCategory.</summary>
public enum DareErrorKind
{
    InvalidData,
    ObjectNotFound,
    InvalidArgument,
    ResourceExists,
    WriteError,
    ReadError,
    NotInstalled,
    OperationStopped,
    NotImplemented,
    ResourceBusy,
}

/// <summary>An engine failure with a stable id, a kind, and a message naming the file and tensor involved.</summary>
public sealed class DareException : Exception
{
    public DareException(DareErrorId errorId, DareErrorKind kind, string message, Exception? inner = null)
        : base(message, inner)
    {
        ErrorId = errorId;
        Kind = kind;
    }

    public DareErrorId ErrorId { get; }
    public DareErrorKind Kind { get; }

    /// <summary>The file the failure concerns, when there is one.</summary>
    public string? FilePath { get; init; }

    /// <summary>The tensor the failure concerns, when there is one.</summary>
    public string? TensorName { get; init; }
}
