# LoRA adapters in and out: Get-TaskVector -Adapter, Export-LoraAdapter, adapters in recipes and Measure-TaskVector's ranks.
BeforeAll {
    . (Join-Path $PSScriptRoot 'TestHelpers.ps1')
    Import-DareTestModule

    $models = Join-Path $TestDrive 'models'
    $script:base = New-SyntheticCheckpoint (Join-Path $models 'base') -HiddenSize 64 -Layers 2 -VocabSize 128 -DType float32
    $script:math = New-SyntheticCheckpoint (Join-Path $models 'math') -BaseModel $base -Seed 11 -DType float32
    $script:q = 'model.layers.0.self_attn.q_proj.weight'
    $script:hidden = 64

    # A PEFT adapter with rank-2 factors on q_proj of layer 0: A is [2, 64], B is [64, 2], s = lora_alpha / r = 4 / 2.
    function New-TestAdapter([string] $Folder, [int] $Seed, [string] $Weights = 'adapter_model.safetensors') {
        $random = [Random]::new($Seed)
        $a = [float[]]::new(2 * $hidden); $b = [float[]]::new($hidden * 2)
        for ($i = 0; $i -lt $a.Length; $i++) { $a[$i] = $random.NextDouble() - 0.5 }
        for ($i = 0; $i -lt $b.Length; $i++) { $b[$i] = $random.NextDouble() - 0.5 }
        New-Item -ItemType Directory -Force -Path $Folder | Out-Null
        $bytesA = [byte[]]::new(4 * $a.Length); [Buffer]::BlockCopy($a, 0, $bytesA, 0, $bytesA.Length)
        $bytesB = [byte[]]::new(4 * $b.Length); [Buffer]::BlockCopy($b, 0, $bytesB, 0, $bytesB.Length)
        Write-TestSafetensors -File (Join-Path $Folder $Weights) -Tensors ([ordered]@{
            'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight' = @{ DType = 'F32'; Shape = @(2, $hidden); Bytes = $bytesA }
            'base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight' = @{ DType = 'F32'; Shape = @($hidden, 2); Bytes = $bytesB }
        })
        @{ peft_type = 'LORA'; r = 2; lora_alpha = 4; target_modules = @('q_proj'); base_model_name_or_path = 'base' } |
            ConvertTo-Json | Set-Content -LiteralPath (Join-Path $Folder 'adapter_config.json')
        [pscustomobject]@{ Path = $Folder; A = $a; B = $b }
    }

    # s·B·A in double, row-major [64, 64], written plainly.
    function Get-LoraDelta($Adapter, [double] $Scale = 2.0) {
        $delta = [double[]]::new($hidden * $hidden)
        for ($r = 0; $r -lt $hidden; $r++) {
            for ($c = 0; $c -lt $hidden; $c++) {
                $sum = 0.0
                for ($k = 0; $k -lt 2; $k++) { $sum += [double] $Adapter.B[$r * 2 + $k] * [double] $Adapter.A[$k * $hidden + $c] }
                $delta[$r * $hidden + $c] = $Scale * $sum
            }
        }
        , $delta
    }

    function Get-DeltaValues($Vector, [string] $Name) {
        $delta = $Vector | Get-TaskVectorTensor $Name -AsTensor
        try { , $delta.data[float]().ToArray() }
        finally { $delta.Dispose() }
    }

    function Get-Norm([double[]] $Values) {
        $sum = 0.0
        foreach ($v in $Values) { $sum += $v * $v }
        [Math]::Sqrt($sum)
    }

    $script:loraMath = New-TestAdapter (Join-Path $TestDrive 'adapters/lora-math') 1
    $script:loraCode = New-TestAdapter (Join-Path $TestDrive 'adapters/lora-code') 2
}

