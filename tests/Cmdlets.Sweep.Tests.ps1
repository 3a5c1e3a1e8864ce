# Invoke-DareSweep and Measure-TaskVector -PerLayer/-ChartPath on small float32 models.
BeforeAll {
    . (Join-Path $PSScriptRoot 'TestHelpers.ps1')
    Import-DareTestModule

    $models = Join-Path $TestDrive 'models'
    $script:base = New-SyntheticCheckpoint (Join-Path $models 'base') -HiddenSize 32 -Layers 2 -VocabSize 64 -DType float32
    $script:math = New-SyntheticCheckpoint (Join-Path $models 'math') -BaseModel $base -Seed 11 -DType float32
    $script:code = New-SyntheticCheckpoint (Join-Path $models 'code') -BaseModel $base -Seed 12 -DType float32
    $script:tensor = 'model.layers.0.mlp.up_proj.weight'
    $script:baseValues = Read-TestTensor $base.Path $tensor

    # The evaluator's function of the merged weights: the squared change of one tensor, read from disk.
    $script:squaredChange = {
        param($ModelPath)
        $merged = Read-TestTensor $ModelPath $tensor
        $sum = 0.0
        for ($i = 0; $i -lt $merged.Length; $i++) { $d = [double] $merged[$i] - $baseValues[$i]; $sum += $d * $d }
        $sum
    }

    function Test-PngFile([string] $Path) {
        $bytes = [IO.File]::ReadAllBytes($Path)
        $bytes.Length | Should -BeGreaterThan 5000
        $bytes[0..7] | Should -Be @(0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A)
    }
}

