# What a PowerShell user expects of the pipeline: results that bind by property name into the next cmdlet,
# literal twins of wildcard path parameters, wildcard and tab-completed tensor names, readable tables.
BeforeAll {
    . (Join-Path $PSScriptRoot 'TestHelpers.ps1')
    Import-DareTestModule
    $script:BasePath = Join-Path $TestDrive 'llama2-7b'
    $script:Base = New-SyntheticCheckpoint $BasePath -HiddenSize 32 -Layers 2 -VocabSize 64 -DType float32
    $script:Instruct = New-SyntheticCheckpoint (Join-Path $TestDrive 'CodeLlama-7b-Instruct-hf') -BaseModel $Base -Seed 2 -DType float32
    $script:Python = New-SyntheticCheckpoint (Join-Path $TestDrive 'CodeLlama-7b-Python-hf') -BaseModel $Base -Seed 3 -DType float32
    $script:Bracketed = Join-Path $TestDrive '[v2] wizardmath'
    $null = New-SyntheticCheckpoint -LiteralPath $Bracketed -BaseModel $Base -Seed 4 -DType float32
    # Tensor names in file order, read by the test's own safetensors reader.
    $script:HeaderNames = @((Read-SafetensorsHeader (Join-Path $BasePath 'model.safetensors')).Header.Keys | Where-Object { $_ -ne '__metadata__' })

    function Get-Completion([string] $Line) {
        @((TabExpansion2 -inputScript $Line -cursorColumn $Line.Length).CompletionMatches.CompletionText)
    }
}

Describe 'Export-Safetensors results on the pipeline' {
    BeforeAll {
        $script:Exported = Get-TaskVector $Base $Instruct | Invoke-DareDrop 0.5 -Seed 1 | Export-Safetensors (Join-Path $TestDrive 'exported')
    }

    It 'pipe into Import-Safetensors, which opens the folder written' {
        $checkpoint = $Exported | Import-Safetensors
        $checkpoint.Path | Should -Be $Exported.Path
        $checkpoint.Tensors.Name | Should -Be @((Read-SafetensorsHeader (Join-Path $Exported.Path 'model.safetensors')).Header.Keys | Where-Object { $_ -ne '__metadata__' })
    }

    It 'pipe into Import-Safetensors by their exact path, even with wildcard characters in it' {
        $result = Get-TaskVector $Base $Python | Export-Safetensors -LiteralPath (Join-Path $TestDrive 'out [1]')
        ($result | Import-Safetensors -ErrorAction Stop).Path | Should -Be (Join-Path $TestDrive 'out [1]')
    }

    It 'pipe into Get-TaskVector -Base as the fine-tune, whose delta is the exported model minus the base' {
        $vector = $Exported | Get-TaskVector -Base $BasePath -ErrorAction Stop
        $vector.FineTuned.Path | Should -Be $Exported.Path
        $name = 'model.layers.1.mlp.up_proj.weight'
        $written = Read-TestTensor $Exported.Path $name; $original = Read-TestTensor $BasePath $name
        $delta = $vector | Get-TaskVectorTensor $name -AsTensor
        try { $values = $delta.data[float]().ToArray() } finally { $delta.Dispose() }
        $values.Length | Should -Be $written.Length
        $worst = 0.0
        for ($i = 0; $i -lt $values.Length; $i++) { $worst = [Math]::Max($worst, [Math]::Abs($values[$i] - [float] ($written[$i] - $original[$i]))) }
        $worst | Should -Be 0
    }

    It 'pipe into Get-ChildItem by their LiteralPath' {
        ($Exported | Get-ChildItem -File).Name | Should -Contain 'model.safetensors'
    }

    It 'read as their folder where a string is wanted' {
        "$Exported" | Should -Be $Exported.Path
    }
}