Describe 'Get-TaskVector -Adapter' {
    It 'reads a PEFT adapter as delta = s·B·A on the module it adapts and zero elsewhere' {
        $vector = Get-TaskVector -Base $base.Path -Adapter $loraMath.Path
        $vector.Name | Should -Be 'lora-math'
        $vector.LoraAdapters.Rank | Should -Be 2
        $expected = Get-LoraDelta $loraMath
        $actual = Get-DeltaValues $vector $q
        $worst = 0.0
        for ($i = 0; $i -lt $expected.Length; $i++) { $worst = [Math]::Max($worst, [Math]::Abs($expected[$i] - $actual[$i])) }
        $worst | Should -BeLessThan 1e-6
        Get-DeltaValues $vector 'model.layers.0.self_attn.k_proj.weight' | Where-Object { $_ -ne 0 } | Should -BeNullOrEmpty
    }

    It 'exports base + s·B·A' {
        $out = Get-TaskVector $base.Path -Adapter $loraMath.Path | Export-Safetensors (Join-Path $TestDrive 'merged-math')
        $merged = Read-TestTensor $out.Path $q
        $baseValues = Read-TestTensor $base.Path $q
        $expected = Get-LoraDelta $loraMath
        for ($i = 0; $i -lt $expected.Length; $i += 97) { $merged[$i] | Should -Be ([float] ($baseValues[$i] + [float] $expected[$i])) }
    }

    It 'takes adapter paths exactly as typed with -LiteralAdapter, and reads an adapter folder piped as a fine-tune' {
        $odd = Join-Path $TestDrive 'adapters2/[v2] lora'
        New-Item -ItemType Directory -Force (Split-Path $odd) | Out-Null
        Copy-Item -LiteralPath $loraMath.Path -Destination $odd -Recurse
        (Get-TaskVector $base.Path -LiteralAdapter $odd).LoraAdapters.Path | Should -Be $odd
        $vectors = Get-ChildItem (Join-Path $TestDrive 'adapters') -Directory | Sort-Object Name | Get-TaskVector -Base $base.Path
        $vectors.Name | Should -Be @('lora-code', 'lora-math')
        $vectors | ForEach-Object { $_.LoraAdapters.Count } | Should -Be @(1, 1)
    }

    It 'refuses an adapter stored only as adapter_model.bin with AdapterUnsupported' {
        $pickled = Join-Path $TestDrive 'pickled'
        New-Item -ItemType Directory $pickled | Out-Null
        Copy-Item (Join-Path $loraMath.Path 'adapter_config.json') $pickled
        [IO.File]::WriteAllBytes((Join-Path $pickled 'adapter_model.bin'), [byte[]] (0x80, 2))
        { Get-TaskVector $base.Path -Adapter $pickled -ErrorAction Stop } | Should -Throw -ErrorId 'AdapterUnsupported,*'
    }
}

