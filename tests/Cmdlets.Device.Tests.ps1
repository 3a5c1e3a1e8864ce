# -Device on Export-Safetensors and Invoke-DareMerge, device: in recipes: the TorchSharp tensor backend (torch-cpu
# here; tests/gpu runs cuda on a GPU machine) writes the tensors the SIMD kernels write; cuda without CUDA is refused.
BeforeAll {
    . (Join-Path $PSScriptRoot 'TestHelpers.ps1')
    Import-DareTestModule

    $models = Join-Path $TestDrive 'models'
    $script:base = New-SyntheticCheckpoint (Join-Path $models 'base') -HiddenSize 64 -Layers 2 -VocabSize 128
    $script:math = New-SyntheticCheckpoint (Join-Path $models 'math') -BaseModel $base -Seed 2
    $script:code = New-SyntheticCheckpoint (Join-Path $models 'code') -BaseModel $base -Seed 3
    $script:out = Join-Path $TestDrive 'out'
    New-Item -ItemType Directory $out | Out-Null

    # The tensor bytes of a one-file model (everything after the header: the header's recipe names the device).
    function Get-TensorData([string] $Folder) {
        $file = Join-Path $Folder 'model.safetensors'
        $header = Read-SafetensorsHeader $file
        $bytes = [IO.File]::ReadAllBytes($file)
        $data = [byte[]]::new($bytes.Length - $header.DataStart)
        [Array]::Copy($bytes, $header.DataStart, $data, 0, $data.Length)
        [Convert]::ToHexString([Security.Cryptography.SHA256]::HashData($data))
    }

    function New-Plan {
        Get-TaskVector -Base $base -FineTuned $math, $code | Invoke-DareDrop -DropRate 0.7 -Seed 42 | Merge-Ties -KeepRatio 0.4
    }

    $script:recipe = @"
merge_method: dare_ties
base_model: $($base.Path)
models:
  - model: $($math.Path)
    parameters: { weight: 1.0, density: 0.3 }
  - model: $($code.Path)
    parameters: { weight: 0.6, density: 0.5 }
parameters: { normalize: true }
random_seed: 7
"@
}

Describe 'Export-Safetensors -Device' {
    It 'writes the same tensors with -Device torch-cpu as with the default SIMD kernels, and records the device in the recipe only' {
        New-Plan | Export-Safetensors (Join-Path $out 'kernels') | Out-Null
        New-Plan | Export-Safetensors (Join-Path $out 'torch') -Device torch-cpu | Out-Null

        Get-TensorData (Join-Path $out 'torch') | Should -Be (Get-TensorData (Join-Path $out 'kernels'))
        Get-Content -Raw (Join-Path $out 'torch/dare_recipe.yml') | Should -Match '(?m)^device: torch-cpu$'
        Get-Content -Raw (Join-Path $out 'kernels/dare_recipe.yml') | Should -Not -Match 'device:'
        Get-Content -Raw (Join-Path $out 'torch/mergekit_config.yml') | Should -Not -Match 'device'
    }

    It 'merges a spherical method on the device to the same bytes' {
        $plan = { Get-TaskVector -Base $base -FineTuned $math, $code | Merge-ModelStock -FilterWise }
        & $plan | Export-Safetensors (Join-Path $out 'stock-kernels') | Out-Null
        & $plan | Export-Safetensors (Join-Path $out 'stock-torch') -Device torch-cpu | Out-Null

        Get-TensorData (Join-Path $out 'stock-torch') | Should -Be (Get-TensorData (Join-Path $out 'stock-kernels'))
    }

    It 'merges a LoRA adapter beside a fine-tune with a wider vocabulary (tokenizer union) to the same bytes' {
        $adapter = Join-Path $out 'adapter'
        # Layers only: an adapter that changes the embeddings cannot be re-rowed to the union's vocabulary.
        Get-TaskVector -Base $base -FineTuned $code | Export-LoraAdapter $adapter -Rank 4 -Include '*.layers.*' | Out-Null
        $wider = New-SyntheticCheckpoint (Join-Path $TestDrive 'models/wider') -HiddenSize 64 -Layers 2 -VocabSize 130 -Seed 9
        $plan = { Get-TaskVector -Base $base -FineTuned $wider, $adapter -TokenizerSource Union -ErrorAction Stop | Invoke-DareDrop -DropRate 0.5 -Seed 3 | Merge-Ties -KeepRatio 0.5 }
        @(& $plan)[0].LoraAdapters.Count | Should -Be 1
        & $plan | Export-Safetensors (Join-Path $out 'union-kernels') | Out-Null
        & $plan | Export-Safetensors (Join-Path $out 'union-torch') -Device torch-cpu | Out-Null

        ((Import-Safetensors (Join-Path $out 'union-torch')).Tensors | Where-Object Name -eq 'model.embed_tokens.weight').Shape | Should -Be @(130, 64)
        Get-TensorData (Join-Path $out 'union-torch') | Should -Be (Get-TensorData (Join-Path $out 'union-kernels'))
    }

    It 'refuses -Device cuda here with DeviceUnavailable naming the device and what TorchSharp reports, writing nothing' {
        $target = Join-Path $out 'cuda'
        { New-Plan | Export-Safetensors $target -Device cuda -ErrorAction Stop } | Should -Throw -ErrorId 'DeviceUnavailable,Dare.PowerShell.ExportSafetensorsCommand' -ExpectedMessage "*'cuda:0'*torch.cuda.is_available() is false*"
        $target | Should -Not -Exist
    }

    It 'rejects a device name it does not know at parameter binding' {
        { New-Plan | Export-Safetensors (Join-Path $out 'gpu') -Device gpu } | Should -Throw -ErrorId 'ParameterArgumentValidationError,Dare.PowerShell.ExportSafetensorsCommand'
    }
}

