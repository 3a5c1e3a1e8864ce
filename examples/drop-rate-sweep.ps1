#!/usr/bin/env pwsh
<#
.SYNOPSIS
Sweeps the DARE drop rate: for each rate, measures every task vector after DARE and exports the DARE-linear merge,
then returns one row per (rate, model) to tabulate.

.EXAMPLE
./examples/drop-rate-sweep.ps1 -Base ./base -FineTuned ./math, ./code -OutputRoot ./sweep | Format-Table
#>
[CmdletBinding(SupportsShouldProcess)]
param(
    [Parameter(Mandatory)] [string] $Base,
    [Parameter(Mandatory)] [string[]] $FineTuned,
    [Parameter(Mandatory)] [string] $OutputRoot,
    [double[]] $DropRate = @(0.8, 0.85, 0.9, 0.95),
    [long] $Seed = 42,
    [ValidateSet('bfloat16', 'float16', 'float32')] [string] $DType = 'bfloat16',
    [switch] $Force
)

$ErrorActionPreference = 'Stop'
if (-not (Get-Module Dare)) { Import-Module (Join-Path $PSScriptRoot '../out/Dare/Dare.psd1') }

# Task vectors are lazy plans: building them once and reusing them for every rate costs nothing.
$vectors = Get-TaskVector -Base $Base -FineTuned $FineTuned
foreach ($rate in $DropRate) {
    $dropped = $vectors | Invoke-DareDrop -DropRate $rate -Seed $Seed
    $output = Join-Path $OutputRoot ('p{0:0.00}' -f $rate)
    $export = $dropped | Merge-Linear | Export-Safetensors -Path $output -DType $DType -Force:$Force -WhatIf:$WhatIfPreference
    foreach ($statistics in $dropped | Measure-TaskVector) {
        [pscustomobject]@{
            DropRate         = $rate
            Model            = $statistics.TaskVector
            RealisedDropRate = $statistics.RealisedDropRate
            NaturalSparsity  = $statistics.NaturalSparsity
            MeanAbs          = $statistics.MeanAbs
            MaxAbs           = $statistics.MaxAbs
            Output           = if ($export) { $export.Path } else { $null }
        }
    }
}
