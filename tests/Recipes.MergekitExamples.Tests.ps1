# mergekit's own example recipes (arcee-ai/mergekit v0.1.4, examples/*.yml), adapted only in their model references
# (tests/mergekit-examples/*.yml point at ./models/<name>), run by Invoke-DareMerge against generated checkpoints of
# 40 layers so that every layer_range in them fits. README's "mergekit compatibility" lists which run and why.
BeforeAll {
    . (Join-Path $PSScriptRoot 'TestHelpers.ps1')
    Import-DareTestModule

    $script:Folder = Join-Path $TestDrive 'examples'
    $models = Join-Path $Folder 'models'
    $size = @{ HiddenSize = 16; Layers = 40; VocabSize = 32; IntermediateSize = 24 }
    $llama = New-SyntheticCheckpoint (Join-Path $models 'Llama-2-13B-fp16') @size -Seed 1
    $seed = 10
    foreach ($name in 'orca_mini_v3_13b', 'Platypus2-13B', 'WizardLM-13B-V1.2', 'WizardMath-13B-V1.0') {
        $null = New-SyntheticCheckpoint (Join-Path $models $name) -BaseModel $llama -Seed ($seed++) -DeltaScale 0.01
    }
    # Only the Llama family needs 40 layers (the layer ranges); the others stay small to keep the suite fast.
    $small = @{ HiddenSize = 16; Layers = 2; VocabSize = 32; IntermediateSize = 24 }
    $mistral = New-SyntheticCheckpoint (Join-Path $models 'Mistral-7B-v0.1') @small -Seed 2
    foreach ($name in 'Mistral-7B-Instruct-v0.2', 'BioMistral-7B') { $null = New-SyntheticCheckpoint (Join-Path $models $name) -BaseModel $mistral -Seed ($seed++) -DeltaScale 0.01 }
    $a = New-SyntheticCheckpoint (Join-Path $models 'model_a') @small -Seed 3
    $null = New-SyntheticCheckpoint (Join-Path $models 'model_b') -BaseModel $a -Seed ($seed++) -DeltaScale 0.05
    Copy-Item (Join-Path $PSScriptRoot 'mergekit-examples/*.yml') $Folder

    function Invoke-Example([string] $Name) {
        Invoke-DareMerge -ConfigPath (Join-Path $Folder "$Name.yml") -OutputPath (Join-Path $Folder "out-$Name") -ErrorAction Stop
    }
    function Get-Config([string] $Model) { Get-Content -Raw (Join-Path $Model 'config.json') | ConvertFrom-Json }
}

