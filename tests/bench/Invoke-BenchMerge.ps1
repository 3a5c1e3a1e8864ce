#!/usr/bin/env pwsh
<#
.SYNOPSIS
One measured benchmark step, run by Invoke-Benchmark.ps1 in its own pwsh process (start-up included).

.DESCRIPTION
Imports the module and runs one merge method over a benchmark data set (base + three fine-tunes), exporting
bfloat16 to -Output with -Force. Method 'startup' only imports the module and plans a merge (Get-TaskVector reads
the headers), to show the fixed cost every run pays; 'torch' imports the module and loads libtorch (Get-DareEnvironment),
the extra cost of the commands that need it (merges on the CPU kernels do not); 'bare' does nothing (the cost of pwsh
itself, which the others are compared with). At the end prints one line "DARE-BENCH <json>" with what the process can see of
itself (VmHWM and CPU time from /proc/self, the export's own elapsed time, and the DARE_PROFILE phase lines),
so the parent has a fallback when /usr/bin/time is missing.
#>
param(
    [Parameter(Mandatory)] [ValidateSet('bare', 'startup', 'torch', 'dare-linear', 'ties', 'dare-ties', 'della', 'slerp', 'model-stock', 'breadcrumbs', 'sce', 'arcee-fusion', 'dare-linear-torch', 'dare-ties-torch')] [string] $Method,
    [Parameter(Mandatory)] [string] $Data,
    [Parameter(Mandatory)] [string] $Output,
    [Parameter(Mandatory)] [string] $Module
)

$ErrorActionPreference = 'Stop'
if ($Method -ne 'bare') { Import-Module $Module }
# Paths and the report below use .NET calls, not cmdlets: the first call of Join-Path, Get-Content or ConvertTo-Json
# in a process costs tens of milliseconds of JIT each (0.12-0.15 s for the report alone), which a user's merge does not pay.
$base = [IO.Path]::Combine($Data, 'base')
$tunes = [IO.Path]::Combine($Data, 'ft1'), [IO.Path]::Combine($Data, 'ft2'), [IO.Path]::Combine($Data, 'ft3')

$result = $null
$profileLines = @()
if ($Method -eq 'bare') { }
elseif ($Method -eq 'startup') {
    $null = Get-TaskVector -Base $base -FineTuned $tunes
}
elseif ($Method -eq 'torch') {
    $null = Get-DareEnvironment
}
else {
    $vectors = Get-TaskVector -Base $base -FineTuned $tunes
    # The *-torch rows run the same merge on the TorchSharp tensor backend on the CPU device (-Device torch-cpu).
    $device = if ($Method -like '*-torch') { 'torch-cpu' } else { 'cpu' }
    $merged = switch ($Method -replace '-torch$') {
        'dare-linear' { $vectors | Invoke-DareDrop -DropRate 0.9 -Seed 42 | Merge-Linear }
        'ties' { $vectors | Merge-Ties -KeepRatio 0.2 }
        'dare-ties' { $vectors | Invoke-DareDrop -DropRate 0.9 -Seed 42 | Merge-Ties -KeepRatio 0.5 }
        'della' { $vectors | Invoke-DellaDrop -Density 0.3 -Epsilon 0.1 -Seed 42 | Merge-Ties -KeepRatio 1 }
        'slerp' { $vectors | Select-Object -First 1 | Merge-Slerp -T 0.5 }
        'model-stock' { $vectors | Merge-ModelStock }
        'breadcrumbs' { $vectors | Invoke-BreadcrumbsDrop -Density 0.9 -Gamma 0.01 | Merge-Linear }
        'sce' { $vectors | Merge-Sce -SelectTopK 0.1 }
        'arcee-fusion' { $vectors | Select-Object -First 1 | Merge-ArceeFusion }
    }
    $profiling = $env:DARE_PROFILE -in '1', 'true'
    if ($profiling) {
        # The executor reports its phase profile through the Verbose stream; keep only those records.
        $records = $merged | Export-Safetensors -Path $Output -DType bfloat16 -Force -Device $device -Verbose 4>&1
        $result = $records | Where-Object { $_ -is [Dare.Engine.Merge.ExportResult] }
        $profileLines = @($records | Where-Object { $_ -is [System.Management.Automation.VerboseRecord] -and $_.Message -like 'profile:*' } | ForEach-Object Message)
    }
    else {
        $result = $merged | Export-Safetensors -Path $Output -DType bfloat16 -Force -Device $device
    }
}

$status = try { [IO.File]::ReadAllText('/proc/self/status') } catch { '' }
$hwm = if ($status -match 'VmHWM:\s+(\d+)\s+kB') { $Matches[1] } else { 'null' }
$cpu = [Diagnostics.Process]::GetCurrentProcess()
$invariant = [Globalization.CultureInfo]::InvariantCulture
function Get-JsonNumber($Value) { if ($null -eq $Value) { 'null' } else { ([double]$Value).ToString('R', $invariant) } }
function Get-JsonString([string] $Value) { '"' + $Value.Replace('\', '\\').Replace('"', '\"').Replace("`t", '\t').Replace("`r", '\r').Replace("`n", '\n') + '"' }
$fields = @(
    '"method":' + (Get-JsonString $Method)
    '"vmhwm_kb":' + $hwm
    '"user_s":' + (Get-JsonNumber $cpu.UserProcessorTime.TotalSeconds)
    '"sys_s":' + (Get-JsonNumber $cpu.PrivilegedProcessorTime.TotalSeconds)
    '"export_s":' + (Get-JsonNumber $result.Elapsed.TotalSeconds)
    '"bytes_read":' + (Get-JsonNumber $result.BytesRead)
    '"bytes_written":' + (Get-JsonNumber $result.BytesWritten)
    '"profile":[' + (@(foreach ($line in $profileLines) { Get-JsonString $line }) -join ',') + ']'
)
'DARE-BENCH {' + ($fields -join ',') + '}'
