# Invoke-DareMerge: the example recipes, mergekit-style recipes, replays of exported recipes and every error case.
# Merged values are checked against merges recomputed plainly here from the tensors on disk (read with a tiny
# safetensors reader below); only DARE's drop decision comes from the engine's public mask function.
BeforeAll {
    . (Join-Path $PSScriptRoot 'TestHelpers.ps1')
    . (Join-Path $PSScriptRoot 'ReferenceMerge.ps1')
    Import-DareTestModule

    $script:Work = Join-Path ([IO.Path]::GetTempPath()) "dare-recipes-$([guid]::NewGuid().ToString('N'))"
    $script:Models = Join-Path $Work 'models'
    $script:Out = Join-Path $Work 'out'
    New-Item -ItemType Directory $Models, $Out | Out-Null
    $baseCheckpoint = New-SyntheticCheckpoint (Join-Path $Models 'base') -HiddenSize 64 -Layers 2 -VocabSize 128 -DType float32
    $seed = 10
    foreach ($name in 'math', 'code', 'chat') {
        $null = New-SyntheticCheckpoint (Join-Path $Models $name) -BaseModel $baseCheckpoint -Seed ($seed++) -DType float32
    }
    $null = New-SyntheticCheckpoint (Join-Path $Work 'wide') -HiddenSize 64 -Layers 3 -VocabSize 256 -DType float32
    Copy-Item (Join-Path $PSScriptRoot '../examples/*.yml') $Models

    # name -> float[] for every tensor of a one-file model (F32 or BF16), and name -> dtype.
    function Read-Model([string] $Folder) {
        $bytes = [IO.File]::ReadAllBytes((Join-Path $Folder 'model.safetensors'))
        $headerLength = [BitConverter]::ToInt64($bytes, 0)
        $header = [Text.Encoding]::UTF8.GetString($bytes, 8, $headerLength) | ConvertFrom-Json -AsHashtable
        $tensors = @{}
        $dtypes = @{}
        foreach ($name in $header.Keys | Where-Object { $_ -ne '__metadata__' }) {
            $entry = $header[$name]
            $start = 8 + $headerLength + $entry.data_offsets[0]
            $length = $entry.data_offsets[1] - $entry.data_offsets[0]
            $dtypes[$name] = $entry.dtype
            if ($entry.dtype -eq 'F32') {
                $values = [float[]]::new($length / 4)
                [Buffer]::BlockCopy($bytes, $start, $values, 0, $length)
            }
            else {
                # BF16 is the upper half of a float32.
                $values = [float[]]::new($length / 2)
                for ($i = 0; $i -lt $values.Length; $i++) {
                    $values[$i] = [BitConverter]::Int32BitsToSingle([int]([BitConverter]::ToUInt16($bytes, $start + 2 * $i)) -shl 16)
                }
            }
            $tensors[$name] = $values
        }
        [pscustomobject]@{ Tensors = $tensors; DTypes = $dtypes; Metadata = $header['__metadata__'] }
    }

    $script:Base = Read-Model (Join-Path $Models 'base')
    $script:Tuned = @{}
    foreach ($name in 'math', 'code', 'chat') { $Tuned[$name] = Read-Model (Join-Path $Models $name) }

    # fine-tune - base, in float32 as the engine computes it.
    function Get-Delta([string] $Model, [string] $Tensor, $Source = $Tuned[$Model]) {
        $t = $Source.Tensors[$Tensor]; $b = $Base.Tensors[$Tensor]
        $d = [double[]]::new($t.Length)
        for ($i = 0; $i -lt $t.Length; $i++) { $d[$i] = [float]($t[$i] - $b[$i]) }
        , $d
    }

    # The largest |actual - (base + expected delta)| over a tensor.
    function Get-Error($Model, [string] $Tensor, [double[]] $ExpectedDelta) {
        $actual = $Model.Tensors[$Tensor]; $b = $Base.Tensors[$Tensor]
        $worst = 0.0
        for ($i = 0; $i -lt $actual.Length; $i++) { $worst = [Math]::Max($worst, [Math]::Abs($actual[$i] - ($b[$i] + $ExpectedDelta[$i]))) }
        $worst
    }

    function Test-SameValues([float[]] $Actual, [float[]] $Expected) { [Linq.Enumerable]::SequenceEqual($Actual, $Expected) }

    function Get-FolderEntries([string] $Folder) { @(Get-ChildItem -LiteralPath $Folder -Force -Recurse | ForEach-Object FullName | Sort-Object) }
}

