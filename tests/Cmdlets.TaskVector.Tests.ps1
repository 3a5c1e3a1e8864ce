# Get-TaskVector, Invoke-DareDrop, Get-TaskVectorTensor and Measure-TaskVector on small float32 models.
BeforeAll {
    . (Join-Path $PSScriptRoot 'TestHelpers.ps1')
    Import-DareTestModule

    $models = Join-Path $TestDrive 'models'
    $script:base = New-SyntheticCheckpoint (Join-Path $models 'base') -HiddenSize 64 -Layers 2 -VocabSize 128 -DType float32
    $script:math = New-SyntheticCheckpoint (Join-Path $models 'math') -BaseModel $base -Seed 11 -DType float32
    $script:code = New-SyntheticCheckpoint (Join-Path $models 'code') -BaseModel $base -Seed 12 -DType float32
    # Another architecture (hidden size 32): every shared tensor has another shape.
    $script:narrow = New-SyntheticCheckpoint (Join-Path $TestDrive 'other/narrow') -HiddenSize 32 -Layers 2 -VocabSize 128 -DType float32
    # A fine-tune that lacks the final norm.
    $script:partial = Join-Path $TestDrive 'other/partial'
    Copy-ModelWithoutTensor $math.Path $partial -Exclude 'model.norm.weight'
    $script:floatTensors = $base.Tensors.Name
    $script:upProj = 'model.layers.0.mlp.up_proj.weight'

    # One tensor of a task vector as float[] (through -AsTensor, disposed here).
    function Get-DeltaValues($Vector, [string] $Name) {
        $delta = $Vector | Get-TaskVectorTensor $Name -AsTensor
        try { , $delta.data[float]().ToArray() }
        finally { $delta.Dispose() }
    }

    # Where one tensor of a task vector is exactly 0.
    function Get-ZeroPattern($Vector, [string] $Name) {
        , [bool[]] @((Get-DeltaValues $Vector $Name) | ForEach-Object { $_ -eq 0 })
    }
}