Describe 'Adapters with another vocabulary (-TokenizerSource, tokenizer_source)' {
    BeforeAll {
        # Synthetic models have no tokenizer files: rows match by index, and the union adds the wider model's two rows.
        $script:wider = New-SyntheticCheckpoint (Join-Path $TestDrive 'vocab/wider') -HiddenSize 64 -Layers 2 -VocabSize 130 -DType float32 -Seed 5
        # An adapter that replaces the whole embedding (modules_to_save): its rows follow the base tokenizer.
        $script:embeddingAdapter = Join-Path $TestDrive 'adapters-embed/embed'
        New-Item -ItemType Directory -Force -Path $embeddingAdapter | Out-Null
        $rows = [float[]]::new(128 * $hidden)
        $bytes = [byte[]]::new(4 * $rows.Length); [Buffer]::BlockCopy($rows, 0, $bytes, 0, $bytes.Length)
        Write-TestSafetensors -File (Join-Path $embeddingAdapter 'adapter_model.safetensors') -Tensors ([ordered]@{
            'base_model.model.model.embed_tokens.weight' = @{ DType = 'F32'; Shape = @(128, $hidden); Bytes = $bytes }
        })
        @{ peft_type = 'LORA'; r = 2; lora_alpha = 4; target_modules = @('q_proj'); base_model_name_or_path = 'base' } |
            ConvertTo-Json | Set-Content -LiteralPath (Join-Path $embeddingAdapter 'adapter_config.json')
    }

    It 'gives an adapter the union''s re-rowed base beside a wider fine-tune, its delta still s·B·A' {
        $vectors = @(Get-TaskVector -Base $base.Path -FineTuned $wider.Path, $loraMath.Path -TokenizerSource Union)
        $vectors.Count | Should -Be 2
        $vectors[1].LoraAdapters.Count | Should -Be 1
        ($vectors[1].Base.Tensors | Where-Object Name -eq 'model.embed_tokens.weight').Shape | Should -Be @(130, 64)
        $expected = Get-LoraDelta $loraMath
        $actual = Get-DeltaValues $vectors[1] $q
        $worst = 0.0
        for ($i = 0; $i -lt $expected.Length; $i++) { $worst = [Math]::Max($worst, [Math]::Abs($expected[$i] - $actual[$i])) }
        $worst | Should -BeLessThan 1e-6
        Get-DeltaValues $vectors[1] 'model.embed_tokens.weight' | Where-Object { $_ -ne 0 } | Should -BeNullOrEmpty
    }

    It 'merges base+adapter in a union recipe, and mergekit_config.yml spells the adapter as mergekit does' {
        $yaml = "merge_method: task_arithmetic`nbase_model: $($base.Path)`ntokenizer_source: union`nparameters: { weight: 1.0 }`nmodels:`n  - model: $($wider.Path)`n  - model: $($base.Path)+$($loraMath.Path)`n"
        $out = Invoke-DareMerge -Yaml $yaml -OutputPath (Join-Path $TestDrive 'recipe-union-lora')
        (Read-TensorBytes $out.Path 'model.embed_tokens.weight').Bytes.Length | Should -Be (4 * 130 * $hidden)
        $config = Get-Content -Raw (Join-Path $out.Path 'mergekit_config.yml')
        $config | Should -Match ([regex]::Escape("$($base.Path)+$($loraMath.Path)"))
        $config | Should -Match 'tokenizer_source: union'
    }

    It 'refuses an adapter that changes a re-rowed vocabulary tensor with AdapterUnsupported, from the cmdlet and a recipe' {
        $err = $null
        Get-TaskVector -Base $base.Path -FineTuned $wider.Path, $embeddingAdapter -TokenizerSource Union -ErrorVariable err -ErrorAction SilentlyContinue | Out-Null
        $err.Count | Should -Be 1
        $err[0].FullyQualifiedErrorId | Should -BeLike 'AdapterUnsupported,*'
        $err[0].Exception.Message | Should -Match "changes 'model\.embed_tokens\.weight'.*re-orders"
        $yaml = "merge_method: task_arithmetic`nbase_model: $($base.Path)`ntokenizer_source: union`nparameters: { weight: 1.0 }`nmodels:`n  - model: $($wider.Path)`n  - model: $($base.Path)+$embeddingAdapter`n"
        $out = Join-Path $TestDrive 'recipe-union-embed'
        { Invoke-DareMerge -Yaml $yaml -OutputPath $out -ErrorAction Stop } | Should -Throw -ErrorId 'AdapterUnsupported,*'
        Test-Path $out | Should -BeFalse
    }
}

