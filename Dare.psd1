@{
    RootModule           = 'Dare.PowerShell.dll'
    # The loader comes first: it routes the engine and its dependencies (dependencies/) into Dare's own
    # AssemblyLoadContext, and registers their public types so that scripts can use type literals such as
    # [Dare.Engine.Merge.ExportResult] and [TorchSharp.torch].
    NestedModules        = @('Dare.Loader.dll')
    ModuleVersion        = '0.1.0'
    GUID                 = '6f0d3c52-8d0e-4b8a-9f57-3c1d2e7a9b41'
    Author               = 'Dare contributors'
    Description          = 'Merge fine-tuned language models with DARE (drop and rescale), TIES and linear merges, streaming safetensors tensor by tensor.'
    PowerShellVersion    = '7.4'
    CompatiblePSEditions = @('Core')
    FormatsToProcess     = @('Dare.Format.ps1xml')
    CmdletsToExport      = @(
        'Complete-DareExport'
        'Export-LoraAdapter'
        'Export-Safetensors'
        'Get-DareEnvironment'
        'Get-DareRecommendation'
        'Get-TaskVector'
        'Get-TaskVectorTensor'
        'Import-Safetensors'
        'Invoke-BreadcrumbsDrop'
        'Invoke-DareDrop'
        'Invoke-DareMerge'
        'Invoke-DellaDrop'
        'Invoke-DareSweep'
        'Measure-Perplexity'
        'Measure-TaskVector'
        'Merge-ArceeFusion'
        'Merge-Karcher'
        'Merge-Linear'
        'Merge-ModelStock'
        'Merge-MultiSlerp'
        'Merge-Nearswap'
        'Merge-NuSlerp'
        'Merge-Ram'
        'Merge-Sce'
        'Merge-Slerp'
        'Merge-Ties'
        'New-SyntheticCheckpoint'
    )
    FunctionsToExport    = @()
    AliasesToExport      = @()
    VariablesToExport    = @()
    PrivateData          = @{
        PSData = @{
            Tags         = @('LLM', 'merge', 'DARE', 'TIES', 'safetensors', 'TorchSharp', 'Linux')
            # Placeholders until the project has a public home: the repository is not published at this address yet.
            ProjectUri   = 'https://github.com/dare-contributors/dare'
            LicenseUri   = 'https://github.com/dare-contributors/dare/blob/main/LICENSE'
            ReleaseNotes = '0.1.0: DARE, TIES and linear merges of safetensors checkpoints through cmdlets and mergekit-style recipes; libtorch (CPU, Linux x64) included.'
        }
    }
}