Describe 'Get-TaskVector' {
    It 'merges a fine-tune with two more vocabulary rows: base keeps the base rows, Union adds the rows (-TokenizerSource)' {
        # Synthetic tokenizers name every row (characters, then <extra_id>), so the base's 128 tokens match the fine-tune's
        # first 128 rows; the two added rows are tokens of the fine-tune only.
        $wider = New-SyntheticCheckpoint (Join-Path $TestDrive 'vocab/wider') -HiddenSize 64 -Layers 2 -VocabSize 130 -DType float32 -Seed 5
        $byBase = Get-TaskVector -Base $base.Path -FineTuned $wider.Path
        $byBase.TensorCount | Should -Be $base.TensorCount
        $union = @(Get-TaskVector -Base $base.Path -FineTuned $wider.Path -TokenizerSource Union)
        $union.Count | Should -Be 1
        $written = $union | Export-Safetensors -Path (Join-Path $TestDrive 'vocab/union') -DType float32 | Import-Safetensors
        ($written.Tensors | Where-Object Name -eq 'model.embed_tokens.weight').Shape | Should -Be @(130, 64)
        (Get-Content -Raw (Join-Path $written.Path 'config.json') | ConvertFrom-Json).vocab_size | Should -Be 130
        $embedding = Read-TestTensor $written.Path 'model.embed_tokens.weight'
        $source = Read-TestTensor $wider.Path 'model.embed_tokens.weight'
        # Row 129 exists only in the fine-tune: the output takes its row (mergekit's single-owner rule).
        $embedding[(129 * 64)..(130 * 64 - 1)] | Should -Be $source[(129 * 64)..(130 * 64 - 1)]
    }

    It 'returns one lazy task vector per fine-tune, named after it, from parameters' {
        $vectors = Get-TaskVector -Base $base.Path -FineTuned $math.Path, $code.Path
        $vectors.Count | Should -Be 2
        $vectors | Should -BeOfType Dare.Engine.Merge.TaskVector
        $vectors.Name | Should -Be @('math', 'code')
        $vectors[0].Base.Path | Should -Be $base.Path
        $vectors[1].FineTuned.Path | Should -Be $code.Path
        $vectors[0].Steps | Should -Be @('TaskVector(math - base)')
        $vectors[0].ParameterCount | Should -Be $base.ParameterCount
    }

    It 'takes fine-tunes from the pipeline as path strings, DirectoryInfo objects and Checkpoints' {
        ($math.Path, $code.Path | Get-TaskVector -Base $base.Path).Name | Should -Be @('math', 'code')
        (Get-ChildItem $models -Directory -Exclude base | Sort-Object Name | Get-TaskVector -Base $base.Path).Name | Should -Be @('code', 'math')
        (Import-Safetensors $math.Path, $code.Path | Get-TaskVector -Base $base).Name | Should -Be @('math', 'code')
    }

    It 'expands a wildcard -FineTuned path to every model it matches' {
        (Get-TaskVector $base (Join-Path $models '[cm]*')).Name | Should -Be @('code', 'math')
        { Get-TaskVector (Join-Path $models '*') $math } | Should -Throw -ExpectedMessage '*matches 3 items*'
    }

    It 'takes the base as a Checkpoint, a DirectoryInfo or a relative path resolved against the PowerShell location' {
        (Get-TaskVector -Base (Get-Item $base.Path) -FineTuned $math).Base.Path | Should -Be $base.Path
        Push-Location $models
        try { (Get-TaskVector ./base ./math).Base.Path | Should -Be $base.Path }
        finally { Pop-Location }
    }

    It 'reports a shape mismatch as TensorShapeMismatch naming the tensor and both files' {
        $vectors = Get-TaskVector -Base $base -FineTuned $narrow, $math -ErrorVariable failures -ErrorAction SilentlyContinue
        $vectors.Name | Should -Be 'math' -Because 'the other fine-tunes still get their task vectors'
        $failures.Count | Should -Be 1
        $failures[0].FullyQualifiedErrorId | Should -Be 'TensorShapeMismatch,Dare.PowerShell.GetTaskVectorCommand'
        $failures[0].CategoryInfo.Category | Should -Be 'InvalidData'
        $failures[0].Exception.TensorName | Should -Be 'model.embed_tokens.weight'
        $failures[0].Exception.Message | Should -BeLike "*'model.embed_tokens.weight'*[[]128, 64]*[[]128, 32]*"
        $failures[0].Exception.Message | Should -BeLike "*$($narrow.Path)*"
    }

    It 'warns about tensors the fine-tune lacks, and gives them a zero delta' {
        $vector = Get-TaskVector -Base $base -FineTuned $partial -WarningVariable warnings -WarningAction SilentlyContinue
        $warnings.Count | Should -Be 1
        $warnings[0].Message | Should -BeLike '*lacks 1 tensor*model.norm.weight*'
        $vector.MissingTensors | Should -Be @('model.norm.weight')
        $summary = $vector | Get-TaskVectorTensor model.norm.weight
        $summary.ZeroFraction | Should -Be 1
        $summary.L2Norm | Should -Be 0
        ($vector | Get-TaskVectorTensor $upProj).ZeroFraction | Should -BeLessThan 0.01
    }

    It 'warns when a fine-tuned model is the base itself or given twice (the same files, by any path), and still emits it' {
        $link = Join-Path $TestDrive 'math-link'
        $null = New-Item -ItemType SymbolicLink -Path $link -Target $math.Path
        $vectors = Get-TaskVector -Base $base -FineTuned $base.Path, $math, $link, $code -WarningVariable warnings -WarningAction SilentlyContinue
        $vectors.Count | Should -Be 4
        $warnings.Count | Should -Be 2
        $warnings[0].Message | Should -BeLike "'$($base.Path)' is the base model itself*task vector is zero*"
        $warnings[1].Message | Should -BeLike "'$link' is given more than once (the same files as '$($math.Path)')*"
        ($vectors[0] | Get-TaskVectorTensor $upProj).ZeroFraction | Should -Be 1
    }

    It 'does not warn about a copy of a model, which is another model whatever its bytes' {
        $copy = Join-Path $TestDrive 'math-copy'
        Copy-Item -Recurse $math.Path $copy
        $null = Get-TaskVector -Base $base -FineTuned $math, $copy -WarningVariable warnings -WarningAction SilentlyContinue
        $warnings.Count | Should -Be 0
    }

    It 'stops with PathNotFound or NotFileSystemPath for a bad base, naming the path' {
        { Get-TaskVector -Base (Join-Path $TestDrive 'missing') -FineTuned $math } |
            Should -Throw -ErrorId 'PathNotFound,Dare.PowerShell.GetTaskVectorCommand' -ExpectedMessage '*missing*'
        { Get-TaskVector -Base Env:\PATH -FineTuned $math } | Should -Throw -ErrorId 'NotFileSystemPath,Dare.PowerShell.GetTaskVectorCommand'
    }

    It 'reports a bad fine-tune as a non-terminating PathNotFound error and goes on with the others' {
        $vectors = Get-TaskVector -Base $base -FineTuned (Join-Path $TestDrive 'missing'), $math -ErrorVariable problems -ErrorAction SilentlyContinue
        $vectors | Should -HaveCount 1
        $problems | Should -HaveCount 1
        $problems[0].FullyQualifiedErrorId | Should -Be 'PathNotFound,Dare.PowerShell.GetTaskVectorCommand'
        $problems[0].CategoryInfo.Category | Should -Be 'ObjectNotFound'
        $problems[0].Exception.Message | Should -BeLike '*missing*'
    }
}

