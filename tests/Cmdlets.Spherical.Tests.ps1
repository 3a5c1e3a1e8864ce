# The merge cmdlets of the spherical methods end to end: Merge-Slerp, Merge-NuSlerp, Merge-MultiSlerp, Merge-Karcher
# and Merge-ModelStock each checked against the algorithm written out here in doubles, against the same merge from a
# recipe (the same bytes), and for validation and completion from the methods' declarations.
BeforeAll {
    . (Join-Path $PSScriptRoot 'TestHelpers.ps1')
    Import-DareTestModule

    $f32 = Join-Path $TestDrive 'f32'
    $script:base = New-SyntheticCheckpoint (Join-Path $f32 'base') -HiddenSize 32 -Layers 2 -VocabSize 64 -DType float32
    $script:a = New-SyntheticCheckpoint (Join-Path $f32 'a') -BaseModel $base -Seed 41 -DeltaScale 0.05 -DType float32
    $script:b = New-SyntheticCheckpoint (Join-Path $f32 'b') -BaseModel $base -Seed 42 -DeltaScale 0.05 -DType float32
    $script:tensor = 'model.layers.1.mlp.up_proj.weight'

    function Dot([float[]] $x, [float[]] $y) { $s = 0.0; for ($i = 0; $i -lt $x.Length; $i++) { $s += [double]$x[$i] * $y[$i] }; $s }
    function Minus([float[]] $x, [float[]] $y) { $r = [double[]]::new($x.Length); for ($i = 0; $i -lt $x.Length; $i++) { $r[$i] = [double]$x[$i] - $y[$i] }; , $r }

    # Every value within float32 rounding of values this size.
    function Assert-Close([double[]] $Expected, [float[]] $Actual) {
        $Actual.Length | Should -Be $Expected.Length
        $worst = 0.0; $scale = 1.0
        for ($i = 0; $i -lt $Expected.Length; $i++) {
            $worst = [Math]::Max($worst, [Math]::Abs($Expected[$i] - $Actual[$i])); $scale = [Math]::Max($scale, [Math]::Abs($Expected[$i]))
        }
        $worst | Should -BeLessOrEqual (2e-6 * $scale)
    }

    # The same merge from a recipe writes the same tensor bytes as the pipeline (-Close: the same values up to float32
    # rounding, where the recipe anchors whole weights at its first model and the pipeline at the base).
    function Assert-SameAsRecipe([string] $Pipeline, [string] $Yaml, [string] $Name, [switch] $Close) {
        $recipe = Join-Path $TestDrive "$Name.yml"
        Set-Content -LiteralPath $recipe -Value $Yaml
        $output = Join-Path $TestDrive "$Name-recipe"
        $null = Invoke-DareMerge -ConfigPath $recipe -OutputPath $output
        foreach ($name in Get-TestTensorNames $Pipeline) {
            if ($Close) { Assert-Close (Read-TestTensor $output $name) (Read-TestTensor $Pipeline $name); continue }
            [Convert]::ToBase64String((Read-TensorBytes $output $name).Bytes) | Should -BeExactly ([Convert]::ToBase64String((Read-TensorBytes $Pipeline $name).Bytes)) -Because $name
        }
    }
}

Describe 'Merge-Slerp' {
    It 'interpolates from the base (t = 0) to the fine-tune (t = 1) on the sphere, recomputed here, as a recipe does' {
        $output = Join-Path $TestDrive 'slerp'
        $null = Get-TaskVector $base $a | Merge-Slerp -T 0.3 | Export-Safetensors $output -DType float32
        $v0 = Read-TestTensor $base.Path $tensor; $v1 = Read-TestTensor $a.Path $tensor
        $n0 = [Math]::Sqrt((Dot $v0 $v0)); $n1 = [Math]::Sqrt((Dot $v1 $v1))
        $theta = [Math]::Acos((Dot $v0 $v1) / ($n0 * $n1))
        $theta | Should -BeGreaterThan ([Math]::Acos(0.9995)) -Because 'the fixture must take the arc, not the lerp fallback'
        $s0 = [Math]::Sin(0.7 * $theta) / [Math]::Sin($theta); $s1 = [Math]::Sin(0.3 * $theta) / [Math]::Sin($theta)
        $expected = [double[]]::new($v0.Length)
        for ($i = 0; $i -lt $v0.Length; $i++) { $expected[$i] = $s0 * $v0[$i] + $s1 * $v1[$i] }
        Assert-Close $expected (Read-TestTensor $output $tensor)
        Assert-SameAsRecipe $output "merge_method: slerp`nbase_model: $($base.Path)`nmodels:`n  - model: $($a.Path)`nparameters: { t: 0.3 }`nout_dtype: float32" 'slerp'
    }

    It 'records the step, needs exactly one task vector and a T in [0, 1]' {
        (Get-TaskVector $base $a | Merge-Slerp 0.5).Steps[-1] | Should -Be 'MergeSlerp(t=0.5)'
        { Get-TaskVector $base $a, $b | Merge-Slerp 0.5 } | Should -Throw -ErrorId 'InvalidParameter,Dare.PowerShell.MergeSlerpCommand'
        $err = { Get-TaskVector $base $a | Merge-Slerp -T 1.5 } | Should -Throw -ErrorId 'ParameterArgumentValidationError,Dare.PowerShell.MergeSlerpCommand' -PassThru
        $err.Exception.Message | Should -Match 'T must satisfy 0 <= T <= 1; 1.5 does not'
    }
}

