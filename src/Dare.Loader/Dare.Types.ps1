# Nested module of Dare.psd1, run after Dare.Loader.dll. The engine and TorchSharp live in Dare's own load context,
# where PowerShell's type-literal lookup does not search; importing them as (cmdlet-less) binary modules makes
# [Dare.Engine.Merge.ExportResult], [TorchSharp.torch] and the like resolve in scripts. Assembly.Load by name reaches
# the default context, whose Resolving event the loader answers with the private context's copy.
foreach ($assemblyName in 'Dare.Engine', 'TorchSharp') {
    Import-Module -Assembly ([Reflection.Assembly]::Load($assemblyName))
}
