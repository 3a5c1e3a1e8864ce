# The example scripts in examples/, run against small generated float32 checkpoints; merged values are checked
# against the plain re-computations in ReferenceMerge.ps1.
BeforeAll {
    . (Join-Path $PSScriptRoot 'TestHelpers.ps1')
    . (Join-Path $PSScriptRoot 'ReferenceMerge.ps1')
    Import-DareTestModule

    $script:Examples = Join-Path $PSScriptRoot '../examples'
    $script:Root = Join-Path $TestDrive 'models'
    $script:BasePath = Join-Path $TestDrive 'base'
    $base = New-SyntheticCheckpoint $BasePath -HiddenSize 64 -Layers 2 -VocabSize 128 -DType float32 -MaxShardSize 100KB
    $seed = 10
    foreach ($name in 'math', 'code', 'chat') {
        $null = New-SyntheticCheckpoint (Join-Path $Root $name) -BaseModel $base -Seed ($seed++) -DType float32
    }
    $script:Tensors = 'model.layers.0.self_attn.q_proj.weight', 'model.norm.weight'

    # fine-tune - base in float32, as the engine computes it.
    function Get-TestDelta([string] $Model, [string] $Tensor) {
        $t = Read-TestTensor $Model $Tensor; $b = Read-TestTensor $BasePath $Tensor
        $d = [double[]]::new($t.Length)
        for ($i = 0; $i -lt $t.Length; $i++) { $d[$i] = [float]($t[$i] - $b[$i]) }
        , $d
    }

    # The largest |actual - (base + expected)| over one tensor of an output model.
    function Get-MergeError([string] $Output, [string] $Tensor, [double[]] $Expected) {
        $actual = Read-TestTensor $Output $Tensor; $b = Read-TestTensor $BasePath $Tensor
        $worst = 0.0
        for ($i = 0; $i -lt $actual.Length; $i++) { $worst = [Math]::Max($worst, [Math]::Abs($actual[$i] - ($b[$i] + $Expected[$i]))) }
        $worst
    }

    # DARE(p, seed, stream i) on each model in order, then TIES with keep ratio k.
    function Get-DareTies([string[]] $Models, [string] $Tensor, [double] $DropRate, [long] $Seed, [double] $KeepRatio) {
        $deltas = for ($i = 0; $i -lt $Models.Count; $i++) {
            , (Get-Trimmed (Get-Dropped (Get-TestDelta $Models[$i] $Tensor) $Tensor $Seed $i $DropRate) $KeepRatio)
        }
        Get-TiesMerge $deltas (@(1.0) * $Models.Count) $true
    }
}

Describe 'examples/pipeline.ps1' {
    It 'writes base + TIES(DARE(deltas)) as the README pipeline describes' {
        $models = 'math', 'code', 'chat' | ForEach-Object { Join-Path $Root $_ }
        $output = Join-Path $TestDrive 'pipeline'
        $result = & (Join-Path $Examples 'pipeline.ps1') -Base $BasePath -FineTuned $models -OutputPath $output -DType float32
        $result.Path | Should -Be $output
        foreach ($tensor in $Tensors) {
            $deltas = for ($i = 0; $i -lt 3; $i++) { , (Get-Trimmed (Get-Dropped (Get-TestDelta $models[$i] $tensor) $tensor 42 $i 0.9) 0.5) }
            Get-MergeError $output $tensor (Get-TiesMerge $deltas @(1.0, 1.0, 1.0) $true) | Should -BeLessThan 1e-6
        }
    }

    It 'writes nothing under -WhatIf' {
        $output = Join-Path $TestDrive 'pipeline-whatif'
        & (Join-Path $Examples 'pipeline.ps1') -Base $BasePath -FineTuned (Join-Path $Root 'math') -OutputPath $output -WhatIf
        $output | Should -Not -Exist
    }
}

