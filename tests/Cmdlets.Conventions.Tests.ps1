# PowerShell conventions every Dare cmdlet follows, and the default table views of the objects they emit.
BeforeDiscovery {
    . (Join-Path $PSScriptRoot 'TestHelpers.ps1')
    Import-DareTestModule
    $manifest = Import-PowerShellDataFile (Join-Path $PSScriptRoot '../Dare.psd1')
    $script:cmdlets = @($manifest.CmdletsToExport | Sort-Object | ForEach-Object { @{ Name = $_ } })
    $script:pathCmdlets = @($manifest.CmdletsToExport | Sort-Object | Where-Object { (Get-Command $_).Parameters.ContainsKey('Path') } | ForEach-Object { @{ Name = $_ } })
}

BeforeAll {
    . (Join-Path $PSScriptRoot 'TestHelpers.ps1')
    Import-DareTestModule
    # Cmdlets that write model folders (Invoke-DareMerge, when it is added, writes one too).
    $script:writers = @('Export-LoraAdapter', 'Export-Safetensors', 'New-SyntheticCheckpoint', 'Invoke-DareMerge', 'Complete-DareExport', 'Invoke-DareSweep')

    # The completions PowerShell offers at the end of $Line.
    function Get-Completion([string] $Line) {
        (TabExpansion2 -inputScript $Line -cursorColumn $Line.Length).CompletionMatches.CompletionText
    }
}

Describe 'Cmdlet conventions: <Name>' -ForEach $cmdlets {
    BeforeAll {
        $command = Get-Command $Name
    }

    It 'uses an approved verb' {
        (Get-Verb).Verb | Should -Contain $command.Verb
    }

    It 'declares its output type' {
        $command.OutputType | Should -Not -BeNullOrEmpty
    }

    It 'supports -WhatIf and -Confirm exactly when it writes files' {
        $supports = $command.Parameters.ContainsKey('WhatIf') -and $command.Parameters.ContainsKey('Confirm')
        $supports | Should -Be ($Name -in $writers)
    }

    It 'has no switch parameter that defaults to on' {
        $instance = [Activator]::CreateInstance($command.ImplementingType)
        foreach ($parameter in $command.Parameters.Values | Where-Object SwitchParameter) {
            $property = $command.ImplementingType.GetProperty($parameter.Name)
            if ($property) { $property.GetValue($instance).IsPresent | Should -BeFalse -Because "-$($parameter.Name) must be off unless given" }
        }
    }
}

Describe 'Path parameters: <Name>' -ForEach $pathCmdlets {
    It 'pairs -Path with -LiteralPath (alias PSPath) in separate parameter sets' {
        $command = Get-Command $Name
        $command.Parameters.ContainsKey('LiteralPath') | Should -BeTrue
        $command.Parameters['LiteralPath'].Aliases | Should -Contain 'PSPath'
        $command.Parameters['Path'].ParameterSets.Keys | Should -Not -Contain 'LiteralPath'
        $command.Parameters['LiteralPath'].ParameterSets.Keys | Should -Not -Contain 'Path'
    }
}

Describe 'Literal twins: <Name>' -ForEach $cmdlets {
    It 'gives every wildcard path parameter a literal twin in other parameter sets' {
        $command = Get-Command $Name
        # Tensor names (Get-TaskVectorTensor -Name) are not provider paths and need no twin.
        $wildcard = $command.Parameters.Values | Where-Object {
            $_.Name -ne 'Name' -and ($_.Attributes | Where-Object { $_ -is [System.Management.Automation.SupportsWildcardsAttribute] })
        }
        foreach ($parameter in $wildcard) {
            $twinName = if ($parameter.Name -like '*Path') { 'LiteralPath' } else { "Literal$($parameter.Name)" }
            $twin = $command.Parameters[$twinName]
            $twin | Should -Not -BeNullOrEmpty -Because "-$($parameter.Name) takes wildcards"
            $twin.Attributes | Where-Object { $_ -is [System.Management.Automation.SupportsWildcardsAttribute] } | Should -BeNullOrEmpty
            $parameter.ParameterSets.Keys | Where-Object { $_ -in $twin.ParameterSets.Keys } | Should -BeNullOrEmpty
        }
    }
}

