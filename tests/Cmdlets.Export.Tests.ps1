# Export-Safetensors: output layout, dtypes, shards, recipe, determinism, atomic replace, -WhatIf, cancellation.
BeforeAll {
    . (Join-Path $PSScriptRoot 'TestHelpers.ps1')
    Import-DareTestModule

    $models = Join-Path $TestDrive 'models'
    $script:base = New-SyntheticCheckpoint (Join-Path $models 'base') -HiddenSize 64 -Layers 2 -VocabSize 128 -MaxShardSize 100KB
    $script:math = New-SyntheticCheckpoint (Join-Path $models 'math') -BaseModel $base -Seed 2
    $script:code = New-SyntheticCheckpoint (Join-Path $models 'code') -BaseModel $base -Seed 3
    $script:base32 = New-SyntheticCheckpoint (Join-Path $models 'base32') -HiddenSize 64 -Layers 2 -VocabSize 128 -DType float32
    $script:tune32 = New-SyntheticCheckpoint (Join-Path $models 'tune32') -BaseModel $base32 -Seed 4 -DType float32
    $script:out = Join-Path $TestDrive 'out'
    New-Item -ItemType Directory $out | Out-Null

    # The DARE-TIES plan most tests export.
    function New-Plan([long] $Seed = 42) {
        Get-TaskVector -Base $base -FineTuned $math, $code | Invoke-DareDrop -DropRate 0.9 -Seed $Seed | Merge-Ties -KeepRatio 0.5
    }
}