Describe 'Invoke-DareDrop' {
    BeforeAll {
        $script:tv = Get-TaskVector $base $math
    }

    It 'returns new task vectors and leaves its input unchanged, so one vector can be dropped at several rates' {
        $half = $tv | Invoke-DareDrop -DropRate 0.5 -Seed 1
        $most = $tv | Invoke-DareDrop -DropRate 0.9 -Seed 1
        $tv.Dare | Should -BeNullOrEmpty
        $tv.Steps.Count | Should -Be 1
        $half.Dare.DropRate.Value | Should -Be 0.5
        $most.Dare.DropRate.Value | Should -Be 0.9
        $most.Steps[-1] | Should -Be 'DareDrop(p=0.9, seed=1, stream=0, rescale=InverseKeep)'
        ($half | Measure-TaskVector).RealisedDropRate | Should -BeGreaterThan 0.48
        ($most | Measure-TaskVector).RealisedDropRate | Should -BeGreaterThan 0.88
    }

    It 'gives each task vector down one pipeline its own mask stream' {
        # The same fine-tune twice: identical deltas, so any difference in zeros comes from the masks.
        $first, $second = Get-TaskVector $base $math, $math -WarningAction SilentlyContinue | Invoke-DareDrop -DropRate 0.5 -Seed 3
        $first.Dare.Stream | Should -Be 0
        $second.Dare.Stream | Should -Be 1
        $a = Get-ZeroPattern $first $upProj
        $b = Get-ZeroPattern $second $upProj
        $different = 0
        for ($i = 0; $i -lt $a.Length; $i++) { if ($a[$i] -ne $b[$i]) { $different++ } }
        $different / $a.Length | Should -BeGreaterThan 0.4 -Because 'independent masks at p = 0.5 disagree on about half of the entries'
    }

    It 'draws the same mask for the same seed and stream' {
        $a = Get-ZeroPattern ($tv | Invoke-DareDrop 0.5 -Seed 3) $upProj
        $b = Get-ZeroPattern ($tv | Invoke-DareDrop 0.5 -Seed 3) $upProj
        $c = Get-ZeroPattern ($tv | Invoke-DareDrop 0.5 -Seed 4) $upProj
        [Linq.Enumerable]::SequenceEqual($a, $b) | Should -BeTrue
        [Linq.Enumerable]::SequenceEqual($a, $c) | Should -BeFalse
    }

    It 'rescales the surviving entries by 1/(1 - p)' {
        $plain = Get-DeltaValues $tv $upProj
        $dropped = Get-DeltaValues ($tv | Invoke-DareDrop 0.5 -Seed 9) $upProj
        $kept = 0
        $wrong = [Collections.Generic.List[string]]::new()
        for ($i = 0; $i -lt $plain.Length; $i++) {
            if ($dropped[$i] -eq 0) { continue }
            $kept++
            # One Should for the whole tensor: a Should per element made this test take 14 s.
            if ($dropped[$i] -ne [float] (2 * $plain[$i])) { $wrong.Add("[$i] $($dropped[$i]) vs 2 * $($plain[$i])") }
        }
        $wrong | Select-Object -First 5 | Should -BeNullOrEmpty
        $kept / $plain.Length | Should -BeGreaterThan 0.45
    }

    It 'draws a random seed when -Seed is omitted and records it in Steps and in the exported recipe' {
        $one = $tv | Invoke-DareDrop 0.9
        $two = $tv | Invoke-DareDrop 0.9
        $one.Steps[-1] -match 'seed=(\d+)' | Should -BeTrue
        $seed = [long] $Matches[1]
        $one.Dare.Seed | Should -Be $seed
        $two.Dare.Seed | Should -Not -Be $seed
        $output = Join-Path $TestDrive 'random-seed'
        $one | Export-Safetensors $output | Out-Null
        Get-Content (Join-Path $output 'dare_recipe.yml') | Should -Contain "random_seed: $seed"
    }

    It 'rejects a drop rate <p> outside [0, 1) with InvalidParameter' -ForEach @(@{ p = -0.1 }, @{ p = 1.0 }, @{ p = 1.5 }, @{ p = [double]::NaN }) {
        { $tv | Invoke-DareDrop -DropRate $p -Seed 1 } | Should -Throw -ErrorId 'InvalidParameter,Dare.PowerShell.InvokeDareDropCommand'
    }

    It 'rejects an override rate outside [0, 1) with InvalidParameter' {
        { $tv | Invoke-DareDrop 0.5 -DropRateOverride @{ '*embed*' = 1 } } | Should -Throw -ErrorId 'InvalidParameter,*'
    }

    It 'applies -DropRateOverride rates to the tensors whose names match' {
        $vector = $tv | Invoke-DareDrop -DropRate 0.9 -DropRateOverride @{ '*embed_tokens*' = 0.2; 'lm_head*' = 0 } -Seed 5
        $perTensor = $vector | Measure-TaskVector -PerTensor
        $embed = $perTensor | Where-Object Tensor -eq 'model.embed_tokens.weight'
        $embed.TargetDropRate | Should -Be 0.2
        $embed.RealisedDropRate | Should -BeGreaterThan 0.17
        $embed.RealisedDropRate | Should -BeLessThan 0.23
        ($perTensor | Where-Object Tensor -eq 'lm_head.weight').RealisedDropRate | Should -Be 0
        $up = $perTensor | Where-Object Tensor -eq $upProj
        $up.TargetDropRate | Should -Be 0.9
        $up.RealisedDropRate | Should -BeGreaterThan 0.88
    }

    It 'refuses a vector that already has a DARE step, or is merged, with TaskVectorInvalid' {
        $dropped = $tv | Invoke-DareDrop 0.5 -Seed 1
        $dropped | Invoke-DareDrop 0.5 -Seed 1 -ErrorVariable failures -ErrorAction SilentlyContinue | Should -BeNullOrEmpty
        $failures[0].FullyQualifiedErrorId | Should -BeLike 'TaskVectorInvalid,*'
        $merged = Get-TaskVector $base $math, $code | Merge-Linear
        { $merged | Invoke-DareDrop 0.5 -ErrorAction Stop } | Should -Throw -ErrorId 'TaskVectorInvalid,*'
    }

    It 'takes an array of task vectors through -InputObject' {
        $vectors = Invoke-DareDrop -InputObject (Get-TaskVector $base $math, $code) -DropRate 0.5 -Seed 1
        $vectors.Dare.Stream | Should -Be @(0, 1)
    }
}