Describe 'examples/drop-rate-sweep.ps1' {
    BeforeAll {
        $script:Models = 'math', 'code', 'chat' | ForEach-Object { Join-Path $Root $_ }
        $script:SweepRoot = Join-Path $TestDrive 'sweep'
        $script:Rows = & (Join-Path $Examples 'drop-rate-sweep.ps1') -Base $BasePath -FineTuned $Models -OutputRoot $SweepRoot -DType float32
    }

    It 'returns one row per drop rate and model, with the realised drop rate near the target' {
        $Rows | Should -HaveCount 12
        ($Rows.DropRate | Sort-Object -Unique) | Should -Be @(0.8, 0.85, 0.9, 0.95)
        foreach ($row in $Rows) { [Math]::Abs($row.RealisedDropRate - $row.DropRate) | Should -BeLessThan 0.01 }
    }

    It 'exports one DARE-linear merge per rate whose values match an independent computation' {
        foreach ($rate in 0.8, 0.95) {
            $output = Join-Path $SweepRoot ('p{0:0.00}' -f $rate)
            Join-Path $output 'model.safetensors' | Should -Exist
            foreach ($tensor in $Tensors) {
                $deltas = for ($i = 0; $i -lt 3; $i++) { , (Get-Dropped (Get-TestDelta $Models[$i] $tensor) $tensor 42 $i $rate) }
                Get-MergeError $output $tensor (Get-LinearMerge $deltas @(1.0, 1.0, 1.0) $true) | Should -BeLessThan 1e-6
            }
        }
    }

    It 'keeps mean |delta| about the same at every drop rate (the 1/(1-p) rescale preserves the expected update)' {
        $math = $Rows | Where-Object Model -eq 'math'
        $means = $math | Sort-Object DropRate | ForEach-Object MeanAbs
        $spread = ($means | Measure-Object -Maximum -Minimum)
        ($spread.Maximum - $spread.Minimum) / $spread.Maximum | Should -BeLessThan 0.1
    }
}

Describe 'examples/merge-all-finetunes.ps1' {
    BeforeAll {
        $script:AdminRoot = Join-Path $TestDrive 'admin'
        Copy-Item $Root $AdminRoot -Recurse
        $null = New-SyntheticCheckpoint (Join-Path $AdminRoot 'wide') -HiddenSize 64 -Layers 2 -VocabSize 256 -DType float32
        New-Item -ItemType Directory (Join-Path $AdminRoot 'notes') | Out-Null
        Set-Content (Join-Path $AdminRoot 'notes/README.txt') 'not a model'
        $script:AdminOutput = Join-Path $TestDrive 'admin-merged'
        $script:AdminLog = Join-Path $TestDrive 'admin.log'
        $script:AdminResult = & (Join-Path $Examples 'merge-all-finetunes.ps1') -ModelRoot $AdminRoot -Base $BasePath -OutputPath $AdminOutput -LogPath $AdminLog -WarningVariable warnings 3>$null
        $script:AdminExitCode = $LASTEXITCODE
        $script:AdminWarnings = $warnings
    }

    It 'merges every fine-tune of the base found in the folder and exits 0' {
        $AdminExitCode | Should -Be 0
        $AdminResult.Path | Should -Be $AdminOutput
        # Folders are taken in name order (chat, code, math): mask streams 0, 1, 2.
        $ordered = 'chat', 'code', 'math' | ForEach-Object { Join-Path $AdminRoot $_ }
        foreach ($tensor in $Tensors) {
            Get-MergeError $AdminOutput $tensor (Get-DareTies $ordered $tensor 0.9 42 1.0) | Should -BeLessThan 1e-6
        }
    }

    It 'skips a model of another architecture and a folder without safetensors, with warnings and log lines' {
        ($AdminWarnings -join "`n") | Should -Match "wide.*vocab_size"
        ($AdminWarnings -join "`n") | Should -Match "notes"
        $log = Get-Content $AdminLog
        $log | Where-Object { $_ -match 'skipped .*wide' } | Should -Not -BeNullOrEmpty
        $log | Where-Object { $_ -match 'skipped .*notes.*NoSafetensorsFound' } | Should -Not -BeNullOrEmpty
        $log | Where-Object { $_ -match 'wrote .* from 3 fine-tune' } | Should -Not -BeNullOrEmpty
    }

    It 'exits 1 when the folder holds no fine-tune' {
        $empty = Join-Path $TestDrive 'empty-root'
        New-Item -ItemType Directory $empty | Out-Null
        & (Join-Path $Examples 'merge-all-finetunes.ps1') -ModelRoot $empty -Base $BasePath -OutputPath (Join-Path $TestDrive 'none') -LogPath (Join-Path $TestDrive 'none.log') 3>$null
        $LASTEXITCODE | Should -Be 1
        Join-Path $TestDrive 'none' | Should -Not -Exist
    }

    It 'exits 2 without touching an existing output when it may not replace it' {
        & (Join-Path $Examples 'merge-all-finetunes.ps1') -ModelRoot $AdminRoot -Base $BasePath -OutputPath $AdminOutput -LogPath $AdminLog 3>$null 2>$null
        $LASTEXITCODE | Should -Be 2
        (Get-Content $AdminLog)[-1] | Should -Match 'failed: OutputExists'
        Join-Path $AdminOutput 'model.safetensors' | Should -Exist
    }
}
