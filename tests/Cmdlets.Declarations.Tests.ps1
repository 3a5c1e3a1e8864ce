# Cmdlet parameters that set a method's or DARE's declared parameter: validation at binding with the recipes' ranges
# and messages, defaults and help that agree with the declarations, and Merge-Nearswap (a method added on the seam).
BeforeAll {
    . (Join-Path $PSScriptRoot 'TestHelpers.ps1')
    Import-DareTestModule

    $f32 = Join-Path $TestDrive 'f32'
    $script:base = New-SyntheticCheckpoint (Join-Path $f32 'base') -HiddenSize 64 -Layers 2 -VocabSize 128 -DType float32
    $script:tune = New-SyntheticCheckpoint (Join-Path $f32 'a') -BaseModel $base -Seed 31 -DeltaScale 0.004 -DType float32

    # The declaration a cmdlet parameter validates against: [ValidateDeclared(method, key)] on the property.
    function Get-Declaration([string] $Cmdlet, [string] $Parameter) {
        $property = (Get-Command $Cmdlet).ImplementingType.GetProperty($Parameter)
        $attribute = $property.GetCustomAttributes($true) | Where-Object { $_.GetType().Name -eq 'ValidateDeclaredAttribute' }
        if (-not $attribute) { return $null }
        [Dare.PowerShell.ValidateDeclaredAttribute]::Spec($attribute.Method, $attribute.Key)
    }
}

Describe 'Parameters validated against the declarations' {
    It 'rejects -KeepRatio <k> in the recipes'' terms' -ForEach @(@{ k = 0 }, @{ k = 1.5 }, @{ k = [double]::NaN }) {
        $err = { Get-TaskVector $base $tune | Merge-Ties -KeepRatio $k } | Should -Throw -ErrorId 'ParameterArgumentValidationError,Dare.PowerShell.MergeTiesCommand' -PassThru
        $err.Exception.Message | Should -Match 'KeepRatio must (satisfy 0 < KeepRatio <= 1|be a finite number)'
        $err.Exception.Message | Should -Not -Match 'minimum allowed range'
    }

    It 'rejects a NaN or infinite weight before anything is planned' -ForEach @(@{ w = [double]::NaN }, @{ w = [double]::PositiveInfinity }) {
        $err = { Get-TaskVector $base $tune, $tune | Merge-Linear -Weight $w, 1 } | Should -Throw -ErrorId 'ParameterArgumentValidationError,Dare.PowerShell.MergeLinearCommand' -PassThru
        $err.Exception.Message | Should -Match 'Weight must be a finite number'
    }

    It 'rejects a NaN lambda' {
        { Get-TaskVector $base $tune | Merge-Ties -Lambda ([double]::NaN) } | Should -Throw -ErrorId 'ParameterArgumentValidationError,Dare.PowerShell.MergeTiesCommand'
    }

    It 'rejects normalized weights that sum to zero with WeightSumZero' {
        { Get-TaskVector $base $tune, $tune | Merge-Linear -Weight 0, 0 } | Should -Throw -ErrorId 'WeightSumZero,Dare.PowerShell.MergeLinearCommand'
    }

    It 'states the drop rate range by the declaration' {
        $err = { Get-TaskVector $base $tune | Invoke-DareDrop -DropRate 1 -Seed 1 } | Should -Throw -ErrorId 'InvalidParameter,*' -PassThru
        $err.Exception.Message | Should -BeLike '*DropRate must satisfy 0 <= DropRate < 1; 1 does not*'
    }
}

Describe 'Defaults and help agree with the declarations' {
    It 'Merge-Ties defaults -KeepRatio to the declared cmdlet default, and its help states both defaults' {
        $spec = Get-Declaration 'Merge-Ties' 'KeepRatio'
        [Dare.PowerShell.MergeTiesCommand]::new().KeepRatio | Should -Be $spec.CmdletDefault
        $help = Get-Help Merge-Ties -Parameter KeepRatio
        $help.defaultValue | Should -Be "$($spec.CmdletDefault)"
        ($help.description.Text -join ' ') | Should -BeLike "*density defaults to $($spec.Default)*"
    }

    It '<Cmdlet> -<Parameter> help states the declared range' -ForEach @(
        @{ Cmdlet = 'Merge-Ties'; Parameter = 'KeepRatio' }
        @{ Cmdlet = 'Merge-Nearswap'; Parameter = 'Threshold' }
        @{ Cmdlet = 'Merge-Ram'; Parameter = 'Epsilon' }
        @{ Cmdlet = 'Merge-Ram'; Parameter = 'Amplification' }
        @{ Cmdlet = 'Merge-Ram'; Parameter = 'OverlapCap' }
    ) {
        $spec = Get-Declaration $Cmdlet $Parameter
        $spec.Range | Should -Not -BeNullOrEmpty
        (Get-Help $Cmdlet -Parameter $Parameter).description.Text -join ' ' | Should -BeLike "*$($spec.Range.Rule($Parameter))*"
    }

    It 'Invoke-DareDrop -DropRate help states the declared range' {
        $spec = [Dare.Engine.Merge.DareDropParameters]::DropRate
        (Get-Help Invoke-DareDrop -Parameter DropRate).description.Text -join ' ' | Should -BeLike "*$($spec.Range.Rule('DropRate'))*"
    }
}