AfterAll {
    Remove-Item -LiteralPath $Work -Recurse -Force -ErrorAction Ignore
}

Describe 'Invoke-DareMerge with the example recipes' {
    It 'dare-linear.yml: base + sum of weight * DARE(task vector), drop rate = 1 - density' {
        $result = Invoke-DareMerge (Join-Path $Models 'dare-linear.yml') -OutputPath (Join-Path $Out 'dare-linear')
        $result.Path | Should -Be (Join-Path $Out 'dare-linear')
        $merged = Read-Model $result.Path
        foreach ($tensor in 'model.embed_tokens.weight', 'model.layers.1.self_attn.q_proj.weight') {
            $expected = Get-LinearMerge @(
                (Get-Dropped (Get-Delta math $tensor) $tensor 42 0 0.8),
                (Get-Dropped (Get-Delta code $tensor) $tensor 42 1 0.7)) @(0.6, 0.4) $false
            Get-Error $merged $tensor $expected | Should -BeLessThan 1e-6
        }
        # About 0.8 * 0.7 of the entries are dropped from both task vectors and keep the base's value exactly.
        $a = $merged.Tensors['model.layers.0.mlp.up_proj.weight']; $b = $Base.Tensors['model.layers.0.mlp.up_proj.weight']
        $same = 0; for ($i = 0; $i -lt $a.Length; $i++) { if ($a[$i] -eq $b[$i]) { $same++ } }
        $same / $a.Length | Should -BeGreaterThan 0.54
        $same / $a.Length | Should -BeLessThan 0.58
    }

    It 'dare-ties.yml: the filter, the gradient, the skipped base entry and sign election give the merge it describes' {
        $merged = Read-Model (Invoke-DareMerge (Join-Path $Models 'dare-ties.yml') -OutputPath (Join-Path $Out 'dare-ties')).Path
        # (tensor, code's drop rate from the filter, chat's weight from the gradient [0.2, 0.6] over 2 layers; t = 0 outside them)
        $cases = @(
            @('model.embed_tokens.weight', 0.5, 0.2),
            @('model.layers.0.self_attn.q_proj.weight', 0.9, 0.2),
            @('model.layers.1.self_attn.v_proj.weight', 0.9, 0.6),
            @('lm_head.weight', 0.9, 0.2))
        foreach ($case in $cases) {
            $tensor, $codeDrop, $chatWeight = $case
            # Streams count the merged models only: the listed base adds no task vector.
            $deltas = @(
                (Get-Dropped (Get-Delta math $tensor) $tensor 42 0 0.9),
                (Get-Dropped (Get-Delta code $tensor) $tensor 42 1 $codeDrop),
                (Get-Dropped (Get-Delta chat $tensor) $tensor 42 2 0.7))
            $expected = Get-TiesMerge $deltas @(1.0, 0.5, $chatWeight) $true
            Get-Error $merged $tensor $expected | Should -BeLessThan 1e-6 -Because $tensor
        }
    }

    It 'ties.yml: magnitude trim, filtered weights and sign election; written as bfloat16' {
        $exact = Read-Model (Invoke-DareMerge (Join-Path $Models 'ties.yml') -OutputPath (Join-Path $Out 'ties-f32') -DType float32).Path
        foreach ($tensor in 'model.layers.0.mlp.down_proj.weight', 'model.layers.1.self_attn.k_proj.weight') {
            $codeWeight = if ($tensor -like '*mlp*') { 0.8 } else { 0.5 }
            $deltas = @(
                (Get-Trimmed (Get-Delta math $tensor) 0.5),
                (Get-Trimmed (Get-Delta code $tensor) 0.5),
                (Get-Trimmed (Get-Delta chat $tensor) 0.7))
            $expected = Get-TiesMerge $deltas @(1.0, $codeWeight, 0.3) $true
            Get-Error $exact $tensor $expected | Should -BeLessThan 1e-6 -Because $tensor
        }

        $written = Invoke-DareMerge (Join-Path $Models 'ties.yml') -OutputPath (Join-Path $Out 'ties')
        $bf16 = Read-Model $written.Path
        $bf16.DTypes.Values | Sort-Object -Unique | Should -Be 'BF16'
        (Get-Content -Raw (Join-Path $written.Path 'config.json') | ConvertFrom-Json).torch_dtype | Should -Be 'bfloat16'
    }

    It 'batch.yml: runs in order and the second recipe merges the first one''s output' {
        $results = @(Invoke-DareMerge (Join-Path $Models 'batch.yml'))
        $results.Path | Should -Be @((Join-Path $Models 'math-code'), (Join-Path $Models 'math-code-chat'))

        $first = Read-Model $results[0].Path
        $tensor = 'model.layers.1.mlp.gate_proj.weight'
        $expected = Get-LinearMerge @((Get-Delta math $tensor), (Get-Delta code $tensor)) @(0.5, 0.5) $false
        Get-Error $first $tensor $expected | Should -BeLessThan 1e-6

        $second = Read-Model $results[1].Path
        $expected = Get-LinearMerge @(
            (Get-Dropped (Get-Delta 'math-code' $tensor $first) $tensor 7 0 0.5),
            (Get-Dropped (Get-Delta chat $tensor) $tensor 7 1 0.8)) @(1.0, 0.5) $false
        Get-Error $second $tensor $expected | Should -BeLessThan 1e-6
        Get-Content -Raw (Join-Path $results[1].Path 'dare_recipe.yml') | Should -Match ([regex]::Escape("model: $(Join-Path $Models 'math-code')"))
    }

    It 'replays the dare_recipe.yml it writes to a bit-identical model' {
        $first = Invoke-DareMerge (Join-Path $Models 'dare-ties.yml') -OutputPath (Join-Path $Out 'dare-ties-again')
        $replay = Invoke-DareMerge (Join-Path $first.Path 'dare_recipe.yml') -OutputPath (Join-Path $Out 'dare-ties-replay')
        (Get-FileHash (Join-Path $replay.Path 'model.safetensors')).Hash | Should -Be (Get-FileHash (Join-Path $first.Path 'model.safetensors')).Hash
    }
}