Describe 'Invoke-DareSweep' {
    It 'scores each variant on its merged weights, as the cmdlet pipeline would merge it, and keeps the lowest at -KeepBest' {
        $parent = Join-Path $TestDrive 'keep'
        New-Item -ItemType Directory $parent | Out-Null
        $results = @(Invoke-DareSweep $base $math, $code -DropRate 0.5, 0.9 -KeepRatio 1 -Seed 5 -Evaluator $squaredChange -KeepBest (Join-Path $parent 'best'))

        $results.Count | Should -Be 2
        foreach ($result in $results) {
            # The same variant through Get-TaskVector | Invoke-DareDrop | Merge-Ties | Export-Safetensors.
            $reference = Join-Path $TestDrive "reference-$($result.DropRate)"
            $null = Get-TaskVector $base $math, $code | Invoke-DareDrop $result.DropRate -Seed 5 | Merge-Ties -KeepRatio 1 | Export-Safetensors $reference
            $result.Succeeded | Should -BeTrue
            $result.Score | Should -Be (& $squaredChange $reference)
            $result.RealisedDropRate | Should -BeGreaterThan ($result.DropRate - 0.05)
            $result.RealisedDropRate | Should -BeLessThan ($result.DropRate + 0.05)
        }
        $best = $results | Sort-Object Score | Select-Object -First 1
        $best.IsBest | Should -BeTrue
        @($results | Where-Object IsBest).Count | Should -Be 1
        $best.KeptPath | Should -Be (Join-Path $parent 'best')
        (Read-TensorBytes $best.KeptPath $tensor).Bytes | Should -Be (Read-TensorBytes (Join-Path $TestDrive "reference-$($best.DropRate)") $tensor).Bytes
        @(Get-ChildItem -LiteralPath $parent -Force).Name | Should -Be @('best')
    }

    It 'reports a variant whose evaluator throws with its error, warns, and goes on with the others' {
        $state = @{ Calls = 0 }
        $score = $squaredChange
        $evaluator = { param($ModelPath) $state.Calls++; if ($state.Calls -eq 2) { throw 'benchmark crashed' }; & $score $ModelPath }.GetNewClosure()
        $results = @(Invoke-DareSweep $base $math, $code -DropRate 0.5, 0.7, 0.9 -Seed 5 -Evaluator $evaluator -Maximize -WarningVariable warnings 3>$null)

        $results.Count | Should -Be 3
        $results[1].Succeeded | Should -BeFalse
        $results[1].Score | Should -BeNullOrEmpty
        $results[1].ErrorId | Should -Be 'SweepEvaluatorFailed'
        $results[1].Error | Should -Match 'benchmark crashed'
        $warnings | Should -Match 'p=0.7'
        $results[0].Succeeded -and $results[2].Succeeded | Should -BeTrue
        # -Maximize: the higher squared change (p = 0.9 rescales the survivors most) is the best.
        ($results | Where-Object IsBest).DropRate | Should -Be ($results[0, 2] | Sort-Object Score -Descending | Select-Object -First 1).DropRate
    }

    It 'draws score against drop rate as a PNG and an SVG, one line per keep ratio' {
        $png = Join-Path $TestDrive 'sweep.png'
        $svg = Join-Path $TestDrive 'sweep.svg'
        $null = Invoke-DareSweep $base $math, $code -DropRate 0.5, 0.9 -KeepRatio 0.5, 1 -Seed 5 -Evaluator $squaredChange -ChartPath $png
        $null = Invoke-DareSweep $base $math, $code -DropRate 0.5, 0.9 -KeepRatio 0.5, 1 -Seed 5 -Evaluator $squaredChange -ChartPath $svg
        Test-PngFile $png
        $xml = [xml] (Get-Content -Raw -LiteralPath $svg)
        $xml.DocumentElement.LocalName | Should -Be 'svg'
        (Get-Item -LiteralPath $svg).Length | Should -BeGreaterThan 2000
        Get-Content -Raw -LiteralPath $svg | Should -Match 'keep ratio 0.5'
    }

    It '-WhatIf lists the variants without merging, evaluating or writing anything' {
        $folder = Join-Path $TestDrive 'whatif'
        New-Item -ItemType Directory $folder | Out-Null
        $state = @{ Calls = 0 }
        $output = Invoke-DareSweep $base $math, $code -DropRate 0.8, 0.9 -Evaluator { param($p) $state.Calls++; 1 }.GetNewClosure() -KeepBest (Join-Path $folder 'best') -ChartPath (Join-Path $folder 'c.png') -WhatIf
        $output | Should -BeNullOrEmpty
        $state.Calls | Should -Be 0
        Get-ChildItem -LiteralPath $folder -Force | Should -BeNullOrEmpty
    }

    It 'refuses bad settings before any merge: <Case>' -ForEach @(
        @{ Case = 'no evaluator'; Arguments = @{}; Id = 'InvalidParameter' }
        @{ Case = 'a .jpg chart'; Arguments = @{ Evaluator = { 1 }; ChartPath = 'chart.jpg' }; Id = 'ChartPathInvalid' }
        @{ Case = 'a keep ratio with dare_linear'; Arguments = @{ Evaluator = { 1 }; Method = 'dare_linear'; KeepRatio = 0.5 }; Id = 'InvalidParameter' }
    ) {
        Push-Location $TestDrive
        try { { Invoke-DareSweep $base $math -DropRate 0.9 @Arguments } | Should -Throw -ErrorId "$Id,Dare.PowerShell.InvokeDareSweepCommand" }
        finally { Pop-Location }
    }

    It 'refuses an input model as -KeepBest with OutputNotReplaceable, before any merge' {
        { Invoke-DareSweep $base $math -DropRate 0.9 -Evaluator { 1 } -KeepBest $math.Path -Force } | Should -Throw -ErrorId 'OutputNotReplaceable,Dare.PowerShell.InvokeDareSweepCommand'
    }

    It 'leaves no temporary folder when stopped (Ctrl+C) while a variant is evaluated' {
        $parent = Join-Path $TestDrive 'stopped'
        New-Item -ItemType Directory $parent | Out-Null
        $script = "Invoke-DareSweep '$($base.Path)' '$($math.Path)' -DropRate 0.5, 0.9 -Seed 1 -Evaluator { param(`$p) Start-Sleep 60; 1 } -KeepBest '$parent/best'"
        $run = Invoke-StoppedInChild $script $parent
        $run.Completed | Should -BeFalse
        $run.State | Should -Be 'Stopped'
        Get-ChildItem -LiteralPath $parent -Force | Should -BeNullOrEmpty
    }
}