Describe 'Merge-NuSlerp' {
    It 'interpolates the task vectors at t = w2/(w1 + w2) and adds the base, as a recipe does' {
        $output = Join-Path $TestDrive 'nuslerp'
        $null = Get-TaskVector $base $a, $b | Merge-NuSlerp -Weight 1, 3 | Export-Safetensors $output -DType float32
        $vb = Read-TestTensor $base.Path $tensor
        $d0 = Minus (Read-TestTensor $a.Path $tensor) $vb; $d1 = Minus (Read-TestTensor $b.Path $tensor) $vb
        $theta = [Math]::Acos((Dot $d0 $d1) / [Math]::Sqrt((Dot $d0 $d0) * (Dot $d1 $d1)))
        $c0 = [Math]::Sin(0.25 * $theta) / [Math]::Sin($theta); $c1 = [Math]::Sin(0.75 * $theta) / [Math]::Sin($theta)
        $expected = [double[]]::new($vb.Length)
        for ($i = 0; $i -lt $vb.Length; $i++) { $expected[$i] = $vb[$i] + $c0 * $d0[$i] + $c1 * $d1[$i] }
        Assert-Close $expected (Read-TestTensor $output $tensor)
        Assert-SameAsRecipe $output "merge_method: nuslerp`nbase_model: $($base.Path)`nmodels:`n  - model: $($a.Path)`n    parameters: { weight: 1 }`n  - model: $($b.Path)`n    parameters: { weight: 3 }`nout_dtype: float32" 'nuslerp'
    }

    It 'with -WholeWeights and -Flatten:$false -RowWise is the recipe without base_model, row_wise' {
        $output = Join-Path $TestDrive 'nuslerp-whole'
        $merged = Get-TaskVector $base $a, $b | Merge-NuSlerp -Flatten:$false -RowWise -WholeWeights
        $merged.Steps[-1] | Should -Be 'MergeNuSlerp(weights=1/1, flatten=False, row_wise=True, whole_weights=True)'
        $null = $merged | Export-Safetensors $output -DType float32
        Assert-SameAsRecipe $output "merge_method: nuslerp`nmodels:`n  - model: $($a.Path)`n    parameters: { weight: 1 }`n  - model: $($b.Path)`n    parameters: { weight: 1 }`nparameters: { nuslerp_flatten: false, nuslerp_row_wise: true }`nout_dtype: float32" 'nuslerp-whole' -Close
    }
}

Describe 'Merge-MultiSlerp' {
    It 'is the recipe''s multislerp, and one task vector comes back as it is' {
        $output = Join-Path $TestDrive 'multislerp'
        $null = Get-TaskVector $base $a, $b | Merge-MultiSlerp -Weight 2, 1 -Epsilon 1e-7 | Export-Safetensors $output -DType float32
        Assert-SameAsRecipe $output "merge_method: multislerp`nbase_model: $($base.Path)`nmodels:`n  - model: $($a.Path)`n    parameters: { weight: 2 }`n  - model: $($b.Path)`n    parameters: { weight: 1 }`nparameters: { eps: 1e-7 }`nout_dtype: float32" 'multislerp'
        $single = Join-Path $TestDrive 'multislerp-one'
        $null = Get-TaskVector $base $a | Merge-MultiSlerp | Export-Safetensors $single -DType float32
        [Convert]::ToBase64String((Read-TensorBytes $single $tensor).Bytes) | Should -BeExactly ([Convert]::ToBase64String((Read-TensorBytes $a.Path $tensor).Bytes))
    }

    It 'rejects an eps outside (0, 1) by the declaration' {
        { Get-TaskVector $base $a, $b | Merge-MultiSlerp -Epsilon 0 } | Should -Throw -ErrorId 'ParameterArgumentValidationError,Dare.PowerShell.MergeMultiSlerpCommand'
    }
}

Describe 'Merge-Karcher' {
    It 'averages the piped models (the base among them) as the recipe with base_model does' {
        $output = Join-Path $TestDrive 'karcher'
        $null = Get-TaskVector $base $a, $b, $base | Merge-Karcher -MaxIterations 5 | Export-Safetensors $output -DType float32
        Assert-SameAsRecipe $output "merge_method: karcher`nbase_model: $($base.Path)`nmodels:`n  - model: $($a.Path)`n  - model: $($b.Path)`nparameters: { max_iter: 5 }`nout_dtype: float32" 'karcher'
    }

    It 'of two identical models is that model' {
        $output = Join-Path $TestDrive 'karcher-same'
        $null = Get-TaskVector $base $a, $a | Merge-Karcher | Export-Safetensors $output -DType float32
        Assert-Close (Read-TestTensor $a.Path $tensor) (Read-TestTensor $output $tensor)
    }
}

