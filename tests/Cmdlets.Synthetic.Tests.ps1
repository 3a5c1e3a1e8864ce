# New-SyntheticCheckpoint: the test-data generator the other suites rely on.
BeforeAll {
    . (Join-Path $PSScriptRoot 'TestHelpers.ps1')
    Import-DareTestModule
    $script:root = Join-Path $TestDrive 'synthetic'
    $script:base = New-SyntheticCheckpoint (Join-Path $root 'base') -HiddenSize 64 -Layers 2 -VocabSize 128 -Seed 3
}

Describe 'New-SyntheticCheckpoint' {
    It 'writes a Llama-shaped model folder with config and tokenizer files, and returns it as a Checkpoint' {
        $base | Should -BeOfType Dare.Engine.Safetensors.Checkpoint
        $base.Layout | Should -Be 'Folder'
        $base.TensorCount | Should -Be (2 + 9 * 2 + 1)
        ($base.Tensors | Where-Object Name -eq 'model.layers.1.mlp.gate_proj.weight').Shape | Should -Be @(192, 64)
        $config = Get-Content -Raw (Join-Path $base.Path 'config.json') | ConvertFrom-Json
        $config.hidden_size | Should -Be 64
        $config.num_hidden_layers | Should -Be 2
        $config.vocab_size | Should -Be 128
        $config.torch_dtype | Should -Be 'bfloat16'
        foreach ($name in 'generation_config.json', 'tokenizer_config.json', 'special_tokens_map.json') { Join-Path $base.Path $name | Should -Exist }
    }

    It 'writes the same bytes for the same seed, and other weights for another seed' {
        $again = New-SyntheticCheckpoint (Join-Path $root 'again') -HiddenSize 64 -Layers 2 -VocabSize 128 -Seed 3
        $other = New-SyntheticCheckpoint (Join-Path $root 'other') -HiddenSize 64 -Layers 2 -VocabSize 128 -Seed 4
        $hash = { param($Model) (Get-FileHash (Join-Path $Model.Path 'model.safetensors')).Hash }
        & $hash $again | Should -Be (& $hash $base)
        & $hash $other | Should -Not -Be (& $hash $base)
    }

    It 'writes a fine-tune of -BaseModel with the base''s shape and deltas of about -DeltaScale' {
        $tune = New-SyntheticCheckpoint (Join-Path $root 'tune') -BaseModel $base.Path -Seed 9 -DeltaScale 0.01 -DType float32 -HiddenSize 32
        $tune.Tensors.Name | Should -Be $base.Tensors.Name
        $tune.DTypeSummary | Should -Be 'F32 (21)'
        $statistics = Get-TaskVector $base $tune | Measure-TaskVector
        $statistics.StdAbs | Should -BeGreaterThan 0.003
        $statistics.MeanAbs | Should -BeGreaterThan 0.006
        $statistics.MeanAbs | Should -BeLessThan 0.01
    }

    It 'shards the model with -MaxShardSize' {
        $sharded = New-SyntheticCheckpoint (Join-Path $root 'sharded') -HiddenSize 64 -Layers 2 -VocabSize 128 -MaxShardSize 50KB
        $sharded.Layout | Should -Be 'Sharded'
        $sharded.Files.Count | Should -BeGreaterThan 2
    }

    It 'writes nothing with -WhatIf' {
        New-SyntheticCheckpoint (Join-Path $root 'what-if') -WhatIf | Should -BeNullOrEmpty
        Join-Path $root 'what-if' | Should -Not -Exist
    }

    It 'refuses an existing non-empty folder without -Force (OutputExists), and replaces it with -Force' {
        { New-SyntheticCheckpoint $base.Path -HiddenSize 64 -Layers 1 -VocabSize 128 } | Should -Throw -ErrorId 'OutputExists,Dare.PowerShell.NewSyntheticCheckpointCommand'
        (Import-Safetensors $base.Path).TensorCount | Should -Be 21
        $replaced = New-SyntheticCheckpoint (Join-Path $root 'again') -HiddenSize 64 -Layers 1 -VocabSize 128 -Force
        $replaced.TensorCount | Should -Be (2 + 9 + 1)
    }

    It 'writes to -LiteralPath as typed and refuses other providers with NotFileSystemPath' {
        (New-SyntheticCheckpoint -LiteralPath (Join-Path $root 'seed[5]') -HiddenSize 64 -Layers 1 -VocabSize 128).Name | Should -Be 'seed[5]'
        { New-SyntheticCheckpoint Env:\DARE_SYNTHETIC } | Should -Throw -ErrorId 'NotFileSystemPath,*'
    }

    It 'rejects a non-positive -HiddenSize' {
        { New-SyntheticCheckpoint (Join-Path $root 'zero') -HiddenSize 0 } | Should -Throw -ErrorId 'ParameterArgumentValidationError,*'
    }
}