Describe 'Invoke-DareMerge with mergekit-style recipes' {
    BeforeAll {
        function Invoke-Recipe([string] $Yaml, [string] $Name) {
            $path = Join-Path $Models "$Name.yml"
            Set-Content -LiteralPath $path -Value $Yaml
            Read-Model (Invoke-DareMerge $path -OutputPath (Join-Path $Out $Name)).Path
        }
    }

    It 'a filter giving weight 0 to mlp tensors leaves them equal to the base' {
        $merged = Invoke-Recipe -Name 'no-mlp' -Yaml @'
merge_method: task_arithmetic
base_model: ./base
models:
  - model: ./math
    parameters:
      weight:
        - filter: mlp
          value: 0
        - value: 1
  - model: ./code
    parameters:
      weight: [{ filter: mlp, value: 0 }, { value: 0.5 }]
'@
        foreach ($tensor in $Base.Tensors.Keys | Where-Object { $_ -like '*mlp*' }) {
            Test-SameValues $merged.Tensors[$tensor] $Base.Tensors[$tensor] | Should -BeTrue -Because $tensor
        }
        $tensor = 'model.layers.0.self_attn.o_proj.weight'
        Get-Error $merged $tensor (Get-LinearMerge @((Get-Delta math $tensor), (Get-Delta code $tensor)) @(1, 0.5) $false) | Should -BeLessThan 1e-6
        Test-SameValues $merged.Tensors[$tensor] $Base.Tensors[$tensor] | Should -BeFalse
    }

    It 'a gradient [0, 1] over 2 layers gives weight 0 on layer 0 and every tensor outside the layers (mergekit 0.1.4), 1 on layer 1' {
        $merged = Invoke-Recipe -Name 'gradient' -Yaml @'
merge_method: task_arithmetic
base_model: ./base
models:
  - model: ./math
    parameters: { weight: [0, 1] }
'@
        foreach ($tensor in @($Base.Tensors.Keys | Where-Object { $_ -like 'model.layers.0.*' }) + 'model.embed_tokens.weight' + 'model.norm.weight' + 'lm_head.weight') {
            Test-SameValues $merged.Tensors[$tensor] $Base.Tensors[$tensor] | Should -BeTrue -Because $tensor
        }
        foreach ($tensor in @($Base.Tensors.Keys | Where-Object { $_ -like 'model.layers.1.*' })) {
            Test-SameValues $merged.Tensors[$tensor] $Tuned.math.Tensors[$tensor] | Should -BeTrue -Because $tensor
        }
    }

    It 'gradient_outside_layers: legacy puts the final norm and lm_head at t = 1 and the embeddings at t = 0 (mergekit before #534)' {
        $merged = Invoke-Recipe -Name 'gradient-legacy' -Yaml @'
merge_method: task_arithmetic
base_model: ./base
gradient_outside_layers: legacy
models:
  - model: ./math
    parameters: { weight: [0, 1] }
'@
        Test-SameValues $merged.Tensors['model.embed_tokens.weight'] $Base.Tensors['model.embed_tokens.weight'] | Should -BeTrue
        foreach ($tensor in 'model.norm.weight', 'lm_head.weight') {
            Test-SameValues $merged.Tensors[$tensor] $Tuned.math.Tensors[$tensor] | Should -BeTrue -Because $tensor
        }
    }

    It 'linear is the weighted mean of the models, with or without base_model' {
        $withBase = Invoke-Recipe -Name 'linear-base' -Yaml @'
merge_method: linear
base_model: ./base
models:
  - model: ./math
    parameters: { weight: 1 }
  - model: ./code
    parameters: { weight: 3 }
'@
        $withoutBase = Invoke-Recipe -Name 'linear-nobase' -Yaml @'
merge_method: linear
models:
  - model: ./math
    parameters: { weight: 1 }
  - model: ./code
    parameters: { weight: 3 }
'@
        $tensor = 'model.layers.1.mlp.up_proj.weight'
        $expected = Get-LinearMerge @((Get-Delta math $tensor), (Get-Delta code $tensor)) @(1, 3) $true
        Get-Error $withBase $tensor $expected | Should -BeLessThan 1e-6
        Get-Error $withoutBase $tensor $expected | Should -BeLessThan 1e-6
    }

    It 'gives the same model from a file, YAML text, a parsed RecipeBatch and a hashtable' {
        $yaml = "merge_method: task_arithmetic`nbase_model: ./base`nmodels:`n  - model: ./math`n    parameters: { weight: 0.5 }`nparameters: { lambda: 2 }`n"
        $file = Join-Path $Models 'forms.yml'
        Set-Content -LiteralPath $file -Value $yaml
        $fromFile = Get-Item $file | Invoke-DareMerge -OutputPath (Join-Path $Out 'form-file')
        Push-Location $Models
        try {
            $fromText = $yaml | Invoke-DareMerge -OutputPath (Join-Path $Out 'form-text')
            $fromBatch = [Dare.Engine.Recipes.RecipeParser]::ParseFile($file) | Invoke-DareMerge -OutputPath (Join-Path $Out 'form-batch')
            $fromHashtable = [ordered]@{
                merge_method = 'task_arithmetic'; base_model = './base'
                models       = @(@{ model = './math'; parameters = @{ weight = 0.5 } })
                parameters   = @{ lambda = 2 }
            } | Invoke-DareMerge -OutputPath (Join-Path $Out 'form-hashtable')
        }
        finally { Pop-Location }
        $hashes = $fromFile, $fromText, $fromBatch, $fromHashtable | ForEach-Object { (Get-FileHash (Join-Path $_.Path 'model.safetensors')).Hash }
        $hashes | Sort-Object -Unique | Should -HaveCount 1
        $tensor = 'lm_head.weight'
        Get-Error (Read-Model $fromFile.Path) $tensor (Get-LinearMerge @(, (Get-Delta math $tensor)) @(0.5) $false 2) | Should -BeLessThan 1e-6
    }
}

