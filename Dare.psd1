@{
    RootModule           = 'Dare.PowerShell.dll'
    # Imported first: routes the engine and its dependencies (dependencies/) into Dare's own AssemblyLoadContext.
    NestedModules        = @('Dare.Loader.dll', 'Dare.Engine', 'TorchSharp')
    ModuleVersion        = '0.1.0'
    GUID                 = '6f0d3c52-8d0e-4b8a-9f57-3c1d2e7a9b41'
    Author               = 'Dare contributors'
    Description          = 'Merge fine-tuned language models with DARE (drop and rescale), TIES and linear merges, streaming safetensors tensor by tensor.'
    PowerShellVersion    = '7.4'
    CompatiblePSEditions = @('Core')
    FormatsToProcess     = @('Dare.Format.ps1xml')
    CmdletsToExport      = @(
        'Export-Safetensors'
        'Get-DareEnvironment'
        'Get-TaskVector'
        'Get-TaskVectorTensor'
        'Import-Safetensors'
        'Invoke-DareDrop'
        'Invoke-DareMerge'
        'Measure-TaskVector'
        'Merge-Linear'
        'Merge-Ties'
        'New-SyntheticCheckpoint'
    )
    FunctionsToExport    = @()
    AliasesToExport      = @()
    VariablesToExport    = @()
    PrivateData          = @{
        PSData = @{
            Tags = @('LLM', 'merge', 'DARE', 'TIES', 'safetensors', 'TorchSharp')
        }
    }
}
