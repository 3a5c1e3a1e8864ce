# Guidance: Get-DareRecommendation, and the DARE mistakes warned about where they are made (suppressible).
BeforeAll {
    . (Join-Path $PSScriptRoot 'TestHelpers.ps1')
    Import-DareTestModule

    $script:models = Join-Path $TestDrive 'models'
    $script:base = New-SyntheticCheckpoint (Join-Path $models 'base') -HiddenSize 16 -Layers 2 -VocabSize 32 -DType float32
    $script:math = New-SyntheticCheckpoint (Join-Path $models 'math') -BaseModel $base -Seed 11 -DType float32
    $script:code = New-SyntheticCheckpoint (Join-Path $models 'code') -BaseModel $base -Seed 12 -DType float32
    $script:lower = @{ '*embed_tokens*' = 0.5; 'lm_head*' = 0.5 }

    # Warnings of a script block, as strings (the block's output is discarded).
    function Get-Warnings([scriptblock] $Script) {
        @(& $Script 3>&1 | Where-Object { $_ -is [System.Management.Automation.WarningRecord] } | ForEach-Object { "$_" })
    }
}

Describe 'Get-DareRecommendation' {
    It 'emits the five recommendations with reasons, and cosine and sign conflicts equal to a plain recomputation' {
        $advice = Get-DareRecommendation $base.Path $math.Path, $code.Path -TrainingSteps 1500 -SampleRows 1000
        $advice.Setting | Should -Be @('Method', 'DropRate', 'EmbeddingDropRate', 'Rescale', 'KeepRatio')
        $advice | ForEach-Object { $_.Reason | Should -Not -BeNullOrEmpty }
        ($advice | Where-Object Setting -eq DropRate).Low | Should -Be 0.85
        ($advice | Where-Object Setting -eq DropRate).High | Should -Be 0.9
        $m = $advice[0].Measurements
        $m.TaskVectors | Should -Be @('math', 'code')

        # Every float tensor, every entry: δ = tuned − base in float32, then cosine and sign conflicts in double.
        $dot = 0.0; $aa = 0.0; $bb = 0.0; $both = 0; $opposite = 0; $count = 0
        foreach ($name in Get-TestTensorNames $base.Path) {
            $b = Read-TestTensor $base.Path $name; $x = Read-TestTensor $math.Path $name; $y = Read-TestTensor $code.Path $name
            for ($i = 0; $i -lt $b.Length; $i++) {
                $p = [float] ($x[$i] - $b[$i]); $q = [float] ($y[$i] - $b[$i])
                $dot += [double] $p * $q; $aa += [double] $p * $p; $bb += [double] $q * $q
                if ($p -ne 0 -and $q -ne 0) { $both++; if (($p -gt 0) -ne ($q -gt 0)) { $opposite++ } }
            }
            $count += $b.Length
        }
        $m.SampledElements | Should -Be $count
        $m.Pairs[0].Cosine | Should -BeGreaterThan ($dot / [math]::Sqrt($aa * $bb) - 1e-9)
        $m.Pairs[0].Cosine | Should -BeLessThan ($dot / [math]::Sqrt($aa * $bb) + 1e-9)
        $m.SignConflictRate | Should -Be ($opposite / $both)
        # Independent synthetic fine-tunes: near-orthogonal, half the signs in conflict, so diverse: DARE + linear.
        $m.Relation | Should -Be 'Diverse'
        $advice[0].Value | Should -BeLike 'dare_linear*'
    }

    It 'takes piped task vectors and adapters, and shows both step ranges when the steps are unknown' {
        $piped = Get-TaskVector $base.Path $math.Path, $code.Path | Invoke-DareDrop 0.9 -DropRateOverride $lower | Get-DareRecommendation
        ($piped | Where-Object Setting -eq DropRate).Value | Should -Be '0.85–0.90 (500–2K steps) or 0.90–0.95 (2K–10K steps)'
        $adapter = Join-Path $models 'lora-math'
        $null = Get-TaskVector $base.Path $math.Path | Export-LoraAdapter $adapter -Rank 2
        $lora = Get-DareRecommendation $base.Path -Adapter $adapter
        $lora[0].Measurements.LoraLike | Should -BeTrue
        $lora[0].Measurements.AdapterRank | Should -Be 2
        ($lora | Where-Object Setting -eq DropRate).Low | Should -Be 0.7
        ($lora | Where-Object Setting -eq DropRate).High | Should -Be 0.85
    }

    It 'shows a table of Setting, Value and Reason' {
        $text = Get-DareRecommendation $base.Path $math.Path | Out-String -Width 250
        $text | Should -Match 'Setting\s+Value\s+Reason'
        $text | Should -Match 'DARE only'
    }
}