Describe 'Get-TaskVectorTensor' {
    It 'summarises one tensor of a task vector' {
        $summary = Get-TaskVector $base $math | Get-TaskVectorTensor $upProj
        $summary | Should -BeOfType Dare.PowerShell.TaskVectorTensorSummary
        $summary.TaskVector | Should -Be 'math'
        $summary.Name | Should -Be $upProj
        $summary.Shape | Should -Be @(192, 64)
        $summary.ElementCount | Should -Be (192 * 64)
        $expected = [double[]]::new($summary.ElementCount)
        $tuned = Read-TestTensor $math.Path $upProj
        $original = Read-TestTensor $base.Path $upProj
        for ($i = 0; $i -lt $expected.Length; $i++) { $expected[$i] = [float] ($tuned[$i] - $original[$i]) }
        $summary.Min | Should -Be ([Linq.Enumerable]::Min($expected))
        $summary.Max | Should -Be ([Linq.Enumerable]::Max($expected))
        $summary.First | Should -Be ([float[]] $expected[0..7])
    }

    It 'returns the float32 delta in the tensor''s shape with -AsTensor (the caller disposes it)' {
        $delta = Get-TaskVector $base $math | Get-TaskVectorTensor 'model.norm.weight' -AsTensor
        try {
            $delta | Should -BeOfType TorchSharp.torch+Tensor
            $delta.dtype | Should -Be 'Float32'
            $delta.shape | Should -Be @(64)
            $tuned = Read-TestTensor $math.Path 'model.norm.weight'
            $original = Read-TestTensor $base.Path 'model.norm.weight'
            $values = $delta.data[float]().ToArray()
            for ($i = 0; $i -lt 64; $i++) { $values[$i] | Should -Be ([float] ($tuned[$i] - $original[$i])) }
        }
        finally { $delta.Dispose() }
        $delta.IsInvalid | Should -BeTrue
    }

    It 'reports an unknown tensor as TensorNotFound and goes on with the other names' {
        $summaries = Get-TaskVector $base $math | Get-TaskVectorTensor 'no.such.tensor', 'model.norm.weight' -ErrorVariable failures -ErrorAction SilentlyContinue
        $summaries.Name | Should -Be 'model.norm.weight'
        $failures.Count | Should -Be 1
        $failures[0].FullyQualifiedErrorId | Should -Be 'TensorNotFound,Dare.PowerShell.GetTaskVectorTensorCommand'
        $failures[0].CategoryInfo.Category | Should -Be 'ObjectNotFound'
        $failures[0].TargetObject | Should -Be 'no.such.tensor'
    }
}

