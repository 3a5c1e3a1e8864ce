# Merge-Linear and Merge-Ties: values checked against plain PowerShell computations on float32 models, and the
# DARE-TIES pipeline end to end on a bf16 sharded base.
BeforeAll {
    . (Join-Path $PSScriptRoot 'TestHelpers.ps1')
    Import-DareTestModule

    $f32 = Join-Path $TestDrive 'f32'
    $script:base = New-SyntheticCheckpoint (Join-Path $f32 'base') -HiddenSize 64 -Layers 2 -VocabSize 128 -DType float32
    $script:tunes = @(
        New-SyntheticCheckpoint (Join-Path $f32 'a') -BaseModel $base -Seed 21 -DeltaScale 0.002 -DType float32
        New-SyntheticCheckpoint (Join-Path $f32 'b') -BaseModel $base -Seed 22 -DeltaScale 0.004 -DType float32
        New-SyntheticCheckpoint (Join-Path $f32 'c') -BaseModel $base -Seed 23 -DeltaScale 0.003 -DType float32
    )
    $script:checked = 'model.norm.weight', 'model.layers.1.self_attn.q_proj.weight', 'model.embed_tokens.weight'

    # The float32 deltas of one tensor, fine-tune minus base, as the engine computes them (one float subtraction).
    function Get-Deltas([string] $Name) {
        $original = Read-TestTensor $base.Path $Name
        foreach ($tune in $tunes) {
            $tuned = Read-TestTensor $tune.Path $Name
            $delta = [float[]]::new($tuned.Length)
            for ($i = 0; $i -lt $tuned.Length; $i++) { $delta[$i] = [float] ($tuned[$i] - $original[$i]) }
            , $delta
        }
    }

    # TIES by hand for entry $j: elect the sign (weighted sum, or count of signs), then average the agreeing entries.
    function Get-TiesEntry($Deltas, [double[]] $Weights, [int] $j, [string] $SignMethod = 'Sum', [bool] $Normalize = $true) {
        $election = 0.0
        for ($i = 0; $i -lt $Deltas.Count; $i++) {
            $x = [double] $Deltas[$i][$j]
            $election += if ($SignMethod -eq 'Count') { [Math]::Sign($x) } else { $Weights[$i] * $x }
        }
        $positive = $election -ge 0
        $sum = 0.0; $weight = 0.0
        for ($i = 0; $i -lt $Deltas.Count; $i++) {
            $x = [double] $Deltas[$i][$j]
            if (($positive -and $x -gt 0) -or (-not $positive -and $x -lt 0)) { $sum += $Weights[$i] * $x; $weight += $Weights[$i] }
        }
        if (-not $Normalize) { return $sum }
        if ($weight -eq 0) { return 0.0 }
        $sum / $weight
    }
}