Describe 'Replaying recipes written by the pipeline cmdlets' {
    It 'replays <Name> to a bit-identical model.safetensors' -ForEach @(
        @{ Name = 'DARE + TIES with a drop-rate override'; Folder = 'pipeline-dare-ties'; Export = {
                param($Destination)
                Get-TaskVector -Base (Join-Path $Models 'base') -FineTuned (Join-Path $Models 'math'), (Join-Path $Models 'code'), (Join-Path $Models 'chat') |
                    Invoke-DareDrop -DropRate 0.9 -Seed 42 -DropRateOverride ([ordered]@{ '*embed_tokens*' = 0.5 }) |
                    Merge-Ties -KeepRatio 0.5 -Weight 1, 0.5, 0.25 |
                    Export-Safetensors -Path $Destination -DType bfloat16 -MaxShardSize 100KB } }
        @{ Name = 'an unnormalized linear merge with lambda'; Folder = 'pipeline-linear'; Export = {
                param($Destination)
                Get-TaskVector -Base (Join-Path $Models 'base') -FineTuned (Join-Path $Models 'math'), (Join-Path $Models 'code') |
                    Merge-Linear -Normalize:$false -Weight 1, -0.5 -Lambda 0.5 |
                    Export-Safetensors -Path $Destination } }
        @{ Name = 'one DARE vector with L1 rescale, delta only'; Folder = 'pipeline-delta'; Export = {
                param($Destination)
                Get-TaskVector -Base (Join-Path $Models 'base') -FineTuned (Join-Path $Models 'chat') |
                    Invoke-DareDrop -DropRate 0.7 -Seed 3 -Rescale L1 |
                    Export-Safetensors -Path $Destination -DeltaOnly } }
    ) {
        $original = Join-Path $Out $Folder
        $replayed = "$original-replay"
        $null = & $Export $original
        $result = Invoke-DareMerge -ConfigPath (Join-Path $original 'dare_recipe.yml') -OutputPath $replayed
        $result.Path | Should -Be $replayed
        $files = Get-ChildItem $original -Filter '*.safetensors' | Sort-Object Name
        $files | Should -Not -BeNullOrEmpty
        (Get-ChildItem $replayed -Filter '*.safetensors' | Sort-Object Name).Name | Should -Be $files.Name
        foreach ($file in $files) {
            (Get-FileHash (Join-Path $replayed $file.Name)).Hash | Should -Be (Get-FileHash $file.FullName).Hash -Because $file.Name
        }
    }
}