Describe 'Completion from the declarations' {
    It 'completes <Line> with <Expected>' -ForEach @(
        @{ Line = 'Merge-Ties -KeepRatio '; Expected = @('0.2', '1') }
        @{ Line = 'Merge-Ties -Density '; Expected = @('0.2', '1') }
        @{ Line = 'Merge-Linear -Lambda '; Expected = @('1') }
        @{ Line = 'Merge-Nearswap -Threshold '; Expected = @('0') }
    ) {
        $completions = (TabExpansion2 -inputScript $Line -cursorColumn $Line.Length).CompletionMatches
        @($completions.CompletionText) | Should -Be $Expected
        $completions[0].ToolTip | Should -Not -BeNullOrEmpty
    }
}

Describe 'Merge-Nearswap' {
    It 'writes base + w·δ with w = clamp(t / max(|δ|, 1e-6), 0, 1), recomputed here' {
        $output = Join-Path $TestDrive 'nearswap'
        $null = Get-TaskVector $base $tune | Merge-Nearswap -Threshold 0.003 | Export-Safetensors $output -DType float32
        foreach ($name in 'model.norm.weight', 'model.layers.1.mlp.up_proj.weight') {
            $b = Read-TestTensor $base.Path $name; $t = Read-TestTensor $tune.Path $name; $actual = Read-TestTensor $output $name
            for ($i = 0; $i -lt $b.Length; $i++) {
                $d = [float]($t[$i] - $b[$i])
                $w = [float][Math]::Min([Math]::Max([float]0.003 / [Math]::Max([Math]::Abs($d), [float]1e-6), 0), 1)
                $actual[$i] | Should -Be ([float]($b[$i] + [float]($w * $d)))
            }
        }
    }

    It 'records the step and refuses more than one task vector' {
        (Get-TaskVector $base $tune | Merge-Nearswap 0.01).Steps[-1] | Should -Be 'MergeNearswap(t=0.01)'
        { Get-TaskVector $base $tune, $tune | Merge-Nearswap 0.01 } | Should -Throw -ErrorId 'InvalidParameter,Dare.PowerShell.MergeNearswapCommand'
    }
}

Describe 'Merge-Ram' {
    BeforeAll {
        $script:tune2 = New-SyntheticCheckpoint (Join-Path $TestDrive 'f32/b') -BaseModel $base -Seed 32 -DeltaScale 0.004 -DType float32
    }

    It 'keeps a change only one fine-tune makes and averages shared ones, recomputed here' {
        $output = Join-Path $TestDrive 'ram'
        $null = Get-TaskVector $base $tune, $tune2 | Merge-Ram -Epsilon 0.002 | Export-Safetensors $output -DType float32
        $name = 'model.layers.1.mlp.up_proj.weight'
        $b = Read-TestTensor $base.Path $name; $t1 = Read-TestTensor $tune.Path $name; $t2 = Read-TestTensor $tune2.Path $name
        $actual = Read-TestTensor $output $name
        $unique = 0
        for ($i = 0; $i -lt $b.Length; $i++) {
            $d = @([float]($t1[$i] - $b[$i]), [float]($t2[$i] - $b[$i])) | Where-Object { [Math]::Abs($_) -gt 0.002 }
            $merged = if (@($d).Count -eq 0) { 0 } elseif (@($d).Count -eq 1) { $unique++; $d } else { ($d[0] + $d[1]) / 2 }
            [Math]::Abs($actual[$i] - ($b[$i] + $merged)) | Should -BeLessOrEqual 1e-6
        }
        $unique | Should -BeGreaterThan 0
    }

    It 'names ram or ramplus_tl in the step, and validates -Epsilon by the declaration' {
        (Get-TaskVector $base $tune, $tune2 | Merge-Ram).Steps[-1] | Should -Be 'MergeRam(epsilon=1E-05)'
        (Get-TaskVector $base $tune, $tune2 | Merge-Ram -TensorLocal -Amplification 0.3).Steps[-1] | Should -Be 'MergeRamPlusTL(epsilon=1E-05, r=0.3, alpha=0.2)'
        $err = { Get-TaskVector $base $tune | Merge-Ram -Epsilon -1 } | Should -Throw -ErrorId 'ParameterArgumentValidationError,Dare.PowerShell.MergeRamCommand' -PassThru
        $err.Exception.Message | Should -Match 'Epsilon must satisfy Epsilon >= 0'
    }
}

Describe 'Merge-ArceeFusion' {
    It 'takes each entry from the fine-tune or the base, and refuses more than one task vector' {
        $output = Join-Path $TestDrive 'fusion'
        $null = Get-TaskVector $base $tune | Merge-ArceeFusion | Export-Safetensors $output -DType float32
        $name = 'model.layers.0.self_attn.q_proj.weight'
        $b = Read-TestTensor $base.Path $name; $t = Read-TestTensor $tune.Path $name; $actual = Read-TestTensor $output $name
        $taken = 0
        for ($i = 0; $i -lt $b.Length; $i++) {
            if ($actual[$i] -eq $t[$i] -and $t[$i] -ne $b[$i]) { $taken++ } else { $actual[$i] | Should -Be $b[$i] }
        }
        $taken | Should -BeGreaterThan 0
        $taken | Should -BeLessThan ($b.Length / 2)
        { Get-TaskVector $base $tune, $tune | Merge-ArceeFusion } | Should -Throw -ErrorId 'InvalidParameter,Dare.PowerShell.MergeArceeFusionCommand'
    }
}