Describe 'Export-Safetensors' {
    Context 'What it writes' {
        BeforeAll {
            $script:result = New-Plan | Export-Safetensors -Path (Join-Path $out 'merged')
            $script:merged = Join-Path $out 'merged'
        }

        It 'returns an ExportResult with the path, the files and the totals' {
            $result | Should -BeOfType Dare.Engine.Merge.ExportResult
            $result.Path | Should -Be $merged
            # Ordinal order, as the export lists its files (README.md before config.json, tokenizer.json before tokenizer_config.json).
            [string[]] $onDisk = @(Get-ChildItem $merged -File | ForEach-Object FullName)
            [Array]::Sort($onDisk, [StringComparer]::Ordinal)
            $result.Files | Should -Be $onDisk
            $result.TensorCount | Should -Be 21
            $result.BytesWritten | Should -Be (Import-Safetensors $merged).SizeBytes
            $result.BytesRead | Should -BeGreaterThan $result.BytesWritten
            $result.Elapsed | Should -BeGreaterThan ([timespan]::Zero)
        }

        It 'writes one model.safetensors when the tensors fit in one shard, keeping the base dtypes' {
            Join-Path $merged 'model.safetensors' | Should -Exist
            Join-Path $merged 'model.safetensors.index.json' | Should -Not -Exist
            (Import-Safetensors $merged).DTypeSummary | Should -Be 'BF16 (21)'
        }

        It 'copies config.json, generation_config.json and the tokenizer files from the base' {
            foreach ($name in 'config.json', 'generation_config.json', 'tokenizer_config.json', 'special_tokens_map.json') {
                Get-Content -Raw (Join-Path $merged $name) | Should -Be (Get-Content -Raw (Join-Path $base.Path $name)) -Because $name
            }
        }

        It 'records the recipe in dare_recipe.yml and in the __metadata__ of the model file' {
            $recipe = Get-Content -Raw (Join-Path $merged 'dare_recipe.yml')
            $recipe | Should -Match 'merge_method: ties'
            $recipe | Should -Match 'random_seed: 42'
            $recipe | Should -Match ([regex]::Escape("base_model: $($base.Path)"))
            $metadata = (Read-SafetensorsHeader (Join-Path $merged 'model.safetensors')).Metadata
            # The header names the models instead of giving their local paths, and identifies them by size and header hash.
            # dare_recipe.yml ends with the record of the inputs' files (dare_inputs, with its comment), which the header keeps as JSON.
            $recipe | Should -Match '(?m)^dare_inputs:'
            $recipeOnly = $recipe -replace '(?ms)^#[^\n]*\ndare_inputs:.*\z', ''
            $metadata.dare_recipe | Should -BeExactly $recipeOnly.Replace($base.Path, 'base').Replace($math.Path, 'math').Replace($code.Path, 'code')
            (ConvertFrom-Json $metadata.dare_inputs).name | Should -Be @('base', 'math', 'code')
            $metadata.dare_content | Should -Be 'model'
            $metadata.format | Should -Be 'pt'
        }

        It 'leaves no temporary folder behind' {
            Get-DareTempFolders $out | Should -BeNullOrEmpty
        }
    }

    It 'writes shards of at most -MaxShardSize and an index that maps every tensor, recipe in every shard' {
        $path = Join-Path $out 'sharded'
        $result = New-Plan | Export-Safetensors $path -MaxShardSize 100KB
        $shards = @(Get-ChildItem $path -Filter 'model-*-of-*.safetensors')
        $shards.Count | Should -BeGreaterThan 1
        $result.Files | Should -Contain (Join-Path $path 'model.safetensors.index.json')
        $index = Get-Content -Raw (Join-Path $path 'model.safetensors.index.json') | ConvertFrom-Json -AsHashtable
        $index.weight_map.Keys | Sort-Object | Should -Be ($base.Tensors.Name | Sort-Object)
        @($index.weight_map.Values | Select-Object -Unique).Count | Should -Be $shards.Count
        foreach ($shard in $shards) {
            $header = Read-SafetensorsHeader $shard.FullName
            $shard.Length - $header.DataStart | Should -BeLessOrEqual 100000
            $header.Metadata.dare_recipe | Should -Match 'max_shard_size: 100000'
        }
        (Import-Safetensors $path).Layout | Should -Be 'Sharded'
    }

    It 'converts floating-point tensors to -DType <DType> and sets config.json torch_dtype to match' -ForEach @(
        @{ DType = 'float32'; Stored = 'F32 (21)'; Source = 'bf16' }
        @{ DType = 'bfloat16'; Stored = 'BF16 (21)'; Source = 'f32' }
        @{ DType = 'float16'; Stored = 'F16 (21)'; Source = 'f32' }
    ) {
        $path = Join-Path $out "dtype-$DType"
        $vector = if ($Source -eq 'bf16') { Get-TaskVector $base $math } else { Get-TaskVector $base32 $tune32 }
        $vector | Export-Safetensors $path -DType $DType | Out-Null
        (Import-Safetensors $path).DTypeSummary | Should -Be $Stored
        (Get-Content -Raw (Join-Path $path 'config.json') | ConvertFrom-Json).torch_dtype | Should -Be $DType
        Get-Content (Join-Path $path 'dare_recipe.yml') | Should -Contain "out_dtype: $DType"
    }

    It 'keeps each base tensor''s dtype without -DType' {
        $path = Join-Path $out 'dtype-kept'
        Get-TaskVector $base32 $tune32 | Export-Safetensors $path | Out-Null
        (Import-Safetensors $path).DTypeSummary | Should -Be 'F32 (21)'
        (Get-Content -Raw (Join-Path $path 'config.json') | ConvertFrom-Json).torch_dtype | Should -Be 'float32'
    }

    It 'writes only the delta with -DeltaOnly' {
        $path = Join-Path $out 'delta'
        Get-TaskVector $base32 $tune32 | Export-Safetensors $path -DeltaOnly | Out-Null
        $name = 'model.layers.1.mlp.down_proj.weight'
        $written = Read-TestTensor $path $name
        $tuned = Read-TestTensor $tune32.Path $name
        $original = Read-TestTensor $base32.Path $name
        $wrong = @(for ($i = 0; $i -lt $written.Length; $i++) { if ($written[$i] -ne [float] ($tuned[$i] - $original[$i])) { $i } })
        $wrong | Should -BeNullOrEmpty
        (Read-SafetensorsHeader (Join-Path $path 'model.safetensors')).Metadata.dare_content | Should -Be 'delta'
    }

    It 'writes byte-identical files for the same seed, and different model files for another seed' {
        New-Plan -Seed 7 | Export-Safetensors (Join-Path $out 'same-1') -MaxShardSize 100KB | Out-Null
        New-Plan -Seed 7 | Export-Safetensors (Join-Path $out 'same-2') -MaxShardSize 100KB | Out-Null
        New-Plan -Seed 8 | Export-Safetensors (Join-Path $out 'other-seed') -MaxShardSize 100KB | Out-Null
        $first = Get-FolderHashes (Join-Path $out 'same-1')
        $second = Get-FolderHashes (Join-Path $out 'same-2')
        $other = Get-FolderHashes (Join-Path $out 'other-seed')
        $first.Keys | Should -Be $second.Keys
        foreach ($name in $first.Keys) { $second[$name] | Should -Be $first[$name] -Because $name }
        $shard = $first.Keys | Where-Object { $_ -like 'model-*' } | Select-Object -First 1
        $other[$shard] | Should -Not -Be $first[$shard]
    }

    Context 'An existing output' {
        BeforeEach {
            $script:existing = Join-Path $out 'existing'
            Remove-Item $existing -Recurse -Force -ErrorAction Ignore
            New-Item -ItemType Directory $existing | Out-Null
            Set-Content (Join-Path $existing 'USE_POLICY.md') 'an earlier model'
        }

        It 'is refused without -Force with OutputExists (ResourceExists), and left untouched' {
            { New-Plan | Export-Safetensors $existing } | Should -Throw -ErrorId 'OutputExists,Dare.PowerShell.ExportSafetensorsCommand'
            $failure = $null
            try { New-Plan | Export-Safetensors $existing -ErrorAction Stop } catch { $failure = $_ }
            $failure.CategoryInfo.Category | Should -Be 'ResourceExists'
            $failure.Exception.Message | Should -BeLike "*$existing*-Force*"
            (Get-ChildItem $existing -Force).Name | Should -Be 'USE_POLICY.md'
            Get-Content (Join-Path $existing 'USE_POLICY.md') | Should -Be 'an earlier model'
            Get-DareTempFolders $out | Should -BeNullOrEmpty
        }

        It 'is replaced with -Force' {
            New-Plan | Export-Safetensors $existing -Force | Out-Null
            Join-Path $existing 'USE_POLICY.md' | Should -Not -Exist
            Join-Path $existing 'model.safetensors' | Should -Exist
            Get-DareTempFolders $out | Should -BeNullOrEmpty
        }

        It 'is an empty folder that can be written without -Force' {
            Remove-Item (Join-Path $existing 'USE_POLICY.md')
            New-Plan | Export-Safetensors $existing | Out-Null
            Join-Path $existing 'model.safetensors' | Should -Exist
        }
    }

    It 'writes nothing with -WhatIf' {
        $path = Join-Path $out 'what-if'
        New-Plan | Export-Safetensors $path -WhatIf | Should -BeNullOrEmpty
        $path | Should -Not -Exist
        Get-DareTempFolders $out | Should -BeNullOrEmpty
    }

    Context 'Paths' {
        It 'resolves a relative -Path against the PowerShell location' {
            Push-Location $out
            try { (New-Plan | Export-Safetensors ./relative).Path | Should -Be (Join-Path $out 'relative') }
            finally { Pop-Location }
            Join-Path $out 'relative/model.safetensors' | Should -Exist
        }

        It 'writes to a -LiteralPath with wildcard characters as typed' {
            $path = Join-Path $out 'run[1]'
            (New-Plan | Export-Safetensors -LiteralPath $path).Path | Should -Be $path
            Test-Path -LiteralPath (Join-Path $path 'model.safetensors') | Should -BeTrue
        }

        It 'resolves a wildcard -Path that matches one existing folder' {
            New-Item -ItemType Directory (Join-Path $out 'wildcard-target') | Out-Null
            (New-Plan | Export-Safetensors (Join-Path $out 'wildcard-t*')).Path | Should -Be (Join-Path $out 'wildcard-target')
        }

        It 'refuses a destination on another provider (<Path>) with NotFileSystemPath' -ForEach @(@{ Path = 'Env:\DARE_OUTPUT' }, @{ Path = 'Function:\merged' }) {
            { New-Plan | Export-Safetensors -Path $Path } | Should -Throw -ErrorId 'NotFileSystemPath,Dare.PowerShell.ExportSafetensorsCommand'
            { New-Plan | Export-Safetensors -LiteralPath $Path } | Should -Throw -ErrorId 'NotFileSystemPath,*'
            Test-Path Env:\DARE_OUTPUT | Should -BeFalse
        }
    }

    Context 'Phase profile (DARE_PROFILE)' {
        It 'prints every phase, the total, how each TIES threshold was found and the TIES routes as verbose lines' {
            $env:DARE_PROFILE = '1'
            try {
                $lines = @(Get-TaskVector -Base $base -FineTuned $math, $code | Merge-Ties -KeepRatio 0.2 |
                    Export-Safetensors -Path (Join-Path $out 'profiled') -Verbose 4>&1 | ForEach-Object { "$_" } | Where-Object { $_ -like 'profile:*' })
            }
            finally {
                Remove-Item Env:DARE_PROFILE
            }
            foreach ($phase in 'Read', 'DeltaFused', 'Select', 'Combine', 'Write', 'Commit', 'Other') {
                ($lines -match "^profile: $phase +\d+\.\d{3} s +\d+\.\d% \(") | Should -HaveCount 1 -Because $phase
            }
            ($lines -match '^profile: Total +(\d+\.\d+) s') | Should -HaveCount 1
            # One threshold per tensor and input: 21 tensors, 2 inputs, whichever way each was found.
            $thresholds = @($lines -match '^profile: thresholds ')
            $thresholds | Should -HaveCount 1
            ([regex]::Matches($thresholds[0], '(\d+) by') | ForEach-Object { [int] $_.Groups[1].Value } | Measure-Object -Sum).Sum | Should -Be 42
            $ties = @($lines -match '^profile: \(TIES\) +(\d+) tensors .*; (\d+) presampled from the input files$')
            $ties | Should -HaveCount 1
            $null = $ties[0] -match '(\d+) tensors .*; (\d+) presampled'
            [int] $Matches[1] | Should -BeLessOrEqual 21
            [int] $Matches[2] | Should -BeLessOrEqual 21
        }

        It 'prints no profile without DARE_PROFILE' {
            $verbose = @(Get-TaskVector -Base $base -FineTuned $math, $code | Merge-Ties -KeepRatio 0.2 |
                Export-Safetensors -Path (Join-Path $out 'unprofiled') -Verbose 4>&1 | ForEach-Object { "$_" })
            $verbose | Should -Not -BeNullOrEmpty
            $verbose -like 'profile:*' | Should -BeNullOrEmpty
        }
    }

    Context 'Progress and cancellation' {
        BeforeAll {
            # Big enough that DARE (L1 rescale) + TIES over three inputs takes around a second.
            $script:bigBase = New-SyntheticCheckpoint (Join-Path $models 'big-base') -HiddenSize 384 -Layers 4 -VocabSize 4096
            $script:bigTune = New-SyntheticCheckpoint (Join-Path $models 'big-tune') -BaseModel $bigBase -Seed 5
            $script:slowExport = {
                param($Base, $Tune, $Output)
                Get-TaskVector $Base $Tune, $Tune, $Tune | Invoke-DareDrop 0.9 -Seed 1 -Rescale L1 | Merge-Ties 0.5 | Export-Safetensors $Output
            }
        }

        It 'reports progress with Write-Progress and completes the progress bar' {
            $run = Invoke-InRunspace { param($Base, $Tune, $Output) Get-TaskVector $Base $Tune | Export-Safetensors $Output } $base.Path, $math.Path, (Join-Path $out 'progress')
            $run.Errors | Should -BeNullOrEmpty
            $run.Progress.Count | Should -BeGreaterOrEqual 2
            $run.Progress[0].Activity | Should -Be 'Merging'
            $run.Progress[0].StatusDescription | Should -Match '^0/21 tensors'
            $run.Progress[-1].RecordType | Should -Be 'Completed'
        }

        It 'stops when the pipeline is stopped, leaving no output and no temporary folder' {
            $parent = Join-Path $out 'cancel'
            New-Item -ItemType Directory $parent | Out-Null
            $output = Join-Path $parent 'merged'
            $script = "& { $($slowExport.ToString()) } '$($bigBase.Path)' '$($bigTune.Path)' '$output'"
            $run = Invoke-StoppedInChild $script $parent
            $run.Completed | Should -BeFalse -Because 'the export must still be running when it is stopped'
            $run.State | Should -Be 'Stopped'
            $output | Should -Not -Exist
            Get-DareTempFolders $parent | Should -BeNullOrEmpty
        }
    }
}
