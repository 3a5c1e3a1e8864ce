#!/usr/bin/env pwsh
<#
.SYNOPSIS
Times a partitioned DARE-TIES merge on this machine: N = 1, 2, 4 partitions, each a separate pwsh process started at
once (as a scheduler's array tasks would be), and checks every published folder against the single-process export.

.DESCRIPTION
Run by hand (not part of the suite): dotnet pwsh tests/bench/Invoke-PartitionBench.ps1 [-WorkFolder /tmp/dare-parts].
Models: a bf16 Llama-shaped base (hidden 1024, 8 layers, vocab 32000: 167M parameters) and two fine-tunes; output
bf16 in 100 MB shards. Prints a Markdown table: N, wall seconds for all partitions (start-up included), and the
bytes each partition read.
#>
param([string] $WorkFolder = (Join-Path ([IO.Path]::GetTempPath()) 'dare-partition-bench'), [int[]] $Counts = @(1, 2, 4))

$ErrorActionPreference = 'Stop'
$root = Resolve-Path (Join-Path $PSScriptRoot '../..')
$manifest = Join-Path $root 'out/Dare/Dare.psd1'
Import-Module $manifest
$process = [Environment]::ProcessPath
$pwsh = [IO.Path]::GetFileNameWithoutExtension($process) -eq 'dotnet' ? @($process, (Join-Path $PSHOME 'pwsh.dll')) : @($process)

New-Item -ItemType Directory -Force $WorkFolder | Out-Null
$base = Join-Path $WorkFolder 'base'
if (-not (Test-Path $base)) {
    $b = New-SyntheticCheckpoint $base -HiddenSize 1024 -Layers 8 -VocabSize 32000 -Seed 1 -MaxShardSize 128MB
    foreach ($i in 1, 2) { $null = New-SyntheticCheckpoint (Join-Path $WorkFolder "ft$i") -BaseModel $b -Seed (10 + $i) }
}
$recipe = Join-Path $WorkFolder 'dare-ties.yml'
Set-Content $recipe @'
merge_method: dare_ties
base_model: ./base
models:
  - model: ./ft1
    parameters: { weight: 1.0, density: 0.5 }
  - model: ./ft2
    parameters: { weight: 0.5, density: 0.5 }
parameters: { normalize: true }
random_seed: 7
out_dtype: bfloat16
output: { max_shard_size: 100000000 }
'@
$single = Join-Path $WorkFolder 'single'
Remove-Item -Recurse -Force $single -ErrorAction Ignore
$null = Invoke-DareMerge -LiteralPath $recipe -OutputLiteralPath $single
$expected = Get-ChildItem $single -File | Sort-Object Name | ForEach-Object { "$($_.Name) $((Get-FileHash $_.FullName).Hash)" }

'| partitions | wall s (all partitions, start-up included) | MB read per partition | identical to one process |'
'|---:|---:|---|---|'
foreach ($count in $Counts) {
    $out = Join-Path $WorkFolder "parts-$count"
    Remove-Item -Recurse -Force $out -ErrorAction Ignore
    $clock = [Diagnostics.Stopwatch]::StartNew()
    $children = foreach ($index in 0..($count - 1)) {
        $command = "Import-Module '$manifest'; `$r = Invoke-DareMerge -LiteralPath '$recipe' -OutputLiteralPath '$out' -Partition $index/$count; `$r.BytesRead"
        Start-Process -FilePath $pwsh[0] -ArgumentList (@($pwsh | Select-Object -Skip 1) + '-NoProfile', '-NonInteractive', '-Command', $command) `
            -RedirectStandardOutput (Join-Path $WorkFolder "p$count-$index.txt") -PassThru -NoNewWindow
    }
    $children | Wait-Process
    $wall = $clock.Elapsed.TotalSeconds
    $actual = Get-ChildItem $out -File | Sort-Object Name | ForEach-Object { "$($_.Name) $((Get-FileHash $_.FullName).Hash)" }
    $same = $null -eq (Compare-Object $expected $actual)
    # Bytes each partition read (base and fine-tunes): the work it did; the reads are what a cluster spreads.
    $perPartition = foreach ($index in 0..($count - 1)) { '{0:0}' -f ([long](Get-Content (Join-Path $WorkFolder "p$count-$index.txt") | Select-Object -Last 1) / 1e6) }
    '| {0} | {1:0.0} | {2} | {3} |' -f $count, $wall, ($perPartition -join ' / '), ($same ? 'yes' : 'NO')
}