Describe 'Measure-TaskVector' {
    It 'realises a drop fraction near the target at p = 0.9' {
        $statistics = Get-TaskVector $base $math | Invoke-DareDrop 0.9 -Seed 42 | Measure-TaskVector
        $statistics | Should -BeOfType Dare.Engine.Merge.TaskVectorStatistics
        [Math]::Abs($statistics.TargetDropRate - 0.9) | Should -BeLessThan 1e-12
        [Math]::Abs($statistics.RealisedDropRate - 0.9) | Should -BeLessThan 0.01
        $statistics.NaturalSparsity | Should -BeGreaterOrEqual $statistics.RealisedDropRate
        $statistics.ParameterCount | Should -Be $base.ParameterCount
    }

    It 'reports no drop rates for a task vector without DARE' {
        $statistics = Get-TaskVector $base $math | Measure-TaskVector
        $statistics.TargetDropRate | Should -BeNullOrEmpty
        $statistics.RealisedDropRate | Should -BeNullOrEmpty
        $statistics.NaturalSparsity | Should -BeLessThan 0.05
    }

    It 'emits one record per floating-point tensor with -PerTensor' {
        $records = Get-TaskVector $base $math | Measure-TaskVector -PerTensor
        $records.Count | Should -Be $floatTensors.Count
        $records.Tensor | Sort-Object | Should -Be ($floatTensors | Sort-Object)
        ($records | Measure-Object ParameterCount -Sum).Sum | Should -Be $base.ParameterCount
        ($records | Where-Object Tensor -eq $upProj).ParameterCount | Should -Be (192 * 64)
    }

    It 'reports MaxAbs equal to max |δ| computed independently, per tensor and overall' {
        $vector = Get-TaskVector $base $math
        $overall = $vector | Measure-TaskVector
        $records = $vector | Measure-TaskVector -PerTensor
        $max = 0.0
        foreach ($name in $floatTensors) {
            $tuned = Read-TestTensor $math.Path $name
            $original = Read-TestTensor $base.Path $name
            $tensorMax = 0.0
            for ($i = 0; $i -lt $tuned.Length; $i++) {
                $a = [Math]::Abs([double] [float] ($tuned[$i] - $original[$i]))
                if ($a -gt $tensorMax) { $tensorMax = $a }
            }
            ($records | Where-Object Tensor -eq $name).MaxAbs | Should -Be $tensorMax -Because $name
            $max = [Math]::Max($max, $tensorMax)
        }
        $overall.MaxAbs | Should -Be $max
    }

    It 'reports progress with Write-Progress and completes the progress bar' {
        $run = Invoke-InRunspace { param($Base, $Tune) Get-TaskVector $Base $Tune | Measure-TaskVector } $base.Path, $math.Path
        $run.Errors | Should -BeNullOrEmpty
        $run.Output.Count | Should -Be 1
        $run.Progress[0].Activity | Should -Be 'Measuring'
        $run.Progress[-1].RecordType | Should -Be 'Completed'
    }

    It 'measures each task vector it is given' {
        $records = Get-TaskVector $base $math, $code | Measure-TaskVector
        $records.TaskVector | Should -Be @('math', 'code')
    }
}