Describe 'Get-TaskVector literal twins' {
    It 'takes -LiteralBase and -LiteralFineTuned exactly as typed' {
        $baseCopy = Join-Path $TestDrive '[b] base'
        Copy-Item -LiteralPath $BasePath -Destination $baseCopy -Recurse
        $vector = Get-TaskVector -LiteralBase $baseCopy -LiteralFineTuned $Bracketed -ErrorAction Stop
        $vector.Base.Path | Should -Be $baseCopy
        $vector.FineTuned.Path | Should -Be $Bracketed
    }

    It 'pairs each literal twin with the other parameter''s wildcard form' {
        (Get-TaskVector -Base $BasePath -LiteralFineTuned $Bracketed).FineTuned.Path | Should -Be $Bracketed
        $matched = Get-TaskVector -LiteralBase $BasePath -FineTuned (Join-Path $TestDrive 'CodeLlama-7b-*')
        $matched.FineTuned.Name | Sort-Object | Should -Be @('CodeLlama-7b-Instruct-hf', 'CodeLlama-7b-Python-hf')
    }

    It 'reads [v2] as a wildcard in -FineTuned, so only the literal twin finds that folder' {
        Get-TaskVector -Base $BasePath -FineTuned $Bracketed -ErrorVariable failed -ErrorAction SilentlyContinue | Should -BeNullOrEmpty
        $failed[0].FullyQualifiedErrorId | Should -BeLike 'PathNotFound,*'
    }

    It 'keeps each parameter and its twin in different parameter sets' {
        $command = Get-Command Get-TaskVector
        foreach ($pair in @('Base', 'LiteralBase'), @('FineTuned', 'LiteralFineTuned'), @('Adapter', 'LiteralAdapter')) {
            $shared = $command.Parameters[$pair[0]].ParameterSets.Keys | Where-Object { $_ -in $command.Parameters[$pair[1]].ParameterSets.Keys }
            $shared | Should -BeNullOrEmpty
        }
        # Each of the two base forms with each of the four input forms (fine-tunes or adapters, by pattern or literally).
        $command.ParameterSets.Count | Should -Be 8
    }

    It 'refuses a literal path on another provider with NotFileSystemPath: <Arguments.Keys>' -ForEach @(
        @{ Arguments = @{ LiteralBase = 'Env:PATH'; FineTuned = 'x' } },
        @{ Arguments = @{ Base = 'Function:prompt'; LiteralFineTuned = 'x' } }
    ) {
        { Get-TaskVector @Arguments -ErrorAction Stop } | Should -Throw -ErrorId 'NotFileSystemPath,Dare.PowerShell.GetTaskVectorCommand'
    }

    It 'takes any object with a PSPath property as that exact path' {
        $item = Get-Item -LiteralPath $Bracketed | Select-Object PSPath
        ($item | Get-TaskVector -Base $BasePath -ErrorAction Stop).FineTuned.Path | Should -Be $Bracketed
    }
}

Describe 'Get-TaskVectorTensor names' {
    BeforeAll {
        $script:Vector = Get-TaskVector $Base $Instruct
    }

    It 'expands a wildcard pattern to the base''s matching tensors, in file order' {
        $expected = $HeaderNames | Where-Object { $_ -match '^model\.layers\..*\.mlp\.' }
        $expected.Count | Should -Be 6
        ($Vector | Get-TaskVectorTensor 'model.layers.*.mlp.*').Name | Should -Be $expected
    }

    It 'returns nothing, without an error, for a pattern that matches nothing' {
        $Vector | Get-TaskVectorTensor 'nothing.*' -ErrorVariable failed | Should -BeNullOrEmpty
        $failed | Should -BeNullOrEmpty
    }

    It 'reports TensorNotFound for a plain name the base lacks' {
        { $Vector | Get-TaskVectorTensor 'model.nothing.weight' -ErrorAction Stop } | Should -Throw -ErrorId 'TensorNotFound,*'
    }

    It 'completes tensor names from the base of a Get-TaskVector earlier in the pipeline' {
        $line = "Get-TaskVector '$BasePath' '$($Instruct.Path)' | Get-TaskVectorTensor model.layers.1.self_attn."
        Get-Completion $line | Should -Be @($HeaderNames | Where-Object { $_ -like 'model.layers.1.self_attn.*' })
    }

    It 'completes tensor names from -Base or -LiteralBase given by name, in any position' {
        Get-Completion "Get-TaskVector -FineTuned x -LiteralBase '$BasePath' | Get-TaskVectorTensor -Name lm" | Should -Be @('lm_head.weight')
        $script:someBase = $Base
        Get-Completion 'Get-TaskVector -Base $someBase x | Get-TaskVectorTensor model.n' | Should -Be @('model.norm.weight')
    }

    It 'completes tensor names from a variable piped in, or from -InputObject' {
        $script:someVector = $Vector
        Get-Completion '$someVector | Get-TaskVectorTensor model.embed' | Should -Be @('model.embed_tokens.weight')
        Get-Completion 'Get-TaskVectorTensor -InputObject $someVector -Name model.embed' | Should -Be @('model.embed_tokens.weight')
    }
}