Describe 'Invoke-DareMerge -WhatIf' {
    It 'prints the plan with per-tensor parameter values, size and memory, and writes nothing' {
        $before = Get-FolderEntries $Work
        $messages = Invoke-DareMerge (Join-Path $Models 'dare-ties.yml') -OutputPath (Join-Path $Out 'whatif') -WhatIf -Verbose 4>&1 | ForEach-Object { "$_" }
        $plan = $messages -join "`n"
        $plan | Should -Match "model: $([regex]::Escape((Join-Path $Models 'code')))"
        $plan | Should -Match 'code drop rate: 0\.5 x 1, 0\.9 x 20 tensor\(s\)'
        # Gradient [0.2, 0.6] over 2 layers: layer 0 and every tensor outside the layers (embeddings, norm, lm_head) at t = 0.
        $plan | Should -Match 'chat weight: 0\.2 x 12, 0\.6 x 9 tensor\(s\)'
        $plan | Should -Match 'output: 21 tensors, ~[\d.]+ KB in 1 shard\(s\); estimated peak working memory ~[\d.]+ KB'
        Get-FolderEntries $Work | Should -Be $before
    }

    It 'plans a whole batch before it runs, later recipes against earlier outputs' {
        $before = Get-FolderEntries $Work
        # -Force: the example run above already wrote the batch's first output.
        $messages = Invoke-DareMerge (Join-Path $Models 'batch.yml') -OutputPath (Join-Path $Out 'whatif-batch') -Force -WhatIf -Verbose 4>&1 | ForEach-Object { "$_" }
        ($messages -join "`n") | Should -Match "reads the output of 'math-code'"
        Get-FolderEntries $Work | Should -Be $before
    }

    It 'has help with a synopsis, every parameter described and examples' {
        $help = Get-Help Invoke-DareMerge -Full
        $help.Synopsis | Should -Match 'mergekit-style YAML'
        $parameters = (Get-Command Invoke-DareMerge).Parameters.Keys | Where-Object { $_ -notin [System.Management.Automation.PSCmdlet]::CommonParameters }
        foreach ($name in $parameters) {
            ($help.parameters.parameter | Where-Object name -EQ $name).description.Text -join '' | Should -Not -BeNullOrEmpty -Because $name
        }
        @($help.examples.example).Count | Should -BeGreaterOrEqual 2
    }

    It 'completes -DType values' {
        $line = 'Invoke-DareMerge x.yml -DType '
        (TabExpansion2 $line $line.Length).CompletionMatches.CompletionText | Should -Be @('bfloat16', 'float16', 'float32')
    }
}