Describe 'Export-LoraAdapter' {
    It 'extracts a fine-tune at full rank under PEFT''s names, and the adapter reads back as the same delta' {
        $result = Get-TaskVector $base.Path $math.Path | Export-LoraAdapter (Join-Path $TestDrive 'math-lora') -Rank 64 -DType float32
        $result | Should -BeOfType Dare.Engine.Adapters.LoraExportResult
        $header = (Read-SafetensorsHeader (Join-Path $result.Path 'adapter_model.safetensors')).Header
        $header['base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight'].shape | Should -Be @(64, 64)
        $header['base_model.model.model.layers.0.mlp.up_proj.lora_B.weight'].shape | Should -Be @(192, 64)
        $header['base_model.model.model.embed_tokens.weight'].shape | Should -Be @(128, 64)
        $header.Keys.Where({ $_ -like '*norm*' }) | Should -BeNullOrEmpty
        $config = Get-Content -Raw (Join-Path $result.Path 'adapter_config.json') | ConvertFrom-Json
        $config.r | Should -Be 64
        $config.modules_to_save | Should -Be @('embed_tokens')
        $result.MaxRelativeError | Should -BeLessThan 1e-5

        $readBack = Get-TaskVector $base.Path -Adapter $result
        $original = Get-DeltaValues (Get-TaskVector $base.Path $math.Path) 'model.layers.1.mlp.down_proj.weight'
        $again = Get-DeltaValues $readBack 'model.layers.1.mlp.down_proj.weight'
        $difference = [double[]]::new($original.Length)
        for ($i = 0; $i -lt $original.Length; $i++) { $difference[$i] = $original[$i] - $again[$i] }
        (Get-Norm $difference) / (Get-Norm $original) | Should -BeLessThan 1e-5
    }

    It 'merges adapters by DARE-TIES and extracts the merge at rank 4 with the error it reports' {
        $merge = Get-TaskVector $base.Path -Adapter $loraMath.Path, $loraCode.Path | Invoke-DareDrop 0.5 -Seed 1 | Merge-Ties -KeepRatio 1
        $result = $merge | Export-LoraAdapter (Join-Path $TestDrive 'merged-lora') -Rank 4 -DType float32 -Include '*.q_proj.*'
        $result.Modules.Tensor | Should -Be @('model.layers.0.self_attn.q_proj.weight', 'model.layers.1.self_attn.q_proj.weight')
        $merged = Get-DeltaValues $merge $q
        $extracted = Get-DeltaValues (Get-TaskVector $base.Path -Adapter $result.Path) $q
        $difference = [double[]]::new($merged.Length)
        for ($i = 0; $i -lt $merged.Length; $i++) { $difference[$i] = $merged[$i] - $extracted[$i] }
        $measured = (Get-Norm $difference) / (Get-Norm $merged)
        $reported = ($result.Modules | Where-Object Tensor -eq $q).RelativeError
        $measured | Should -BeGreaterThan 0.01 # DARE's mask makes the merge far from rank 4
        [Math]::Abs($reported - $measured) | Should -BeLessThan 1e-4
        Get-Content -Raw (Join-Path $result.Path 'dare_recipe.yml') | Should -Match "model\.layers\.0\.self_attn\.q_proj: rank 4, error $([regex]::Escape($reported.ToString('0.########', [cultureinfo]::InvariantCulture)))"
    }

    It 'writes nothing with -WhatIf and refuses an existing folder without -Force' {
        $target = Join-Path $TestDrive 'whatif-lora'
        Get-TaskVector $base.Path $math.Path | Export-LoraAdapter $target -Rank 2 -WhatIf
        Test-Path -LiteralPath $target | Should -BeFalse
        New-Item -ItemType Directory $target | Out-Null
        Set-Content (Join-Path $target 'keep.txt') 'mine'
        { Get-TaskVector $base.Path $math.Path | Export-LoraAdapter $target -Rank 2 -ErrorAction Stop } | Should -Throw -ErrorId 'OutputExists,*'
        (Get-ChildItem $target).Name | Should -Be @('keep.txt')
    }

    It 'replaces an earlier adapter with -Force, and never an adapter the export reads' {
        $target = Join-Path $TestDrive 'replaced-lora'
        $first = Get-TaskVector $base.Path $math.Path | Export-LoraAdapter $target -Rank 2 -DType float32
        $second = Get-TaskVector $base.Path $math.Path | Export-LoraAdapter $target -Rank 3 -DType float32 -Force
        (Get-Content -Raw (Join-Path $second.Path 'adapter_config.json') | ConvertFrom-Json).r | Should -Be 3
        $copy = Join-Path $TestDrive 'adapters-copy/lora-math'
        New-Item -ItemType Directory -Force (Split-Path $copy) | Out-Null
        Copy-Item -LiteralPath $loraMath.Path -Destination $copy -Recurse
        { Get-TaskVector $base.Path -Adapter $copy | Export-LoraAdapter $copy -Rank 2 -Force -ErrorAction Stop } | Should -Throw -ErrorId 'OutputNotReplaceable,*'
        { Get-TaskVector $base.Path -Adapter $copy | Export-Safetensors $copy -Force -ErrorAction Stop } | Should -Throw -ErrorId 'OutputNotReplaceable,*'
        (Get-ChildItem -LiteralPath $copy).Name | Sort-Object | Should -Be @('adapter_config.json', 'adapter_model.safetensors')
    }

    It 'factors every matrix by the SVD -Svd names, and says which per module and in dare_recipe.yml' {
        $vector = Get-TaskVector $base.Path $math.Path
        $exact = $vector | Export-LoraAdapter (Join-Path $TestDrive 'exact-lora') -Rank 3 -DType float32 -Include '*.q_proj.*', '*.down_proj.*' -Svd Exact
        $randomized = $vector | Export-LoraAdapter (Join-Path $TestDrive 'randomized-lora') -Rank 3 -DType float32 -Include '*.q_proj.*', '*.down_proj.*' -Svd Randomized
        $exact.Modules.Svd | Sort-Object -Unique | Should -Be 'Exact'
        $randomized.Modules.Svd | Sort-Object -Unique | Should -Be 'Randomized'
        # Eckart–Young: no rank-3 factors come closer to δ than the exact truncated SVD's.
        foreach ($module in $exact.Modules) {
            $other = $randomized.Modules | Where-Object Tensor -eq $module.Tensor
            $module.RelativeError | Should -BeLessOrEqual ($other.RelativeError + 1e-6)
        }
        Get-Content -Raw (Join-Path $randomized.Path 'dare_recipe.yml') | Should -Match 'model\.layers\.0\.self_attn\.q_proj: rank 3, error [0-9.]+, randomized SVD'
        (Get-Command Export-LoraAdapter).Parameters['Svd'].ParameterType.GetEnumNames() | Should -Be @('Auto', 'Exact', 'Randomized')
    }

    It 'runs the SVDs on the -Device it names: torch-cpu writes the adapter cpu writes, cuda here is DeviceUnavailable with nothing written' {
        $vector = Get-TaskVector $base.Path $math.Path
        $onCpu = $vector | Export-LoraAdapter (Join-Path $TestDrive 'device-cpu-lora') -Rank 3 -Include '*.layers.1.*' -Svd Randomized
        $onTorch = $vector | Export-LoraAdapter (Join-Path $TestDrive 'device-torch-lora') -Rank 3 -Include '*.layers.1.*' -Svd Randomized -Device torch-cpu
        $bytes = { param($Result) [Convert]::ToHexString([Security.Cryptography.SHA256]::HashData([IO.File]::ReadAllBytes((Join-Path $Result.Path 'adapter_model.safetensors')))) }
        & $bytes $onTorch | Should -Be (& $bytes $onCpu)
        $target = Join-Path $TestDrive 'device-cuda-lora'
        { $vector | Export-LoraAdapter $target -Rank 3 -Device cuda:1 -ErrorAction Stop } |
            Should -Throw -ErrorId 'DeviceUnavailable,Dare.PowerShell.ExportLoraAdapterCommand' -ExpectedMessage "*'cuda:1'*"
        $target | Should -Not -Exist
    }

    It 'refuses -Rank together with -RetainedEnergy' {
        { Get-TaskVector $base.Path $math.Path | Export-LoraAdapter (Join-Path $TestDrive 'both') -Rank 2 -RetainedEnergy 0.9 -ErrorAction Stop } |
            Should -Throw -ErrorId 'InvalidParameter,*'
    }
}