Describe 'Tab completion' {
    It 'completes -DType of <Command> from its ValidateSet' -ForEach @(@{ Command = 'Export-Safetensors' }, @{ Command = 'New-SyntheticCheckpoint' }) {
        Get-Completion "$Command -DType " | Should -Be @('bfloat16', 'float16', 'float32')
        Get-Completion "$Command -DType bf" | Should -Be @('bfloat16')
    }

    It 'completes the enum parameters -Rescale and -SignMethod' {
        Get-Completion 'Invoke-DareDrop -Rescale ' | Should -Be @('InverseKeep', 'L1', 'None', 'Q')
        Get-Completion 'Invoke-DellaDrop -Rescale ' | Should -Be @('InverseKeep', 'L1', 'None', 'Q')
        Get-Completion 'Merge-Ties -SignMethod ' | Sort-Object | Should -Be @('Count', 'Sum')
    }
}

Describe 'Format views' {
    BeforeAll {
        $base = New-SyntheticCheckpoint (Join-Path $TestDrive 'base') -HiddenSize 64 -Layers 2 -VocabSize 128
        $tune = New-SyntheticCheckpoint (Join-Path $TestDrive 'tune') -BaseModel $base -Seed 2
        $script:vector = Get-TaskVector $base $tune | Invoke-DareDrop 0.9 -Seed 1
        $script:views = @{
            Checkpoint = $base
            TensorInfo = $base.Tensors[0]
            TaskVector = $vector
            Statistics = $vector | Measure-TaskVector
            ExportResult = $vector | Export-Safetensors (Join-Path $TestDrive 'out')
            Summary = $vector | Get-TaskVectorTensor model.embed_tokens.weight
        }

        # The header line and first row of the default view, at a wide console.
        function Get-Table($InputObject) {
            $lines = @(($InputObject | Out-String -Width 250) -split "`r?`n" | Where-Object { $_.Trim() })
            [pscustomobject]@{ Header = ($lines[0] -split '\s{1,}' | Where-Object { $_ }); Row = $lines[2] }
        }
    }

    It 'shows a Checkpoint as Name, Layout, Tensors, Parameters, Size and DTypes in human units' {
        $table = Get-Table $views.Checkpoint
        $table.Header | Should -Be @('Name', 'Layout', 'Tensors', 'Parameters', 'Size', 'DTypes')
        $table.Row | Should -Match '^base\s+Folder\s+21\s+123K\s+246 KB\s+BF16 \(21\)$'
    }

    It 'shows a TensorInfo as Name, DType, Shape, Size and the file name only' {
        $table = Get-Table $views.TensorInfo
        $table.Header | Should -Be @('Name', 'DType', 'Shape', 'Size', 'File')
        $table.Row | Should -Match '^model\.embed_tokens\.weight\s+BF16\s+\[128, 64\]\s+16.4 KB\s+model\.safetensors\s*$'
    }

    It 'shows a TaskVector as Name, Base, Source, Tensors, Parameters and the steps after the task vector itself' {
        $table = Get-Table $views.TaskVector
        $table.Header | Should -Be @('Name', 'Base', 'Source', 'Tensors', 'Parameters', 'Steps')
        $table.Row | Should -Match '^tune\s+base\s+tune\s+21\s+123K\s+DareDrop\(p=0\.9, seed=1, stream=0, rescale=InverseKeep\)$'
        $merged = Get-Table ($vector, (Get-TaskVector $base $tune | Invoke-DareDrop 0.5 -Seed 2) | Merge-Ties 1)
        $merged.Row | Should -Match '^ties\(tune\+tune\)\s+base\s+tune, tune\s+21\s+123K\s+MergeTies\(keep=1/1, .*\) <- DareDrop\(p=0\.9, .*\), DareDrop\(p=0\.5, '
    }

    It 'shows TaskVectorStatistics with percentages and short scientific magnitudes' {
        $table = Get-Table $views.Statistics
        $table.Header | Should -Be @('TaskVector', 'Params', 'Sparsity', 'MaxAbs', 'MeanAbs', 'StdAbs', 'TargetDrop', 'Realised', 'Tensor')
        $table.Row | Should -Match '^tune\s+123K\s+\d+\.\d%\s+\d\.\d\de-\d\s+\d\.\d\de-\d\s+\d\.\d\de-\d\s+90\.0%\s+(89|90)\.\d%'
    }

    It 'shows an ExportResult as Path, Files, Tensors, Size, Elapsed and MB/s' {
        $table = Get-Table $views.ExportResult
        $table.Header | Should -Be @('Path', 'Files', 'Tensors', 'Size', 'Elapsed', 'MB/s')
        # model.safetensors, config, generation_config, tokenizer_config, special_tokens_map, tokenizer.json,
        # README.md (model card), mergekit_config.yml, dare_recipe.yml
        $table.Row | Should -Match '\s+9\s+21\s+246 KB\s+\d+\.\d\d s\s+\d+$'
    }

    It 'shows a TaskVectorTensorSummary as a table with the tensor''s range and zero fraction' {
        $table = Get-Table $views.Summary
        $table.Header | Should -Be @('TaskVector', 'Name', 'Shape', 'Min', 'Max', 'Mean', 'L2Norm', 'Zeros')
        $table.Row | Should -Match '^tune\s+model\.embed_tokens\.weight\s+\[128, 64\]\s+-\d\.\d\de-\d.*\s\d+\.\d%$'
    }

    It 'keeps the list view of Get-DareEnvironment' {
        $text = Get-DareEnvironment | Out-String -Width 250
        $text | Should -Match '(?m)^DareVersion\s+: 0\.1\.0'
        $text | Should -Match '(?m)^LibTorchVersion\s+: 2\.10\.0'
    }

    It 'renders counts, sizes and percentages in short human units' {
        [Dare.PowerShell.DareFormat]::Count(6738415616) | Should -Be '6.74B'
        [Dare.PowerShell.DareFormat]::Count(160000000) | Should -Be '160M'
        [Dare.PowerShell.DareFormat]::Count(950) | Should -Be '950'
        [Dare.PowerShell.DareFormat]::Bytes(13476839424) | Should -Be '13.5 GB'
        [Dare.PowerShell.DareFormat]::Bytes(512) | Should -Be '512 B'
        [Dare.PowerShell.DareFormat]::Percent(0.9) | Should -Be '90.0%'
        [Dare.PowerShell.DareFormat]::Percent($null) | Should -Be ''
        [Dare.PowerShell.DareFormat]::Scientific(0.00123456) | Should -Be '1.23e-3'
    }
}

Describe 'Device completion' {
    It 'completes -Device of every cmdlet that has one with cpu, cuda and torch-cpu' {
        $withDevice = @((Import-PowerShellDataFile (Join-Path $PSScriptRoot '../Dare.psd1')).CmdletsToExport | Where-Object { (Get-Command $_).Parameters.ContainsKey('Device') })
        $withDevice | Sort-Object | Should -Be @('Export-LoraAdapter', 'Export-Safetensors', 'Invoke-DareMerge', 'Invoke-DareSweep', 'Measure-Perplexity')
        foreach ($name in $withDevice) {
            @(Get-Completion "$name -Device ") | Should -Be @('cpu', 'cuda', 'torch-cpu') -Because "$name -Device completes"
            @(Get-Completion "$name -Device CU") | Should -Be @('cuda')
        }
    }
}