Describe 'Sweep and layer views' {
    It 'shows a SweepResult as Variant, Score, Realised, Merge, Evaluation, Best and Error, the best starred' {
        $results = @(Invoke-DareSweep $base $math -DropRate 0.5, 0.9 -Method dare_linear -Seed 5 -Evaluator $squaredChange)
        $lines = @(($results | Out-String -Width 250) -split "`r?`n" | Where-Object { $_.Trim() })
        $lines[0] -split '\s+' | Where-Object { $_ } | Should -Be @('Variant', 'Score', 'Realised', 'Merge', 'Evaluation', 'Best', 'Error')
        $lines[2] | Should -Match '^dare_linear p=0\.5\s+\d\S*\s+\d+\.\d%\s+\d+\.\d s\s+\d+\.\d s\s+\*\s*$'
    }

    It 'shows LayerStatistics as TaskVector, Part, Params, MeanAbs, Sparsity, TargetDrop, Realised and SignConflicts' {
        $layers = Get-TaskVector $base $math, $code | Invoke-DareDrop 0.9 -Seed 3 | Measure-TaskVector -PerLayer
        $lines = @(($layers | Out-String -Width 250) -split "`r?`n" | Where-Object { $_.Trim() })
        $lines[0] -split '\s+' | Where-Object { $_ } | Should -Be @('TaskVector', 'Part', 'Params', 'MeanAbs', 'Sparsity', 'TargetDrop', 'Realised', 'SignConflicts')
        $lines[2] | Should -Match '^math\s+embeddings\s+\S+\s+\d\.\d\de-\d\s+\d+\.\d%\s+90\.0%\s+\d+\.\d%\s+\d+\.\d%$'
    }
}

Describe 'Measure-TaskVector -PerLayer' {
    It 'gives one record per part and vector whose sizes and mean |delta| add up to the whole vector''s' {
        $vectors = Get-TaskVector $base $math, $code | Invoke-DareDrop 0.9 -Seed 3
        $layers = @($vectors | Measure-TaskVector -PerLayer)
        $whole = @($vectors | Measure-TaskVector -RankSamples 0)

        $layers.Part | Select-Object -Unique | Should -Be @('embeddings', 'layer 0', 'layer 1', 'other')
        foreach ($vector in $whole) {
            $mine = @($layers | Where-Object TaskVector -eq $vector.TaskVector)
            ($mine | Measure-Object ParameterCount -Sum).Sum | Should -Be $vector.ParameterCount
            $mean = ($mine | ForEach-Object { $_.MeanAbs * $_.ParameterCount } | Measure-Object -Sum).Sum / $vector.ParameterCount
            [math]::Abs($mean - $vector.MeanAbs) | Should -BeLessThan (1e-9 + 1e-6 * $vector.MeanAbs)
            $realised = ($mine | ForEach-Object { $_.RealisedDropRate * $_.ParameterCount } | Measure-Object -Sum).Sum / $vector.ParameterCount
            [math]::Abs($realised - $vector.RealisedDropRate) | Should -BeLessThan 1e-9
        }
        # Two vectors measured together: each part has a sign-conflict rate, the same for both.
        foreach ($part in $layers | Group-Object Part) {
            $part.Group.SignConflictRate | Select-Object -Unique | Should -HaveCount 1
            $part.Group[0].SignConflictRate | Should -BeGreaterThan 0
            $part.Group[0].SignConflictRate | Should -BeLessThan 1
        }
    }

    It '-ChartPath draws the per-layer chart (and implies -PerLayer)' {
        $png = Join-Path $TestDrive 'layers.png'
        $layers = @(Get-TaskVector $base $math, $code | Measure-TaskVector -ChartPath $png)
        $layers[0].GetType().Name | Should -Be 'LayerStatistics'
        Test-PngFile $png
    }
}
