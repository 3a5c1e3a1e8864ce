# Invoke-DellaDrop (DELLA), Invoke-BreadcrumbsDrop, Merge-Sce and DAREx-q (Invoke-DareDrop -Rescale Q), end to end: values
# recipes replayed to identical bytes, validation and completion from the declarations.
BeforeAll {
    . (Join-Path $PSScriptRoot 'TestHelpers.ps1')
    Import-DareTestModule

    $f32 = Join-Path $TestDrive 'f32'
    $script:base = New-SyntheticCheckpoint (Join-Path $f32 'base') -HiddenSize 64 -Layers 2 -VocabSize 128 -DType float32
    $script:tuneA = New-SyntheticCheckpoint (Join-Path $f32 'a') -BaseModel $base -Seed 31 -DeltaScale 0.004 -DType float32
    $script:tuneB = New-SyntheticCheckpoint (Join-Path $f32 'b') -BaseModel $base -Seed 32 -DeltaScale 0.004 -DType float32

    # MagPrune written out plainly: per row, rank |δ| (ties by position), keep when DARE's hash of the element index is
    # at or above (1 − p)·2³², p = density − ε + 2ε·(rank − 1)/(r − 1); survivors × 1/p.
    function Get-MagPrune([float[]] $Delta, [int] $RowLength, [double] $Density, [double] $Epsilon, [long] $Seed, [int] $Stream, [string] $Tensor) {
        $key = [Dare.Engine.Merge.DareMask]::Key($Seed, $Stream, $Tensor)
        $result = [double[]]::new($Delta.Length)
        for ($start = 0; $start -lt $Delta.Length; $start += $RowLength) {
            $order = 0..($RowLength - 1) | Sort-Object { [Math]::Abs($Delta[$start + $_]) }, { $_ }
            for ($rank = 1; $rank -le $RowLength; $rank++) {
                $i = $start + $order[$rank - 1]
                $p = $Density - $Epsilon + 2 * $Epsilon * ($rank - 1) / ($RowLength - 1)
                $threshold = [uint32][Math]::Min([Math]::Round((1 - $p) * 4294967296.0), [uint32]::MaxValue)
                $result[$i] = if ([Dare.Engine.Merge.DareMask]::Hash($key, $i) -lt $threshold) { 0 } else { $Delta[$i] / $p }
            }
        }
        $result
    }
}