Describe 'Invoke-DareMerge -Device and device:' {
    It 'merges a recipe with device: torch-cpu into the tensors of the same recipe without it' {
        Invoke-DareMerge -Yaml $recipe -OutputPath (Join-Path $out 'recipe-kernels') | Out-Null
        Invoke-DareMerge -Yaml "$recipe`ndevice: torch-cpu" -OutputPath (Join-Path $out 'recipe-torch') | Out-Null

        Get-TensorData (Join-Path $out 'recipe-torch') | Should -Be (Get-TensorData (Join-Path $out 'recipe-kernels'))
        Get-Content -Raw (Join-Path $out 'recipe-torch/dare_recipe.yml') | Should -Match '(?m)^device: torch-cpu$'
    }

    It 'lets -Device override the recipe''s device:' {
        Invoke-DareMerge -Yaml "$recipe`ndevice: cuda" -OutputPath (Join-Path $out 'recipe-override') -Device cpu | Out-Null
        Get-TensorData (Join-Path $out 'recipe-override') | Should -Be (Get-TensorData (Join-Path $out 'recipe-kernels'))
        Get-Content -Raw (Join-Path $out 'recipe-override/dare_recipe.yml') | Should -Not -Match 'device:'
    }

    It 'refuses device: cuda here with DeviceUnavailable, and an unknown device: with RecipeInvalid at its line' {
        { Invoke-DareMerge -Yaml "$recipe`ndevice: cuda:1" -OutputPath (Join-Path $out 'recipe-cuda') -ErrorAction Stop } |
            Should -Throw -ErrorId 'DeviceUnavailable,Dare.PowerShell.InvokeDareMergeCommand' -ExpectedMessage "*'cuda:1'*"
        Join-Path $out 'recipe-cuda' | Should -Not -Exist
        { Invoke-DareMerge -Yaml "$recipe`ndevice: tpu" -OutputPath (Join-Path $out 'recipe-tpu') -ErrorAction Stop } |
            Should -Throw -ErrorId 'RecipeInvalid,Dare.PowerShell.InvokeDareMergeCommand' -ExpectedMessage "*line 10, column 9 (device)*'tpu' is not a device*"
    }
}

Describe 'Invoke-DareSweep -Device' {
    It 'merges every variant on the tensor backend into the tensors the SIMD kernels give, and records the device in the kept model''s recipe' {
        $script:variantData = @{}
        $record = { param($ModelPath) $script:variantData["$device/$(Split-Path $ModelPath -Leaf)"] = Get-TensorData $ModelPath; 1.0 }
        foreach ($device in 'cpu', 'torch-cpu') {
            $results = @(Invoke-DareSweep $base $math, $code -DropRate 0.5, 0.9 -KeepRatio 0.4 -Seed 3 -Evaluator $record -Device $device -KeepBest (Join-Path $out "sweep-$device"))
            $results.Succeeded | Should -Be @($true, $true)
        }
        $variantData.Count | Should -Be 4
        $variantData['torch-cpu/variant-000'] | Should -Be $variantData['cpu/variant-000']
        $variantData['torch-cpu/variant-001'] | Should -Be $variantData['cpu/variant-001']
        $variantData['cpu/variant-001'] | Should -Not -Be $variantData['cpu/variant-000']
        Get-Content -Raw (Join-Path $out 'sweep-torch-cpu/dare_recipe.yml') | Should -Match '(?m)^device: torch-cpu$'
        Get-Content -Raw (Join-Path $out 'sweep-cpu/dare_recipe.yml') | Should -Not -Match 'device:'
    }

    It 'hands the variants to the tensor backend: a sweep loads libtorch with -Device torch-cpu and not without it' {
        $manifest = Join-Path $RepoRoot 'out/Dare/Dare.psd1'
        foreach ($case in @{ Device = 'cpu'; Loaded = 'False' }, @{ Device = 'torch-cpu'; Loaded = 'True' }) {
            $script = "Import-Module '$manifest'; `$null = Invoke-DareSweep '$($base.Path)' '$($math.Path)' -DropRate 0.5 -Seed 1 -Evaluator { 1 } -Device $($case.Device) -WarningAction SilentlyContinue; " +
                "'libtorch:' + [bool](Get-Content /proc/self/maps | Where-Object { `$_ -match 'libtorch_cpu\.so' })"
            Invoke-InChildPwsh $script | Select-Object -Last 1 | Should -Be "libtorch:$($case.Loaded)"
        }
    }

    It 'refuses -Device cuda here with DeviceUnavailable before any variant is merged, leaving nothing behind' {
        $parent = Join-Path $out 'sweep-cuda-parent'
        New-Item -ItemType Directory $parent | Out-Null
        $script:evaluated = 0
        { Invoke-DareSweep $base $math -DropRate 0.5 -Seed 1 -Evaluator { $script:evaluated++; 1 } -KeepBest (Join-Path $parent 'best') -Device cuda -ErrorAction Stop } |
            Should -Throw -ErrorId 'DeviceUnavailable,Dare.PowerShell.InvokeDareSweepCommand' -ExpectedMessage "*'cuda:0'*"
        $evaluated | Should -Be 0
        Get-ChildItem -Force -LiteralPath $parent | Should -BeNullOrEmpty
    }
}