Describe 'Invoke-DareMerge errors' {
    BeforeAll {
        $script:Errors = Join-Path $Work 'errors'
        New-Item -ItemType Directory $Errors -Force | Out-Null
        $script:Head = "base_model: ../models/base`nmodels:`n  - model: ../models/math`n"
    }

    It 'stops with <ErrorId> (<Case>) before writing anything' -ForEach @(
        @{ Case = 'unknown key'; ErrorId = 'RecipeUnknownKey'; Category = 'InvalidData'; Message = "recipe.yml, line 5, column 19 \(models\[0\]\.parameters\.wieght\).*Did you mean 'weight'\?"
            Yaml = "merge_method: ties`nbase_model: ../models/base`nmodels:`n  - model: ../models/math`n    parameters: { wieght: 1 }`n" }
        @{ Case = 'modules'; ErrorId = 'RecipeUnsupported'; Category = 'NotImplemented'; Message = "line 2, column 1 \(modules\)"
            Yaml = "merge_method: ties`nmodules: {}`nmodels: [../models/math]`n" }
        @{ Case = 'tokenizer_source naming no model of the recipe'; ErrorId = 'RecipeInvalid'; Category = 'InvalidData'; Message = "\(tokenizer_source\).*neither the base_model nor one of the models"
            Yaml = "merge_method: ties`nbase_model: ../models/base`nmodels: [../models/math]`ntokenizer_source: ../models/code`n" }
        @{ Case = 'density out of range'; ErrorId = 'RecipeInvalid'; Category = 'InvalidData'; Message = '\(models\[0\]\.parameters\.density\): density must satisfy 0 < density <= 1; 1.5 does not'
            Yaml = "merge_method: dare_ties`nbase_model: ../models/base`nmodels:`n  - model: ../models/math`n    parameters: { weight: 1, density: 1.5 }`n" }
        @{ Case = 'drop_rate out of range'; ErrorId = 'RecipeInvalid'; Category = 'InvalidData'; Message = 'drop_rate must satisfy 0 <= drop_rate < 1'
            Yaml = "merge_method: dare_linear`nbase_model: ../models/base`nmodels:`n  - model: ../models/math`n    parameters: { weight: 1, drop_rate: 1 }`n" }
        @{ Case = 'negative weight with normalize'; ErrorId = 'RecipeInvalid'; Category = 'InvalidData'; Message = 'must not be negative when normalize is true'
            Yaml = "merge_method: ties`nbase_model: ../models/base`nmodels:`n  - model: ../models/math`n    parameters: { weight: -1 }`n" }
        @{ Case = 'missing model'; ErrorId = 'PathNotFound'; Category = 'ObjectNotFound'; Message = "line 4, column 12 \(models\[0\]\.model\): '\.\./models/nowhere' resolves to"
            Yaml = "merge_method: linear`nbase_model: ../models/base`nmodels:`n  - model: ../models/nowhere`n    parameters: { weight: 1 }`n" }
        @{ Case = 'other architecture'; ErrorId = 'ArchitectureMismatch'; Category = 'InvalidData'; Message = "'\.\./wide' has num_hidden_layers 3 in its config\.json but the base '\.\./models/base' has 2"
            Yaml = "merge_method: linear`nbase_model: ../models/base`nmodels:`n  - model: ../wide`n    parameters: { weight: 1 }`n" }
        @{ Case = 'unnormalized linear'; ErrorId = 'RecipeUnsupported'; Category = 'NotImplemented'; Message = 'use task_arithmetic'
            Yaml = "merge_method: linear`nbase_model: ../models/base`nparameters: { normalize: false }`nmodels:`n  - model: ../models/math`n    parameters: { weight: 2 }`n" }
        @{ Case = 'bad second recipe of a batch'; ErrorId = 'RecipeUnknownKey'; Category = 'InvalidData'; Message = "line 10, column 1 \(mergemethod\)"
            Yaml = "name: first`nmerge_method: linear`nbase_model: ../models/base`nmodels:`n  - model: ../models/math`n    parameters: { weight: 1 }`noutput: { path: ./first }`n---`nname: second`nmergemethod: linear`nmodels: [first]`n" }
    ) {
        $recipe = Join-Path $Errors 'recipe.yml'
        Set-Content -LiteralPath $recipe -Value $Yaml
        $before = Get-FolderEntries $Work
        $output = Join-Path $Errors 'merged'

        { Invoke-DareMerge $recipe -OutputPath $output } | Should -Throw -ErrorId "$ErrorId,Dare.PowerShell.InvokeDareMergeCommand"
        $record = $null
        try { Invoke-DareMerge $recipe -OutputPath $output } catch { $record = $_ }
        $record.FullyQualifiedErrorId | Should -BeLike "$ErrorId,*"
        $record.CategoryInfo.Category | Should -Be $Category
        $record.Exception.Message | Should -Match $Message
        Get-FolderEntries $Work | Should -Be $before
    }

    It 'refuses one -OutputPath for several recipe files' {
        Set-Content -LiteralPath (Join-Path $Errors 'many-1.yml') -Value "merge_method: linear`n$Head    parameters: { weight: 1 }`n"
        Set-Content -LiteralPath (Join-Path $Errors 'many-2.yml') -Value "merge_method: linear`n$Head    parameters: { weight: 1 }`n"
        { Invoke-DareMerge (Join-Path $Errors 'many-*.yml') -OutputPath (Join-Path $Errors 'many') } | Should -Throw -ErrorId 'InvalidParameter,Dare.PowerShell.InvokeDareMergeCommand'
        Test-Path (Join-Path $Errors 'many') | Should -BeFalse
    }

    It 'needs an output folder' {
        $recipe = Join-Path $Errors 'no-output.yml'
        Set-Content -LiteralPath $recipe -Value "merge_method: linear`n$Head    parameters: { weight: 1 }`n"
        { Invoke-DareMerge $recipe } | Should -Throw -ErrorId 'RecipeInvalid,Dare.PowerShell.InvokeDareMergeCommand'
    }

    It 'does not replace an existing model without -Force, and does with it' {
        $recipe = Join-Path $Errors 'exists.yml'
        Set-Content -LiteralPath $recipe -Value "merge_method: linear`n$Head    parameters: { weight: 1 }`n"
        $output = Join-Path $Errors 'existing'
        New-Item -ItemType Directory $output | Out-Null
        Set-Content (Join-Path $output 'USE_POLICY.md') 'an earlier model'
        { Invoke-DareMerge $recipe -OutputPath $output } | Should -Throw -ErrorId 'OutputExists,Dare.PowerShell.InvokeDareMergeCommand'
        Get-Content (Join-Path $output 'USE_POLICY.md') | Should -Be 'an earlier model'

        $result = Invoke-DareMerge $recipe -OutputPath $output -Force
        Test-Path (Join-Path $result.Path 'model.safetensors') | Should -BeTrue
        Test-Path (Join-Path $output 'USE_POLICY.md') | Should -BeFalse
    }

    It 'reports recipe mistakes in hashtables with the same ErrorIds' {
        { @{ merge_method = 'linear'; models = @(@{ model = './math'; parameters = @{ wieght = 1 } }) } | Invoke-DareMerge -OutputPath (Join-Path $Errors 'h') } |
            Should -Throw -ErrorId 'RecipeUnknownKey,Dare.PowerShell.InvokeDareMergeCommand'
    }

    It 'warns about settings that have no effect, as mergekit ignores them too' {
        $recipe = Join-Path $Errors 'warn.yml'
        Set-Content -LiteralPath $recipe -Value "merge_method: linear`n$Head    parameters: { weight: 1, density: 0.5 }`n"
        $null = Invoke-DareMerge $recipe -OutputPath (Join-Path $Out 'warned') -WarningVariable warnings -WarningAction SilentlyContinue
        $warnings | Should -HaveCount 1
        "$($warnings[0])" | Should -Match 'density.*has no effect with merge_method linear'
    }
}