Describe 'Tables size their columns to the names' {
    It 'shows long model names in full, so similar names stay distinct: <Kind>' -ForEach @(
        @{ Kind = 'Checkpoint'; Get = { $Instruct, $Python } },
        @{ Kind = 'TaskVector'; Get = { Get-TaskVector $Base $Instruct, $Python } },
        @{ Kind = 'TaskVectorStatistics'; Get = { Get-TaskVector $Base $Instruct, $Python | Measure-TaskVector } }
    ) {
        $text = & $Get | Out-String -Width 250
        $text | Should -Match '(?m)^CodeLlama-7b-Instruct-hf\s'
        $text | Should -Match '(?m)^CodeLlama-7b-Python-hf\s'
    }
}

Describe 'Objects flattened to text (Export-Csv) and to JSON' {
    BeforeAll {
        $script:Merged = Get-TaskVector $Base $Instruct, $Python | Invoke-DareDrop 0.5 -Seed 1 | Merge-Linear
        $script:Written = $Merged | Export-Safetensors (Join-Path $TestDrive 'flattened')
    }

    It 'summarises a Checkpoint''s files and tensors in its CSV row' {
        $row = $Base | ConvertTo-Csv | ConvertFrom-Csv
        $row.Files | Should -Be (Join-Path $BasePath 'model.safetensors')
        $row.Tensors | Should -Be "$($HeaderNames.Count) tensors"
        $row.Layout | Should -Be 'Folder'
    }

    It 'lists a Checkpoint''s metadata and config.json entries as key=value in its CSV row' {
        $row = $Base | ConvertTo-Csv | ConvertFrom-Csv
        $metadata = (Read-SafetensorsHeader (Join-Path $BasePath 'model.safetensors')).Metadata
        $row.Metadata -split '; ' | Should -Be @($metadata.Keys | ForEach-Object { "$_=$($metadata[$_])" })
        $config = Get-Content -Raw (Join-Path $BasePath 'config.json') | ConvertFrom-Json -AsHashtable
        $row.Config -split '; ' | Should -Contain "hidden_size=$($config.hidden_size)"
        $row.Config -split '; ' | Should -Contain 'architectures=…'
    }

    It 'summarises a merged TaskVector''s inputs, sources and steps in its CSV row' {
        $row = $Merged | ConvertTo-Csv | ConvertFrom-Csv
        $row.Inputs | Should -Be 'CodeLlama-7b-Instruct-hf; CodeLlama-7b-Python-hf'
        $row.Sources | Should -Be "$($Instruct.Path); $($Python.Path)"
        $row.Steps | Should -BeLike 'TaskVector(CodeLlama-7b-Instruct-hf - llama2-7b); DareDrop(p=0.5, *; MergeLinear(*'
    }

    It 'lists an ExportResult''s files in its CSV row, as on disk' {
        $row = $Written | ConvertTo-Csv | ConvertFrom-Csv
        $onDisk = Get-ChildItem -LiteralPath $Written.Path -File | ForEach-Object FullName | Sort-Object
        ($row.Files -split '; ' | Sort-Object) | Should -Be $onDisk
    }

    It 'keeps nested collections as JSON arrays' {
        $json = $Written | ConvertTo-Json -Depth 2 | ConvertFrom-Json
        @($json.Files).Count | Should -Be (Get-ChildItem -LiteralPath $Written.Path -File).Count
        $json.LiteralPath | Should -Be $Written.Path
        ($Merged | ConvertTo-Json -Depth 1 -WarningAction Ignore | ConvertFrom-Json).Steps.Count | Should -Be 5
    }
}