Describe 'Invoke-DellaDrop' {
    It 'prunes each row by magnitude rank and Merge-Ties -KeepRatio 1 elects signs, as recomputed here' {
        $output = Join-Path $TestDrive 'della'
        $null = Get-TaskVector $base $tuneA, $tuneB | Invoke-DellaDrop -Density 0.5 -Epsilon 0.2 -Seed 9 | Merge-Ties -KeepRatio 1 -Weight 1, 0.5 |
            Export-Safetensors $output -DType float32
        $name = 'model.layers.0.self_attn.q_proj.weight'
        $b = Read-TestTensor $base.Path $name; $ta = Read-TestTensor $tuneA.Path $name; $tb = Read-TestTensor $tuneB.Path $name
        $pa = Get-MagPrune ([float[]](0..($b.Length - 1) | ForEach-Object { [float]($ta[$_] - $b[$_]) })) 64 0.5 0.2 9 0 $name
        $pb = Get-MagPrune ([float[]](0..($b.Length - 1) | ForEach-Object { [float]($tb[$_] - $b[$_]) })) 64 0.5 0.2 9 1 $name
        $actual = Read-TestTensor $output $name
        $wrong = 0
        for ($i = 0; $i -lt $b.Length; $i++) {
            $sign = if ($pa[$i] + 0.5 * $pb[$i] -ge 0) { 1 } else { -1 }
            $sum = 0.0; $weights = 0.0
            if ([Math]::Sign($pa[$i]) -eq $sign) { $sum += $pa[$i]; $weights += 1 }
            if ([Math]::Sign($pb[$i]) -eq $sign) { $sum += 0.5 * $pb[$i]; $weights += 0.5 }
            $expected = $b[$i] + $(if ($weights -eq 0) { 0 } else { $sum / $weights })
            if ([Math]::Abs($actual[$i] - $expected) -gt 1e-6) { $wrong++ }
        }
        $wrong | Should -Be 0
        # About half the entries of each input were dropped, so some outputs equal the base.
        @($pa | Where-Object { $_ -eq 0 }).Count | Should -BeGreaterThan 1500
        @($pa | Where-Object { $_ -eq 0 }).Count | Should -BeLessThan 2600
    }

    It 'records the step, writes a della recipe, and Invoke-DareMerge replays it to identical bytes' {
        $output = Join-Path $TestDrive 'della-recipe'
        $vector = Get-TaskVector $base $tuneA, $tuneB | Invoke-DellaDrop 0.4 -Epsilon 0.1 -Seed 3 | Merge-Ties -KeepRatio 1
        $vector.Inputs[1].Steps[-1] | Should -Be 'DellaDrop(density=0.4, epsilon=0.1, seed=3, stream=1, rescale=InverseKeep)'
        $null = $vector | Export-Safetensors $output
        $recipe = Get-Content -Raw (Join-Path $output 'dare_recipe.yml')
        $recipe | Should -Match 'merge_method: della\n'
        $recipe | Should -Match 'epsilon: 0.1'
        $replay = Invoke-DareMerge (Join-Path $output 'dare_recipe.yml') -OutputPath (Join-Path $TestDrive 'della-replay')
        (Get-FolderHashes $replay.Path)['model.safetensors'] | Should -Be (Get-FolderHashes $output)['model.safetensors']
    }

    It 'della_linear from a recipe equals the pipeline Invoke-DellaDrop | Merge-Linear -Normalize:$false' {
        $yaml = Join-Path $TestDrive 'della-linear.yml'
        Set-Content $yaml "merge_method: della_linear`nbase_model: $($base.Path)`nrandom_seed: 5`nmodels:`n  - model: $($tuneA.Path)`n    parameters: { weight: 0.7, density: 0.6, epsilon: 0.3 }`n  - model: $($tuneB.Path)`n    parameters: { weight: 0.3, density: 0.6, epsilon: 0.3 }`n"
        $fromRecipe = Invoke-DareMerge $yaml -OutputPath (Join-Path $TestDrive 'dl-recipe')
        $null = Get-TaskVector $base $tuneA, $tuneB | Invoke-DellaDrop 0.6 -Epsilon 0.3 -Seed 5 | Merge-Linear -Weight 0.7, 0.3 -Normalize:$false |
            Export-Safetensors (Join-Path $TestDrive 'dl-pipeline')
        (Get-FolderHashes (Join-Path $TestDrive 'dl-pipeline'))['model.safetensors'] | Should -Be (Get-FolderHashes $fromRecipe.Path)['model.safetensors']
    }

    It 'refuses density ± epsilon outside (0, 1) with InvalidParameter' {
        $err = { Get-TaskVector $base $tuneA | Invoke-DellaDrop -Density 0.1 -Epsilon 0.15 -Seed 1 } | Should -Throw -ErrorId 'InvalidParameter,Dare.PowerShell.InvokeDellaDropCommand' -PassThru
        $err.Exception.Message | Should -BeLike '*density ± epsilon inside (0, 1)*'
    }

    It 'validates -<Parameter> <Value> by the declaration' -ForEach @(
        @{ Parameter = 'Density'; Value = 0; Rule = 'Density must satisfy 0 < Density <= 1' }
        @{ Parameter = 'Epsilon'; Value = 1; Rule = 'Epsilon must satisfy 0 <= Epsilon < 1' }
        @{ Parameter = 'RescaleQ'; Value = 1.5; Rule = 'RescaleQ must satisfy 0 < RescaleQ <= 1' }
    ) {
        $arguments = @{ Density = 0.5; Seed = 1 }
        $arguments[$Parameter] = $Value
        $err = { Get-TaskVector $base $tuneA | Invoke-DellaDrop @arguments } | Should -Throw -ErrorId 'ParameterArgumentValidationError,Dare.PowerShell.InvokeDellaDropCommand' -PassThru
        $err.Exception.Message | Should -BeLike "*$Rule*"
    }

    It 'completes <Line> with <Expected>' -ForEach @(
        @{ Line = 'Invoke-DellaDrop -Epsilon '; Expected = @('0.15', '0') }
        @{ Line = 'Invoke-DellaDrop -Density '; Expected = @('1') }
        @{ Line = 'Invoke-DareDrop -RescaleQ '; Expected = @('1') }
    ) {
        $completions = (TabExpansion2 -inputScript $Line -cursorColumn $Line.Length).CompletionMatches
        @($completions.CompletionText) | Should -Be $Expected
    }

    It 'help states the declared range of -<Parameter>' -ForEach @(
        @{ Parameter = 'Density'; Owner = 'della'; Key = 'density' }
        @{ Parameter = 'Epsilon'; Owner = 'della'; Key = 'epsilon' }
        @{ Parameter = 'RescaleQ'; Owner = 'dare'; Key = 'rescale_q' }
    ) {
        $spec = [Dare.PowerShell.ValidateDeclaredAttribute]::Spec($Owner, $Key)
        (Get-Help Invoke-DellaDrop -Parameter $Parameter).description.Text -join ' ' | Should -BeLike "*$($spec.Range.Rule($Parameter))*"
    }
}