Describe 'Merge-ModelStock' {
    It 'moves the base toward the mean by t = N·cos/(1 + (N − 1)·cos), recomputed here, as a recipe does' {
        $output = Join-Path $TestDrive 'stock'
        $null = Get-TaskVector $base $a, $b | Merge-ModelStock | Export-Safetensors $output -DType float32
        $vb = Read-TestTensor $base.Path $tensor
        $d0 = Minus (Read-TestTensor $a.Path $tensor) $vb; $d1 = Minus (Read-TestTensor $b.Path $tensor) $vb
        $cos = (Dot $d0 $d1) / [Math]::Sqrt((Dot $d0 $d0) * (Dot $d1 $d1))
        $t = 2 * $cos / (1 + $cos)
        $expected = [double[]]::new($vb.Length)
        for ($i = 0; $i -lt $vb.Length; $i++) { $expected[$i] = $vb[$i] + $t * ($d0[$i] + $d1[$i]) / 2 }
        Assert-Close $expected (Read-TestTensor $output $tensor)
        Assert-SameAsRecipe $output "merge_method: model_stock`nbase_model: $($base.Path)`nmodels:`n  - model: $($a.Path)`n  - model: $($b.Path)`nout_dtype: float32" 'stock'
    }

    It 'with -FilterWise is the recipe''s filter_wise, and one task vector is refused' {
        $output = Join-Path $TestDrive 'stock-rows'
        $null = Get-TaskVector $base $a, $b | Merge-ModelStock -FilterWise | Export-Safetensors $output -DType float32
        Assert-SameAsRecipe $output "merge_method: model_stock`nbase_model: $($base.Path)`nmodels:`n  - model: $($a.Path)`n  - model: $($b.Path)`nparameters: { filter_wise: true }`nout_dtype: float32" 'stock-rows'
        { Get-TaskVector $base $a | Merge-ModelStock } | Should -Throw -ErrorId 'InvalidParameter,Dare.PowerShell.MergeModelStockCommand'
    }
}

Describe 'Spherical merges and the number of cores' {
    It 'writes the same bytes with 1 core as with all of them (the float64 sums run in fixed blocks)' {
        # Tensors of several 64K-element blocks, merged in child processes that see 1 core and the machine's cores.
        $wide = Join-Path $TestDrive 'wide'
        $wideBase = New-SyntheticCheckpoint (Join-Path $wide 'base') -HiddenSize 256 -Layers 1 -VocabSize 1024 -DType float32
        $wideA = New-SyntheticCheckpoint (Join-Path $wide 'a') -BaseModel $wideBase -Seed 51 -DType float32
        $wideB = New-SyntheticCheckpoint (Join-Path $wide 'b') -BaseModel $wideBase -Seed 52 -DType float32
        $module = Join-Path $RepoRoot 'out/Dare/Dare.psd1'
        $hashes = foreach ($cores in 1, [Environment]::ProcessorCount) {
            $output = Join-Path $wide "out-$cores"
            $env:DOTNET_PROCESSOR_COUNT = $cores
            try {
                Invoke-InChildPwsh "`$ErrorActionPreference = 'Stop'; Import-Module '$module'; `$null = Get-TaskVector '$($wideBase.Path)' '$($wideA.Path)', '$($wideB.Path)' | Merge-ModelStock | Export-Safetensors '$output' -DType float32; [Environment]::ProcessorCount" |
                    Select-Object -Last 1 | Should -Be $cores
            }
            finally { Remove-Item Env:DOTNET_PROCESSOR_COUNT }
            (Read-TensorBytes $output 'model.embed_tokens.weight').Bytes.Length | Should -BeGreaterThan (4 * 65536)
            [Convert]::ToBase64String([Security.Cryptography.SHA256]::HashData([IO.File]::ReadAllBytes((Join-Path $output 'model.safetensors'))))
        }
        $hashes[0] | Should -BeExactly $hashes[1]
    }
}

Describe 'Completion of the spherical cmdlets from the declarations' {
    It 'completes <Line> with <Expected>' -ForEach @(
        @{ Line = 'Merge-Slerp -T '; Expected = @('0', '1') }
        @{ Line = 'Merge-Karcher -MaxIterations '; Expected = @('10', '0', '100000') }
        @{ Line = 'Merge-Karcher -Tolerance '; Expected = @('1E-05', '0') }
        @{ Line = 'Merge-MultiSlerp -Epsilon '; Expected = @('1E-08') }
    ) {
        $completions = (TabExpansion2 -inputScript $Line -cursorColumn $Line.Length).CompletionMatches.CompletionText
        $completions | Should -Be $Expected
    }
}