Describe 'Guidance warnings' {
    It 'warns about -Rescale None, and not about the default rescale' {
        (Get-Warnings { Get-TaskVector $base.Path $math.Path | Invoke-DareDrop 0.9 -Rescale None -DropRateOverride $lower -Seed 1 }) -join "`n" |
            Should -Match 'shrinks by 1 − p \(to 0.1 of δ'
        Get-Warnings { Get-TaskVector $base.Path $math.Path | Invoke-DareDrop 0.9 -DropRateOverride $lower -Seed 1 } | Should -BeNullOrEmpty
    }

    It 'warns when embeddings and head get the layers'' rate' {
        $warnings = @(Get-Warnings { Get-TaskVector $base.Path $math.Path | Invoke-DareDrop 0.9 -Seed 1 })
        $warnings | Should -HaveCount 1
        $warnings[0] | Should -Match "'model.embed_tokens.weight' at 0.9, 'lm_head.weight' at 0.9"
    }

    It 'warns about a drop rate of 0.95 or more on a model under 13B only' {
        (Get-Warnings { Get-TaskVector $base.Path $math.Path | Invoke-DareDrop 0.95 -DropRateOverride $lower -Seed 1 }) -join "`n" | Should -Match 'drop rate of 0.95 on a model of .* \(under 13B\)'
        Get-Warnings { Get-TaskVector $base.Path $math.Path | Invoke-DareDrop 0.94 -DropRateOverride $lower -Seed 1 } | Should -BeNullOrEmpty
    }

    It 'warns at the merge when separately dropped vectors share seed and stream, not when one pipeline drops them' {
        $a = Get-TaskVector $base.Path $math.Path | Invoke-DareDrop 0.9 -DropRateOverride $lower -Seed 5
        $b = Get-TaskVector $base.Path $code.Path | Invoke-DareDrop 0.9 -DropRateOverride $lower -Seed 5
        $warnings = @(Get-Warnings { $a, $b | Merge-Ties })
        $warnings | Should -HaveCount 1
        $warnings[0] | Should -Match "'math' and 'code' share drop seed 5 and mask stream 0"
        Get-Warnings { Get-TaskVector $base.Path $math.Path, $code.Path | Invoke-DareDrop 0.9 -DropRateOverride $lower -Seed 5 | Merge-Ties } | Should -BeNullOrEmpty
    }

    It 'says what a single model with DARE exports, and nothing for a merge' {
        $out = Join-Path $TestDrive 'single'
        $warnings = @(Get-Warnings { Get-TaskVector $base.Path $math.Path | Invoke-DareDrop 0.9 -DropRateOverride $lower -Seed 1 | Export-Safetensors $out })
        $warnings | Should -HaveCount 1
        $warnings[0] | Should -Match "'math' is one model with DARE and nothing to merge it with"
        Get-Warnings { Get-TaskVector $base.Path $math.Path, $code.Path | Invoke-DareDrop 0.9 -DropRateOverride $lower -Seed 1 | Merge-Linear | Export-Safetensors (Join-Path $TestDrive 'merged') } |
            Should -BeNullOrEmpty
    }

    It 'is silenced by $DareGuidancePreference and by -WarningAction' {
        $DareGuidancePreference = 'SilentlyContinue'
        Get-Warnings { Get-TaskVector $base.Path $math.Path | Invoke-DareDrop 0.99 -Rescale None -Seed 1 } | Should -BeNullOrEmpty
        $DareGuidancePreference = $false
        Get-Warnings { Get-TaskVector $base.Path $math.Path | Invoke-DareDrop 0.99 -Rescale None -Seed 1 } | Should -BeNullOrEmpty
        $DareGuidancePreference = 'Continue'
        Get-Warnings { Get-TaskVector $base.Path $math.Path | Invoke-DareDrop 0.99 -Rescale None -Seed 1 } | Should -HaveCount 3
        # -WarningAction Ignore drops them as it does any warning.
        Get-Warnings { Get-TaskVector $base.Path $math.Path | Invoke-DareDrop 0.99 -Rescale None -Seed 1 -WarningAction Ignore } | Should -BeNullOrEmpty
    }

    It 'gives a recipe''s mistakes with their locations in Invoke-DareMerge and its -WhatIf plan' {
        $recipe = Join-Path $TestDrive 'mistakes.yml'
        Set-Content -LiteralPath $recipe -Value @"
merge_method: dare_ties
base_model: $($base.Path)
models:
  - model: $($math.Path)
    parameters: { weight: 1, mask_stream: 2 }
  - model: $($code.Path)
    parameters: { weight: 1, mask_stream: 2 }
parameters:
  density: 0.04
  rescale: false
"@
        $warnings = @(Get-Warnings { Invoke-DareMerge $recipe -OutputPath (Join-Path $TestDrive 'recipe-out') -WhatIf })
        Test-Path (Join-Path $TestDrive 'recipe-out') | Should -BeFalse
        $text = $warnings -join "`n"
        $text | Should -Match 'line 10, column \d+ \(parameters.rescale\): DARE without rescaling'
        $text | Should -Match 'line 7, column \d+ \(models\[1\].parameters.mask_stream\): .*share drop seed \d+ and mask stream 2'
        $text | Should -Match "line 9, column \d+ \(parameters.density\): DARE drops 'model.embed_tokens.weight' at 0.96"
        $text | Should -Match 'line 9, column \d+ \(parameters.density\): A drop rate of 0.96 on a model'
        $warnings | Should -HaveCount 4
        $DareGuidancePreference = 'Ignore'
        Get-Warnings { Invoke-DareMerge $recipe -OutputPath (Join-Path $TestDrive 'recipe-out') -WhatIf } | Should -BeNullOrEmpty
    }
}
