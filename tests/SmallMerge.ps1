# A small recipe merge run in a fresh pwsh, and its check against a merge recomputed here from the files on disk.
# Used by the tests that prove a module copy (installed package, patched native library, isolated dependencies) works.
# Dot-source after TestHelpers.ps1.

# The script a child pwsh runs: $Prelude, then generate a base and two fine-tunes in $Work and merge them with a
# task_arithmetic recipe (weights 0.5, 0.5). Prints 'merged:<path>' and 'result-type-matches:<bool>' (the export
# result is the type the literal [Dare.Engine.Merge.ExportResult] names).
function Get-SmallMergeScript([string] $Work, [string] $Prelude) {
    @"
`$ErrorActionPreference = 'Stop'
$Prelude
`$work = '$Work'
New-Item -ItemType Directory -Force `$work | Out-Null
Set-Location `$work
`$base = New-SyntheticCheckpoint ./base -HiddenSize 16 -Layers 1 -VocabSize 32 -DType float32
`$null = New-SyntheticCheckpoint ./math -BaseModel `$base -Seed 1 -DType float32
`$null = New-SyntheticCheckpoint ./code -BaseModel `$base -Seed 2 -DType float32
@'
merge_method: task_arithmetic
base_model: ./base
models:
  - model: ./math
    parameters: { weight: 0.5 }
  - model: ./code
    parameters: { weight: 0.5 }
dtype: float32
output: { path: ./merged }
'@ | Set-Content ./recipe.yml
`$result = Invoke-DareMerge ./recipe.yml
"merged:`$(`$result.Path)"
"result-type-matches:`$(`$result -is [Dare.Engine.Merge.ExportResult])"
"@
}

# Largest |merged - (base + 0.5 (math - base) + 0.5 (code - base))| over every tensor of the merged model, and the count
# of tensors compared, and the largest |math - base| (so a check cannot pass on models that do not differ).
# The reference is computed here in double from the files the child wrote.
function Measure-SmallMergeError([string] $Work) {
    # The names from the file itself: these checks run where the module is not imported.
    $names = @((Read-SafetensorsHeader (Join-Path $Work 'base/model.safetensors')).Header.Keys | Where-Object { $_ -ne '__metadata__' })
    $worst = 0.0
    $largestDelta = 0.0
    foreach ($name in $names) {
        $base = Read-TestTensor (Join-Path $Work 'base') $name
        $math = Read-TestTensor (Join-Path $Work 'math') $name
        $code = Read-TestTensor (Join-Path $Work 'code') $name
        $merged = Read-TestTensor (Join-Path $Work 'merged') $name
        for ($i = 0; $i -lt $base.Length; $i++) {
            $expected = [double]$base[$i] + 0.5 * ([double]$math[$i] - $base[$i]) + 0.5 * ([double]$code[$i] - $base[$i])
            $worst = [Math]::Max($worst, [Math]::Abs($merged[$i] - $expected))
            $largestDelta = [Math]::Max($largestDelta, [Math]::Abs([double]$math[$i] - $base[$i]))
        }
    }
    [pscustomobject]@{ Tensors = $names.Count; MaxError = $worst; LargestDelta = $largestDelta }
}