Describe 'Adapters in recipes and in Measure-TaskVector' {
    It 'runs mergekit''s model: base+adapter like Get-TaskVector -Adapter' {
        $yaml = "merge_method: task_arithmetic`nbase_model: $($base.Path)`nmodels:`n  - model: $($base.Path)+$($loraMath.Path)`n    parameters: { weight: 1.0 }`n"
        $out = Invoke-DareMerge -Yaml $yaml -OutputPath (Join-Path $TestDrive 'recipe-lora')
        $viaPipeline = Get-TaskVector $base.Path -Adapter $loraMath.Path | Export-Safetensors (Join-Path $TestDrive 'pipeline-lora')
        [byte[]] $fromRecipe = (Read-TensorBytes $out.Path $q).Bytes
        [byte[]] $fromPipeline = (Read-TensorBytes $viaPipeline.Path $q).Bytes
        $fromRecipe.Length | Should -Be (4 * $hidden * $hidden)
        [Linq.Enumerable]::SequenceEqual($fromRecipe, $fromPipeline) | Should -BeTrue
    }

    It 'reports an adapter''s rank, and tells its low-rank delta from a full fine-tune''s' {
        $lora = Get-TaskVector $base.Path -Adapter $loraMath.Path | Measure-TaskVector
        $lora.AdapterRank | Should -Be 2
        $lora.SampledRanks.Rank99 | Should -BeLessOrEqual 2
        $lora.LooksLowRank | Should -BeTrue
        $full = Get-TaskVector $base.Path $math.Path | Measure-TaskVector -RankSamples 2
        $full.AdapterRank | Should -BeNullOrEmpty
        $full.SampledRanks.Count | Should -Be 2
        $full.LooksLowRank | Should -BeFalse
    }
}
