# Native memory: every TorchSharp tensor the cmdlets create is disposed, so repeated merges do not grow native memory.
BeforeAll {
    . (Join-Path $PSScriptRoot 'TestHelpers.ps1')
    Import-DareTestModule

    $models = Join-Path $TestDrive 'models'
    $script:base = New-SyntheticCheckpoint (Join-Path $models 'base') -HiddenSize 64 -Layers 2 -VocabSize 128 -MaxShardSize 100KB
    $script:tunes = 11, 12 | ForEach-Object { New-SyntheticCheckpoint (Join-Path $models "tune$_") -BaseModel $base -Seed $_ }
    $script:output = Join-Path $TestDrive 'merged'

    # TorchSharp counts the tensors created and disposed on each thread (DisposeScopeManager.Statistics, internal).
    $null = Get-DareEnvironment
    $manager = [TorchSharp.torch].Assembly.GetType('TorchSharp.DisposeScopeManager', $true)
    $script:statisticsProperty = $manager.GetProperty('Statistics', [Reflection.BindingFlags] 'Public, NonPublic, Static')
    function Get-LiveTensorCount { $statisticsProperty.GetValue($null).ThreadTotalLiveCount }

    function Invoke-Everything {
        Get-TaskVector $base $tunes | Invoke-DareDrop 0.9 -Seed 42 | Merge-Ties -KeepRatio 0.5 | Export-Safetensors $output -Force | Out-Null
        Get-TaskVector $base $tunes | Invoke-DareDrop 0.5 -Seed 1 -Rescale L1 | Merge-Linear -Weight 2, 1 | Measure-TaskVector -PerTensor | Out-Null
        Get-TaskVector $base $tunes | Merge-Ties -KeepRatio 0.3 | Get-TaskVectorTensor model.embed_tokens.weight, model.norm.weight | Out-Null
        Get-TaskVector $base $tunes[0] | Merge-Slerp 0.5 | Export-Safetensors $output -Force | Out-Null
        Get-TaskVector $base $tunes | Merge-ModelStock -FilterWise | Measure-TaskVector -PerTensor | Out-Null
        $tensor = Get-TaskVector $base $tunes[0] | Get-TaskVectorTensor model.layers.0.mlp.up_proj.weight -AsTensor
        $tensor.Dispose()
        Get-TaskVector $base $tunes[0] | Get-TaskVectorTensor no.such.tensor -ErrorAction SilentlyContinue
    }
}

Describe 'Native memory' {
    It 'finds TorchSharp''s per-thread tensor statistics' {
        $statisticsProperty | Should -Not -BeNullOrEmpty
        Get-LiveTensorCount | Should -BeOfType [long]
    }

    It 'returns the live tensor count to its start value after merge pipelines run several times in-process' {
        Invoke-Everything
        $start = Get-LiveTensorCount
        $globalStart = [TorchSharp.torch+Tensor]::TotalCount
        $created = $statisticsProperty.GetValue($null).CreatedInScopeCount
        foreach ($round in 1..4) { Invoke-Everything }
        $statisticsProperty.GetValue($null).CreatedInScopeCount | Should -BeGreaterThan $created -Because 'the pipelines create tensors on this thread'
        Get-LiveTensorCount | Should -Be $start
        [TorchSharp.torch+Tensor]::TotalCount | Should -BeLessOrEqual $globalStart -Because 'no thread holds more tensors than before'
    }
}