Describe 'Merge-Linear' {
    It 'writes base + λ·Σ wᵢδᵢ / Σ wᵢ (float32 models, checked element by element)' {
        $output = Join-Path $TestDrive 'linear'
        Get-TaskVector $base $tunes | Merge-Linear -Weight 3, 1, 2 -Lambda 0.7 | Export-Safetensors $output -DType float32 | Out-Null
        foreach ($name in $checked) {
            $original = Read-TestTensor $base.Path $name
            $deltas = Get-Deltas $name
            $merged = Read-TestTensor $output $name
            $worst = 0.0
            for ($j = 0; $j -lt $merged.Length; $j++) {
                $expected = $original[$j] + 0.7 * (3 * $deltas[0][$j] + 1 * $deltas[1][$j] + 2 * $deltas[2][$j]) / 6
                $worst = [Math]::Max($worst, [Math]::Abs($merged[$j] - $expected))
            }
            $worst | Should -BeLessThan 1e-6 -Because $name
        }
    }

    It 'sums the weighted deltas with -Normalize $false' {
        $output = Join-Path $TestDrive 'linear-sum'
        Get-TaskVector $base $tunes[0], $tunes[1] | Merge-Linear -Weight 1, -0.5 -Normalize $false | Export-Safetensors $output | Out-Null
        $name = 'model.layers.1.self_attn.q_proj.weight'
        $original = Read-TestTensor $base.Path $name
        $deltas = Get-Deltas $name
        $merged = Read-TestTensor $output $name
        for ($j = 0; $j -lt $merged.Length; $j += 97) {
            [Math]::Abs($merged[$j] - ($original[$j] + $deltas[0][$j] - 0.5 * $deltas[1][$j])) | Should -BeLessThan 1e-6
        }
    }

    It 'collects the pipeline and emits one merged task vector whose Steps record the merge' {
        $merged = Get-TaskVector $base $tunes | Merge-Linear -Weight 3, 1, 2 -Name blend
        @($merged).Count | Should -Be 1
        $merged.Name | Should -Be 'blend'
        $merged.IsMerged | Should -BeTrue
        $merged.Source | Should -Be 'a, b, c'
        $merged.Steps[-1] | Should -Be 'MergeLinear(weights=3/1/2, normalize=True, lambda=1)'
        (Get-TaskVector $base $tunes | Merge-Linear).Name | Should -Be 'linear(a+b+c)'
    }

    It 'rejects a weight count that does not match the inputs with InvalidParameter' {
        { Get-TaskVector $base $tunes | Merge-Linear -Weight 1, 2 } | Should -Throw -ErrorId 'InvalidParameter,Dare.PowerShell.MergeLinearCommand'
    }

    It 'rejects negative weights when normalizing with InvalidParameter' {
        { Get-TaskVector $base $tunes[0], $tunes[1] | Merge-Linear -Weight 1, -1 } | Should -Throw -ErrorId 'InvalidParameter,*'
    }

    It 'rejects task vectors of different bases with BaseModelMismatch' {
        $otherBase = New-SyntheticCheckpoint (Join-Path $TestDrive 'other/base') -HiddenSize 64 -Layers 2 -VocabSize 128 -Seed 5 -DType float32
        $otherTune = New-SyntheticCheckpoint (Join-Path $TestDrive 'other/tune') -BaseModel $otherBase -Seed 6 -DType float32
        $vectors = @(Get-TaskVector $base $tunes[0]) + @(Get-TaskVector $otherBase $otherTune)
        { $vectors | Merge-Linear } | Should -Throw -ErrorId 'BaseModelMismatch,Dare.PowerShell.MergeLinearCommand'
    }

    It 'refuses to merge nothing, or a vector that is already merged, with TaskVectorInvalid' {
        { @() | Merge-Linear } | Should -Throw -ErrorId 'TaskVectorInvalid,*'
        { Get-TaskVector $base $tunes | Merge-Linear | Merge-Linear } | Should -Throw -ErrorId 'TaskVectorInvalid,*'
    }
}

