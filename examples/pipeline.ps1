#!/usr/bin/env pwsh
<#
.SYNOPSIS
The interactive DARE-TIES pipeline as a script: task vectors -> DARE -> TIES -> export.

.EXAMPLE
./examples/pipeline.ps1 -Base ./llama2-7b -FineTuned ./wizardmath, ./codellama, ./wizardlm -OutputPath ./merged
#>
[CmdletBinding(SupportsShouldProcess)]
param(
    [Parameter(Mandatory)] [string] $Base,
    [Parameter(Mandatory)] [string[]] $FineTuned,
    [Parameter(Mandatory)] [string] $OutputPath,
    [double] $DropRate = 0.9,
    [long] $Seed = 42,
    [double] $KeepRatio = 0.5,
    [ValidateSet('bfloat16', 'float16', 'float32')] [string] $DType = 'bfloat16',
    [switch] $Force
)

$ErrorActionPreference = 'Stop'
if (-not (Get-Module Dare)) { Import-Module (Join-Path $PSScriptRoot '../out/Dare/Dare.psd1') }

Get-TaskVector -Base $Base -FineTuned $FineTuned |
    Invoke-DareDrop -DropRate $DropRate -Seed $Seed |
    Merge-Ties -KeepRatio $KeepRatio |
    Export-Safetensors -Path $OutputPath -DType $DType -Force:$Force -WhatIf:$WhatIfPreference