Describe 'Invoke-DareDrop -Rescale Q (DAREx-q)' {
    It 'keeps the DARE mask and scales survivors by 1/q instead of 1/(1 − p)' {
        $name = 'model.layers.1.mlp.up_proj.weight'
        $null = Get-TaskVector $base $tuneA | Invoke-DareDrop 0.9 -Seed 4 | Export-Safetensors (Join-Path $TestDrive 'dare-inverse') -DType float32
        $null = Get-TaskVector $base $tuneA | Invoke-DareDrop 0.9 -Seed 4 -Rescale Q -RescaleQ 0.25 | Export-Safetensors (Join-Path $TestDrive 'dare-q') -DType float32
        $b = Read-TestTensor $base.Path $name; $t = Read-TestTensor $tuneA.Path $name
        $inverse = Read-TestTensor (Join-Path $TestDrive 'dare-inverse') $name; $q = Read-TestTensor (Join-Path $TestDrive 'dare-q') $name
        $key = [Dare.Engine.Merge.DareMask]::Key(4, 0, $name)
        $threshold = [Dare.Engine.Merge.DareMask]::Threshold(0.9)
        $wrong = 0
        for ($i = 0; $i -lt $b.Length; $i++) {
            $delta = [float]($t[$i] - $b[$i])
            $kept = [Dare.Engine.Merge.DareMask]::Hash($key, $i) -ge $threshold
            $expected = $b[$i] + $(if ($kept) { $delta / 0.25 } else { 0 })
            if ([Math]::Abs($q[$i] - $expected) -gt 1e-6) { $wrong++ }
            # Same survivors as the paper's rescale.
            if (($q[$i] -eq $b[$i]) -ne ($inverse[$i] -eq $b[$i])) { $wrong++ }
        }
        $wrong | Should -Be 0
        Get-Content (Join-Path $TestDrive 'dare-q' 'dare_recipe.yml') | Should -Contain '  rescale: q'
        Get-Content (Join-Path $TestDrive 'dare-q' 'dare_recipe.yml') | Should -Contain '  rescale_q: 0.25'
    }

    It 'needs -RescaleQ with -Rescale Q, and refuses it with any other rescale' {
        { Get-TaskVector $base $tuneA | Invoke-DareDrop 0.9 -Seed 1 -Rescale Q } | Should -Throw -ErrorId 'InvalidParameter,Dare.PowerShell.InvokeDareDropCommand'
        { Get-TaskVector $base $tuneA | Invoke-DareDrop 0.9 -Seed 1 -RescaleQ 0.2 } | Should -Throw -ErrorId 'InvalidParameter,Dare.PowerShell.InvokeDareDropCommand'
    }
}

