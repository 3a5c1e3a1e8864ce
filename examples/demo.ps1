#!/usr/bin/env pwsh
# The README's demo: generate a small base and three fine-tunes as Hugging Face folders, then DARE-merge them
# through the cmdlets and show what happened. Run via: dotnet pwsh ./build.ps1 Demo
param([string] $WorkDirectory = [IO.Path]::GetFullPath((Join-Path $PSScriptRoot '../demo')))

$ErrorActionPreference = 'Stop'
Import-Module (Join-Path $PSScriptRoot '../out/Dare/Dare.psd1') -Force
New-Item -ItemType Directory -Force $WorkDirectory | Out-Null
Push-Location $WorkDirectory
try {
    Write-Host "== Environment" -ForegroundColor Cyan
    Get-DareEnvironment | Format-List DareVersion, TorchSharpVersion, LibTorchVersion, Devices, TorchThreads, NativeCompat

    Write-Host "== Generating a Llama-shaped base (sharded) and three fine-tunes in $WorkDirectory" -ForegroundColor Cyan
    $base = New-SyntheticCheckpoint ./base -HiddenSize 256 -Layers 4 -VocabSize 2048 -Seed 1 -MaxShardSize 2MB -Force
    $tunes = foreach ($name in 'math', 'code', 'chat') {
        New-SyntheticCheckpoint "./$name" -BaseModel $base -Seed ([array]::IndexOf(@('math', 'code', 'chat'), $name) + 10) -Force
    }
    Import-Safetensors ./base, ./math, ./code, ./chat | Format-Table

    Write-Host "== Task vectors and their statistics" -ForegroundColor Cyan
    $vectors = Get-TaskVector -Base ./base -FineTuned ./math, ./code, ./chat
    $vectors | Format-Table
    $vectors | Invoke-DareDrop -DropRate 0.9 -Seed 42 | Measure-TaskVector | Format-Table

    Write-Host "== DARE (p = 0.9, seed 42) + TIES (k = 0.5) -> ./merged" -ForegroundColor Cyan
    $result = Get-TaskVector -Base ./base -FineTuned ./math, ./code, ./chat |
        Invoke-DareDrop -DropRate 0.9 -Seed 42 |
        Merge-Ties -KeepRatio 0.5 |
        Export-Safetensors -Path ./merged -DType bfloat16 -Force
    $result | Format-List Path, TensorCount, BytesWritten, Elapsed
    Get-ChildItem ./merged | Format-Table Name, Length

    Write-Host "== The recipe recorded with the model (replayable with Invoke-DareMerge)" -ForegroundColor Cyan
    Get-Content ./merged/dare_recipe.yml

    Write-Host "== Replaying that recipe with Invoke-DareMerge gives the same bytes" -ForegroundColor Cyan
    $replay = Invoke-DareMerge ./merged/dare_recipe.yml -OutputPath ./merged-replay -Force
    "model.safetensors identical: {0}" -f ((Get-FileHash ./merged/model.safetensors).Hash -eq (Get-FileHash (Join-Path $replay.Path 'model.safetensors')).Hash)

    Write-Host "== A mergekit-style recipe (examples/dare-ties.yml): the plan, then the merge" -ForegroundColor Cyan
    Copy-Item (Join-Path $PSScriptRoot 'dare-ties.yml') . -Force
    Invoke-DareMerge ./dare-ties.yml -Force -WhatIf
    Invoke-DareMerge ./dare-ties.yml -Force | Format-List Path, TensorCount, BytesWritten, Elapsed

    Write-Host "== One merged tensor compared with the base" -ForegroundColor Cyan
    $merged = Import-Safetensors ./merged
    "merged model: {0} tensors, {1:N0} parameters, {2}" -f $merged.TensorCount, $merged.ParameterCount, $merged.DTypeSummary
    Get-TaskVector -Base ./base -FineTuned ./merged | Get-TaskVectorTensor model.layers.0.mlp.up_proj.weight | Format-List
}
finally {
    Pop-Location
}