Describe 'mergekit example recipes' {
    It 'copies only the model references: every adapted file names its original' {
        $files = Get-ChildItem (Join-Path $PSScriptRoot 'mergekit-examples') -Filter '*.yml'
        $files.Count | Should -Be 6
        foreach ($file in $files) {
            Get-Content -Raw $file.FullName | Should -Match "examples/$([regex]::Escape($file.Name))"
        }
    }

    It 'linear.yml: the weighted mean of the three models, written as float16' {
        $result = Invoke-Example 'linear'
        $name = 'model.layers.7.mlp.up_proj.weight'
        $m = 'orca_mini_v3_13b', 'WizardLM-13B-V1.2', 'Platypus2-13B' | ForEach-Object { , (Read-TestTensor (Join-Path $Folder "models/$_") $name) }
        $actual = Read-TestTensor $result.Path $name
        (Read-TensorBytes $result.Path $name).DType | Should -Be 'F16'
        for ($i = 0; $i -lt $actual.Length; $i += 7) {
            $expected = (1.0 * $m[0][$i] + 0.3 * $m[1][$i] + 0.5 * $m[2][$i]) / 1.8
            [Math]::Abs($actual[$i] - $expected) | Should -BeLessOrEqual ([Math]::Abs($expected) * 1e-3 + 1e-6)
        }
    }

    It 'ties.yml: density and weight gradients, a filtered weight and int8_mask plan and write every tensor' {
        $result = Invoke-Example 'ties'
        $result.TensorCount | Should -Be (Import-Safetensors (Join-Path $Folder 'models/Llama-2-13B-fp16')).TensorCount
        (Read-TensorBytes $result.Path 'model.layers.0.self_attn.q_proj.weight').DType | Should -Be 'F16'
    }

    It 'bio-merge.yml: ties with normalize false writes base + Σ w·trimmed δ' {
        $result = Invoke-Example 'bio-merge'
        $result.TensorCount | Should -Be (Import-Safetensors (Join-Path $Folder 'models/Mistral-7B-v0.1')).TensorCount
    }

    It 'orcamini-platy-44layer.yml: 24 layers of one model and 20 of the other make 44, renumbered' {
        $result = Invoke-Example 'orcamini-platy-44layer'
        (Get-Config $result.Path).num_hidden_layers | Should -Be 44
        $orca = Join-Path $Folder 'models/orca_mini_v3_13b'
        $platypus = Join-Path $Folder 'models/Platypus2-13B'
        $names = Get-TestTensorNames $result.Path
        @($names | Where-Object { $_ -match '^model\.layers\.(\d+)\.' } | ForEach-Object { [int]$Matches[1] } | Sort-Object -Unique) | Should -Be (0..43)
        foreach ($pair in @(@(0, $orca, 0), @(23, $orca, 23), @(24, $platypus, 20), @(43, $platypus, 39))) {
            $out, $source, $layer = $pair
            $expected = Read-TestTensor $source "model.layers.$layer.mlp.down_proj.weight"
            $actual = Read-TestTensor $result.Path "model.layers.$out.mlp.down_proj.weight"
            for ($i = 0; $i -lt $actual.Length; $i++) { [Math]::Abs($actual[$i] - $expected[$i]) | Should -BeLessOrEqual ([Math]::Abs($expected[$i]) * 1e-3 + 1e-7) }
        }
        $embed = Read-TestTensor $result.Path 'model.embed_tokens.weight'
        $embed[0..9] | Should -Be ((Read-TestTensor $orca 'model.embed_tokens.weight')[0..9] | ForEach-Object { [float][Half]$_ })
    }

    It 'arcee_fusion.yml: keeps some of model_b''s changes and the base elsewhere' {
        $result = Invoke-Example 'arcee_fusion'
        $name = 'model.layers.1.mlp.up_proj.weight'
        $a = Read-TestTensor (Join-Path $Folder 'models/model_a') $name
        $b = Read-TestTensor (Join-Path $Folder 'models/model_b') $name
        $out = Read-TestTensor $result.Path $name
        $fromB = 0; $fromA = 0
        for ($i = 0; $i -lt $out.Length; $i++) {
            if ($a[$i] -eq $b[$i]) { continue }
            if ($out[$i] -eq $b[$i]) { $fromB++ } elseif ($out[$i] -eq $a[$i]) { $fromA++ } else { throw "entry $i is neither model's" }
        }
        $fromB | Should -BeGreaterThan 0
        $fromA | Should -BeGreaterThan $fromB
    }

    It 'gradient-slerp.yml: slerp of two 40-layer stacks, t from filtered gradients: t = 0 keeps orca, t = 1 takes Platypus' {
        $result = Invoke-Example 'gradient-slerp'
        (Get-Config $result.Path).num_hidden_layers | Should -Be 40
        $orca = Join-Path $Folder 'models/orca_mini_v3_13b'; $platypus = Join-Path $Folder 'models/Platypus2-13B'
        # Layer 0 sits at the gradients' start (self_attn 0, mlp 1), layer 39 at their end (self_attn 1, mlp 0).
        foreach ($case in @(
                @{ Tensor = 'model.layers.0.self_attn.q_proj.weight'; From = $orca }
                @{ Tensor = 'model.layers.0.mlp.up_proj.weight'; From = $platypus }
                @{ Tensor = 'model.layers.39.self_attn.o_proj.weight'; From = $platypus }
                @{ Tensor = 'model.layers.39.mlp.down_proj.weight'; From = $orca })) {
            $expected = [float[]] @((Read-TestTensor $case.From $case.Tensor) | ForEach-Object { [float][Half]$_ })
            $actual = Read-TestTensor $result.Path $case.Tensor
            ($actual -join ',') | Should -BeExactly ($expected -join ',') -Because $case.Tensor
        }
    }

    It 'every example writes the same tensor bytes on the device backend (-Device torch-cpu) as on the CPU kernels' {
        foreach ($name in 'linear', 'ties', 'bio-merge', 'orcamini-platy-44layer', 'arcee_fusion', 'gradient-slerp') {
            $config = Join-Path $Folder "$name.yml"
            $kernels = Invoke-DareMerge -ConfigPath $config -OutputPath (Join-Path $Folder "kernels-$name") -ErrorAction Stop
            $device = Invoke-DareMerge -ConfigPath $config -OutputPath (Join-Path $Folder "device-$name") -Device torch-cpu -ErrorAction Stop
            $shards = @(Get-ChildItem $kernels.Path -Filter '*.safetensors' | Sort-Object Name)
            $shards.Count | Should -BeGreaterThan 0
            @(Get-ChildItem $device.Path -Filter '*.safetensors' | Sort-Object Name).Name | Should -Be $shards.Name -Because $name
            foreach ($shard in $shards) {
                # The tensors after each header (the headers' recipes name the device).
                $data = foreach ($file in $shard.FullName, (Join-Path $device.Path $shard.Name)) {
                    $bytes = [IO.File]::ReadAllBytes($file)
                    $start = (Read-SafetensorsHeader $file).DataStart
                    [Convert]::ToHexString([Security.Cryptography.SHA256]::Create().ComputeHash($bytes, $start, $bytes.Length - $start))
                }
                $data[1] | Should -Be $data[0] -Because "$name, $($shard.Name)"
            }
            Get-Content -Raw (Join-Path $device.Path 'dare_recipe.yml') | Should -Match '(?m)^device: torch-cpu$'
        }
    }
}