Describe 'Invoke-BreadcrumbsDrop' {
    It 'keeps the band below the top gamma by magnitude, recomputed here, and writes a breadcrumbs_ties recipe that replays' {
        $output = Join-Path $TestDrive 'breadcrumbs'
        $null = Get-TaskVector $base $tuneA, $tuneB | Invoke-BreadcrumbsDrop -Density 0.6 -Gamma 0.05 | Merge-Ties -KeepRatio 1 -Normalize:$false |
            Export-Safetensors $output -DType float32
        $name = 'model.layers.1.self_attn.v_proj.weight'
        $b = Read-TestTensor $base.Path $name; $n = $b.Length
        $bands = foreach ($tune in $tuneA, $tuneB) {
            $t = Read-TestTensor $tune.Path $name
            $delta = [float[]](0..($n - 1) | ForEach-Object { [float]($t[$_] - $b[$_]) })
            $order = 0..($n - 1) | Sort-Object @{ Expression = { [Math]::Abs($delta[$_]) }; Descending = $true }, @{ Expression = { $_ } }
            $band = [double[]]::new($n)
            $top = [Math]::Floor(0.05 * $n); $kept = [Math]::Floor(0.6 * $n)
            foreach ($i in $order[$top..($top + $kept - 1)]) { $band[$i] = $delta[$i] }
            , $band
        }
        $actual = Read-TestTensor $output $name
        $wrong = 0
        for ($i = 0; $i -lt $n; $i++) {
            $sign = if ($bands[0][$i] + $bands[1][$i] -ge 0) { 1 } else { -1 }
            $sum = 0.0
            foreach ($band in $bands) { if ([Math]::Sign($band[$i]) -eq $sign) { $sum += $band[$i] } }
            if ([Math]::Abs($actual[$i] - ($b[$i] + $sum)) -gt 1e-6) { $wrong++ }
        }
        $wrong | Should -Be 0
        Get-Content (Join-Path $output 'dare_recipe.yml') | Should -Contain 'merge_method: breadcrumbs_ties'
        $replay = Invoke-DareMerge (Join-Path $output 'dare_recipe.yml') -OutputPath (Join-Path $TestDrive 'breadcrumbs-replay')
        (Get-FolderHashes $replay.Path)['model.safetensors'] | Should -Be (Get-FolderHashes $output)['model.safetensors']
    }

    It 'validates -Gamma by the declaration and completes it' {
        $err = { Get-TaskVector $base $tuneA | Invoke-BreadcrumbsDrop 0.5 -Gamma 1 } | Should -Throw -ErrorId 'ParameterArgumentValidationError,Dare.PowerShell.InvokeBreadcrumbsDropCommand' -PassThru
        $err.Exception.Message | Should -BeLike '*Gamma must satisfy 0 <= Gamma < 1*'
        $line = 'Invoke-BreadcrumbsDrop -Gamma '
        @((TabExpansion2 -inputScript $line -cursorColumn $line.Length).CompletionMatches.CompletionText) | Should -Be @('0.01', '0')
    }
}

Describe 'Merge-Sce' {
    It 'equals merge_method: sce from a recipe' {
        $yaml = Join-Path $TestDrive 'sce.yml'
        Set-Content $yaml "merge_method: sce`nbase_model: $($base.Path)`nmodels:`n  - model: $($tuneA.Path)`n  - model: $($tuneB.Path)`nparameters: { select_topk: 0.3 }`n"
        $fromRecipe = Invoke-DareMerge $yaml -OutputPath (Join-Path $TestDrive 'sce-recipe')
        $null = Get-TaskVector $base $tuneA, $tuneB | Merge-Sce -SelectTopK 0.3 | Export-Safetensors (Join-Path $TestDrive 'sce-pipeline')
        (Get-FolderHashes (Join-Path $TestDrive 'sce-pipeline'))['model.safetensors'] | Should -Be (Get-FolderHashes $fromRecipe.Path)['model.safetensors']
        (Get-TaskVector $base $tuneA, $tuneB | Merge-Sce 0.3).Steps[-1] | Should -Be 'MergeSce(select_topk=0.3)'
    }

    It 'validates -SelectTopK by the declaration' {
        $err = { Get-TaskVector $base $tuneA | Merge-Sce -SelectTopK 1.5 } | Should -Throw -ErrorId 'ParameterArgumentValidationError,Dare.PowerShell.MergeSceCommand' -PassThru
        $err.Exception.Message | Should -BeLike '*SelectTopK must satisfy 0 <= SelectTopK <= 1*'
    }
}