Describe 'Invoke-DareMerge replaying a recipe whose inputs changed' {
    BeforeAll {
        $script:Changed = Join-Path $Work 'changed'
        $base = New-SyntheticCheckpoint (Join-Path $Changed 'base') -HiddenSize 32 -Layers 1 -VocabSize 64 -DType float32
        $null = New-SyntheticCheckpoint (Join-Path $Changed 'tuned') -BaseModel $base -Seed 3 -DType float32
        $script:Merged = (Get-TaskVector (Join-Path $Changed 'base') (Join-Path $Changed 'tuned') | Invoke-DareDrop -DropRate 0.5 -Seed 1 |
            Export-Safetensors -Path (Join-Path $Changed 'merged')).Path
        # The same model written again in two shards: its files, sizes and headers differ from those recorded.
        $null = New-SyntheticCheckpoint (Join-Path $Changed 'tuned') -BaseModel $base -Seed 3 -DType float32 -MaxShardSize 20KB -Force
    }

    It 'stops with ReplayInputChanged naming the model and the file, and writes nothing' {
        $output = Join-Path $Changed 'replay'
        $err = { Invoke-DareMerge (Join-Path $Merged 'dare_recipe.yml') -OutputPath $output } | Should -Throw -ErrorId 'ReplayInputChanged,Dare.PowerShell.InvokeDareMergeCommand' -PassThru
        $err.CategoryInfo.Category | Should -Be 'InvalidData'
        $err.Exception.Message | Should -Match ([regex]::Escape("$(Join-Path $Changed 'tuned' 'model.safetensors')' is missing"))
        Test-Path $output | Should -BeFalse
    }

    It 'replays anyway with -AllowChangedInputs, warning about the file, to the same tensor values' {
        $result = Invoke-DareMerge (Join-Path $Merged 'dare_recipe.yml') -OutputPath (Join-Path $Changed 'anyway') -AllowChangedInputs -WarningVariable warnings -WarningAction SilentlyContinue
        "$warnings" | Should -Match 'changed input.*model\.safetensors'
        # The tensor bytes after each header (the header records the new inputs' fingerprint).
        function Get-TensorData([string] $File) {
            $bytes = [IO.File]::ReadAllBytes($File)
            $start = 8 + [BitConverter]::ToInt64($bytes, 0)
            [Convert]::ToHexString([Security.Cryptography.SHA256]::HashData($bytes[$start..($bytes.Length - 1)]))
        }
        Get-TensorData (Join-Path $result.Path 'model.safetensors') | Should -Be (Get-TensorData (Join-Path $Merged 'model.safetensors'))
    }
}
