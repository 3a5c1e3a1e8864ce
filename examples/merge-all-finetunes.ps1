#!/usr/bin/env pwsh
<#
.SYNOPSIS
Admin script: merges every fine-tune of a base found under a folder with DARE-TIES, skipping folders that are not
models of the same architecture, and writes a log of what it did.

.DESCRIPTION
Every sub-folder of -ModelRoot that holds safetensors (other than the base itself) is a candidate. A candidate
whose config.json disagrees with the base on hidden_size, num_hidden_layers or vocab_size, or that cannot be read,
is skipped with a warning. The script exits with code 0 when a merge was written, 1 when there was nothing to
merge, 2 on failure.

.EXAMPLE
./examples/merge-all-finetunes.ps1 -ModelRoot /models/llama2-7b-finetunes -Base /models/llama2-7b -OutputPath /models/merged -Force
#>
[CmdletBinding(SupportsShouldProcess)]
param(
    [Parameter(Mandatory)] [string] $ModelRoot,
    [Parameter(Mandatory)] [string] $Base,
    [Parameter(Mandatory)] [string] $OutputPath,
    [double] $DropRate = 0.9,
    [double] $KeepRatio = 1.0,
    [long] $Seed = 42,
    [string] $LogPath = (Join-Path $OutputPath '../merge-all-finetunes.log'),
    [switch] $Force
)

$ErrorActionPreference = 'Stop'
if (-not (Get-Module Dare)) { Import-Module (Join-Path $PSScriptRoot '../out/Dare/Dare.psd1') }

function Write-Log([string] $Message) {
    $line = '{0:u} {1}' -f (Get-Date), $Message
    Write-Verbose $line
    Add-Content -LiteralPath $LogPath -Value $line
}

try {
    New-Item -ItemType Directory -Force (Split-Path $LogPath) | Out-Null
    $baseModel = Import-Safetensors -LiteralPath (Resolve-Path $Base).ProviderPath
    $architecture = 'hidden_size', 'num_hidden_layers', 'vocab_size'
    Write-Log "base $($baseModel.Path): $($baseModel.TensorCount) tensors"

    $fineTunes = foreach ($folder in Get-ChildItem -LiteralPath $ModelRoot -Directory) {
        if ($folder.FullName -eq $baseModel.Path) { continue }
        $candidate = Import-Safetensors -LiteralPath $folder.FullName -ErrorAction SilentlyContinue -ErrorVariable problem
        if (-not $candidate) {
            Write-Warning "Skipping '$($folder.Name)': $($problem[0].Exception.Message)"
            Write-Log "skipped $($folder.FullName): $($problem[0].FullyQualifiedErrorId)"
            continue
        }
        $different = $architecture | Where-Object { $candidate.ConfigInt($_) -ne $baseModel.ConfigInt($_) }
        if ($different) {
            Write-Warning "Skipping '$($folder.Name)': its $($different -join ', ') differ from the base."
            Write-Log "skipped $($folder.FullName): architecture differs ($($different -join ', '))"
            continue
        }
        Write-Log "fine-tune $($candidate.Path)"
        $candidate
    }

    if (-not $fineTunes) {
        Write-Warning "No fine-tune of '$($baseModel.Name)' found under '$ModelRoot'."
        Write-Log 'nothing to merge'
        exit 1
    }

    $result = Get-TaskVector -Base $baseModel -FineTuned $fineTunes |
        Invoke-DareDrop -DropRate $DropRate -Seed $Seed |
        Merge-Ties -KeepRatio $KeepRatio |
        Export-Safetensors -Path $OutputPath -Force:$Force -WhatIf:$WhatIfPreference
    if ($result) {
        Write-Log "wrote $($result.Path): $($result.TensorCount) tensors from $(@($fineTunes).Count) fine-tune(s)"
        $result
    }
    exit 0
}
catch {
    Write-Log "failed: $($_.FullyQualifiedErrorId): $($_.Exception.Message)"
    Write-Error $_ -ErrorAction Continue
    exit 2
}