Describe 'Merge-Ties' {
    It 'with k = 1 and no DARE elects each sign by weighted sum and averages the agreeing deltas (checked by hand)' {
        $output = Join-Path $TestDrive 'ties-k1'
        Get-TaskVector $base $tunes | Merge-Ties -KeepRatio 1 -Weight 1, 2, 0.5 -Lambda 0.8 | Export-Safetensors $output | Out-Null
        $name = 'model.layers.1.self_attn.q_proj.weight'
        $original = Read-TestTensor $base.Path $name
        $deltas = Get-Deltas $name
        $merged = Read-TestTensor $output $name
        $mixed = 0
        $wrong = @(for ($j = 0; $j -lt $merged.Length; $j++) {
            $positives = [int] ($deltas[0][$j] -gt 0) + [int] ($deltas[1][$j] -gt 0) + [int] ($deltas[2][$j] -gt 0)
            if ($positives -in 1, 2) { $mixed++ }
            $delta = [float] ((Get-TiesEntry $deltas 1, 2, 0.5 $j) * 0.8)
            if ($merged[$j] -ne [float] ($original[$j] + $delta)) { "entry ${j}: $($merged[$j]) instead of $([float] ($original[$j] + $delta))" }
        })
        $wrong | Should -BeNullOrEmpty
        $mixed | Should -BeGreaterThan 1000 -Because 'the check must cover entries whose signs disagree'
    }

    It 'elects by count of signs with -SignMethod Count' {
        $name = 'model.layers.1.self_attn.q_proj.weight'
        $deltas = Get-Deltas $name
        # Entries where one large positive delta outweighs two negative ones: Sum elects +, Count elects -.
        $split = @(for ($j = 0; $j -lt $deltas[0].Length; $j++) {
            $x = $deltas[0][$j], $deltas[1][$j], $deltas[2][$j]
            if ($x[0] + $x[1] + $x[2] -gt 0 -and [Math]::Sign($x[0]) + [Math]::Sign($x[1]) + [Math]::Sign($x[2]) -lt 0) { $j }
        })
        $split.Count | Should -BeGreaterThan 10
        $byCount = Get-TaskVector $base $tunes | Merge-Ties -KeepRatio 1 -SignMethod Count | Get-TaskVectorTensor $name -AsTensor
        $bySum = Get-TaskVector $base $tunes | Merge-Ties -KeepRatio 1 | Get-TaskVectorTensor $name -AsTensor
        try {
            $countValues = $byCount.flatten().data[float]().ToArray()
            $sumValues = $bySum.flatten().data[float]().ToArray()
        }
        finally { $byCount.Dispose(); $bySum.Dispose() }
        foreach ($j in $split) {
            $countValues[$j] | Should -Be ([float] (Get-TiesEntry $deltas 1, 1, 1 $j 'Count'))
            $countValues[$j] | Should -BeLessThan 0
            $sumValues[$j] | Should -BeGreaterThan 0
        }
    }

    It 'sums the agreeing deltas with -Normalize $false' {
        $name = 'model.norm.weight'
        $deltas = Get-Deltas $name
        $delta = Get-TaskVector $base $tunes | Merge-Ties -KeepRatio 1 -Normalize $false | Get-TaskVectorTensor $name -AsTensor
        try { $values = $delta.data[float]().ToArray() } finally { $delta.Dispose() }
        for ($j = 0; $j -lt $values.Length; $j++) { $values[$j] | Should -Be ([float] (Get-TiesEntry $deltas 1, 1, 1 $j -Normalize $false)) }
    }

    It 'trims each task vector to the fraction -KeepRatio of its largest-magnitude entries' {
        $name = 'model.layers.0.mlp.gate_proj.weight'
        $plain = (Get-Deltas $name)[0]
        $trimmed = Get-TaskVector $base $tunes[0] | Merge-Ties -KeepRatio 0.25 | Get-TaskVectorTensor $name -AsTensor
        try { $values = $trimmed.flatten().data[float]().ToArray() } finally { $trimmed.Dispose() }
        $keptMin = [double]::MaxValue; $droppedMax = 0.0; $kept = 0; $changed = 0
        for ($j = 0; $j -lt $values.Length; $j++) {
            if ($values[$j] -ne 0) {
                $kept++
                if ($values[$j] -ne $plain[$j]) { $changed++ }
                $keptMin = [Math]::Min($keptMin, [Math]::Abs($plain[$j]))
            }
            else { $droppedMax = [Math]::Max($droppedMax, [Math]::Abs($plain[$j])) }
        }
        $kept | Should -Be ($values.Length / 4)
        $changed | Should -Be 0 -Because 'kept entries keep their value'
        $keptMin | Should -BeGreaterOrEqual $droppedMax
    }

    It 'rejects -KeepRatio <k> outside (0, 1]' -ForEach @(@{ k = 0 }, @{ k = 1.5 }, @{ k = -0.2 }) {
        { Get-TaskVector $base $tunes | Merge-Ties -KeepRatio $k } | Should -Throw -ErrorId 'ParameterArgumentValidationError,Dare.PowerShell.MergeTiesCommand'
    }

    It 'records the merge in Steps, and takes -Density as an alias of -KeepRatio' {
        $merged = Get-TaskVector $base $tunes[0], $tunes[1] | Invoke-DareDrop 0.9 -Seed 42 | Merge-Ties -Density 0.5
        $merged.Name | Should -Be 'ties(a+b)'
        $merged.Steps | Should -Be @(
            'TaskVector(a - base)', 'DareDrop(p=0.9, seed=42, stream=0, rescale=InverseKeep)'
            'TaskVector(b - base)', 'DareDrop(p=0.9, seed=42, stream=1, rescale=InverseKeep)'
            'MergeTies(keep=0.5/0.5, sign=Sum, weights=1/1, normalize=True, lambda=1)')
    }

    Context 'DARE-TIES end to end on a bf16 sharded base with single-file fine-tunes' {
        BeforeAll {
            $bf16 = Join-Path $TestDrive 'bf16'
            $script:shardedBase = New-SyntheticCheckpoint (Join-Path $bf16 'llama') -HiddenSize 64 -Layers 2 -VocabSize 128 -MaxShardSize 100KB
            $script:wizard = New-SyntheticCheckpoint (Join-Path $bf16 'wizardmath') -BaseModel $shardedBase -Seed 31
            $script:coder = New-SyntheticCheckpoint (Join-Path $bf16 'codellama') -BaseModel $shardedBase -Seed 32
            $script:plan = Get-TaskVector -Base $shardedBase.Path -FineTuned $wizard.Path, $coder.Path |
                Invoke-DareDrop -DropRate 0.9 -Seed 42 |
                Merge-Ties -KeepRatio 0.5
            $script:output = Join-Path $bf16 'merged'
            $script:result = Get-TaskVector -Base $shardedBase.Path -FineTuned $wizard.Path, $coder.Path |
                Invoke-DareDrop -DropRate 0.9 -Seed 42 |
                Merge-Ties -KeepRatio 0.5 |
                Export-Safetensors -Path $output -DType bfloat16
        }

        It 'writes a complete bf16 model folder' {
            $shardedBase.Layout | Should -Be 'Sharded'
            $wizard.Layout | Should -Be 'Folder'
            $result.Path | Should -Be $output
            $merged = Import-Safetensors $output
            $merged.TensorCount | Should -Be 21
            $merged.DTypeSummary | Should -Be 'BF16 (21)'
            $merged.Tensors.Name | Should -Be $shardedBase.Tensors.Name
        }

        It 'writes exactly what the plan computes: the base where the merged delta is 0, base + δ elsewhere' {
            foreach ($name in 'model.layers.0.self_attn.v_proj.weight', 'model.norm.weight') {
                $original = Read-TestTensor $shardedBase.Path $name
                $merged = Read-TestTensor $output $name
                $predicted = $plan | Get-TaskVectorTensor $name -AsTensor
                try { $delta = $predicted.flatten().data[float]().ToArray() } finally { $predicted.Dispose() }
                $zeros = 0
                $wrong = @(for ($j = 0; $j -lt $delta.Length; $j++) {
                    if ($delta[$j] -eq 0) {
                        $zeros++
                        if ($merged[$j] -ne $original[$j]) { "entry ${j}: $($merged[$j]), not the base's $($original[$j])" }
                    }
                    # bf16 keeps 8 significant bits: rounding moves a value by at most 2^-8 of itself.
                    elseif ([Math]::Abs($merged[$j] - ($original[$j] + $delta[$j])) -gt [Math]::Abs($original[$j] + $delta[$j]) / 256) {
                        "entry ${j}: $($merged[$j]), not $($original[$j]) + $($delta[$j])"
                    }
                })
                $wrong | Should -BeNullOrEmpty -Because $name
                $zeros / $delta.Length | Should -BeGreaterThan 0.7 -Because 'DARE at 0.9 then TIES at 0.5 leaves most deltas at 0'
            }
        }

        It 'records the recipe' {
            $recipe = Get-Content -Raw (Join-Path $output 'dare_recipe.yml')
            $recipe | Should -Match 'merge_method: ties'
            $recipe | Should -Match 'density: 0.5'
            $recipe | Should -Match 'drop_rate: 0.9'
            $recipe | Should -Match 'random_seed: 42'
            $recipe | Should -Match 'out_dtype: bfloat16'
            $recipe | Should -Match ([regex]::Escape("model: $($wizard.Path)"))
        }
    }
}
