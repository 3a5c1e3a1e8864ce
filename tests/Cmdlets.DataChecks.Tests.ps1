# Data checks on the input side: several vectors for one folder, NaN/Inf, inputs changed after they were opened,
# special files (FIFOs) and side files that link out of the model folder. Every case asserts what is on disk afterwards.
BeforeAll {
    . (Join-Path $PSScriptRoot 'TestHelpers.ps1')
    Import-DareTestModule

    $models = Join-Path $TestDrive 'models'
    $script:base = New-SyntheticCheckpoint (Join-Path $models 'base') -HiddenSize 64 -Layers 1 -VocabSize 128
    $script:math = New-SyntheticCheckpoint (Join-Path $models 'math') -BaseModel $base -Seed 2
    $script:code = New-SyntheticCheckpoint (Join-Path $models 'code') -BaseModel $base -Seed 3
    $script:chat = New-SyntheticCheckpoint (Join-Path $models 'chat') -BaseModel $base -Seed 4
    $script:out = Join-Path $TestDrive 'out'
    New-Item -ItemType Directory $out | Out-Null
    $script:poisoned = 'model.layers.0.mlp.up_proj.weight'

    # A copy of a model folder whose tensor $Name has bfloat16 NaN at element 3 and +Inf at element 5 (and -Inf at 7 with -ThreeValues).
    function New-PoisonedModel([string] $Source, [string] $Destination, [string] $Name, [switch] $ThreeValues) {
        Copy-Item -Recurse $Source $Destination
        $file = Join-Path $Destination 'model.safetensors'
        $header = Read-SafetensorsHeader $file
        $start = $header.DataStart + $header.Header[$Name].data_offsets[0]
        $stream = [IO.File]::Open($file, 'Open', 'ReadWrite')
        try {
            $patches = @{ 3 = 0x7FC0; 5 = 0x7F80 }
            if ($ThreeValues) { $patches[7] = 0xFF80 }
            foreach ($element in $patches.Keys) {
                $null = $stream.Seek($start + 2 * $element, 'Begin')
                $stream.Write([BitConverter]::GetBytes([uint16] $patches[$element]), 0, 2)
            }
        }
        finally { $stream.Dispose() }
        Get-Item $Destination
    }

    # Indices of NaN/Inf among float values.
    function Get-NonFiniteIndex([float[]] $Values) {
        @(for ($i = 0; $i -lt $Values.Length; $i++) { if ([float]::IsNaN($Values[$i]) -or [float]::IsInfinity($Values[$i])) { $i } })
    }

    $script:sick = New-PoisonedModel $math.Path (Join-Path $models 'sick') $poisoned
}

Describe 'Export-Safetensors with several inputs' {
    It 'refuses unmerged task vectors with MergeStepMissing before writing anything, even with -Force' {
        $target = Join-Path $out 'forgot-merge'
        New-Item -ItemType Directory $target | Out-Null
        Set-Content (Join-Path $target 'config.json') '{"earlier": true}'
        $failure = $null
        try {
            Get-TaskVector -Base $base -FineTuned $math, $code, $chat | Invoke-DareDrop -DropRate 0.5 -Seed 1 |
                Export-Safetensors $target -Force -ErrorAction Stop
        }
        catch { $failure = $_ }
        $failure.FullyQualifiedErrorId | Should -Be 'MergeStepMissing,Dare.PowerShell.ExportSafetensorsCommand'
        $failure.Exception.Message | Should -Match 'Merge-Ties'
        $failure.Exception.Message | Should -Match 'Merge-Linear'
        $failure.Exception.Message | Should -Match '-FolderPerInput'
        @(Get-ChildItem -Force $target).Name | Should -Be @('config.json')
        Get-Content -Raw (Join-Path $target 'config.json') | Should -Match 'earlier'
        Get-DareTempFolders $out | Should -BeNullOrEmpty
    }

    It 'refuses several merged vectors for one folder with SeveralInputsOneFolder, writing nothing' {
        $target = Join-Path $out 'two-merges'
        $first = Get-TaskVector -Base $base -FineTuned $math, $code | Merge-Linear
        $second = Get-TaskVector -Base $base -FineTuned $code, $chat | Merge-Linear
        { $first, $second | Export-Safetensors $target -ErrorAction Stop } | Should -Throw -ErrorId 'SeveralInputsOneFolder,*'
        $target | Should -Not -Exist
    }

    It 'writes each vector to a folder under -Path named after it with -FolderPerInput, each as exported alone' {
        $target = Join-Path $out 'per-input'
        $vectors = Get-TaskVector -Base $base -FineTuned $math, $code
        $results = $vectors | Export-Safetensors $target -FolderPerInput
        $results.Path | Should -Be @((Join-Path $target 'math'), (Join-Path $target 'code'))
        @(Get-ChildItem $target -Directory).Name | Sort-Object | Should -Be @('code', 'math')
        Get-TaskVector -Base $base -FineTuned $code | Export-Safetensors (Join-Path $out 'code-alone') | Out-Null
        (Get-FileHash (Join-Path $target 'code/model.safetensors')).Hash | Should -Be (Get-FileHash (Join-Path $out 'code-alone/model.safetensors')).Hash
        # base + (math - base) is math again: the folder holds math's values, not code's.
        $name = 'model.layers.0.self_attn.q_proj.weight'
        [Linq.Enumerable]::SequenceEqual([float[]] (Read-TestTensor (Join-Path $target 'math') $name), [float[]] (Read-TestTensor $math.Path $name)) | Should -BeTrue
    }

    It 'writes nothing with -FolderPerInput -WhatIf' {
        $target = Join-Path $out 'per-input-whatif'
        Get-TaskVector -Base $base -FineTuned $math, $code | Export-Safetensors $target -FolderPerInput -WhatIf | Should -BeNullOrEmpty
        $target | Should -Not -Exist
    }
}

Describe 'Non-finite values' {
    It 'fails a <Method> merge of a fine-tune holding NaN/Inf with NonFiniteValues naming tensor, file and count; nothing written' -ForEach @(
        @{ Method = 'linear' }, @{ Method = 'dare-linear' }, @{ Method = 'ties' }
    ) {
        $target = Join-Path $out "nan-$Method"
        $vectors = Get-TaskVector -Base $base -FineTuned $sick, $code
        if ($Method -eq 'dare-linear') { $vectors = $vectors | Invoke-DareDrop -DropRate 0.5 -Seed 3 }
        $merged = if ($Method -eq 'ties') { $vectors | Merge-Ties } else { $vectors | Merge-Linear }
        $failure = $null
        try { $merged | Export-Safetensors $target -ErrorAction Stop } catch { $failure = $_ }
        $failure.FullyQualifiedErrorId | Should -Be 'NonFiniteValues,Dare.PowerShell.ExportSafetensorsCommand'
        $failure.CategoryInfo.Category | Should -Be 'InvalidData'
        $failure.Exception.Message | Should -Match ([regex]::Escape("'$poisoned'"))
        $failure.Exception.Message | Should -Match ([regex]::Escape((Join-Path $sick.FullName 'model.safetensors')))
        $failure.Exception.Message | Should -Match '\b2 NaN/Inf'
        $target | Should -Not -Exist
        Get-DareTempFolders $out | Should -BeNullOrEmpty
    }

    It 'writes them with -AllowNonFinite and one warning per tensor naming the count' {
        $target = Join-Path $out 'nan-allowed'
        $sick3 = New-PoisonedModel $math.Path (Join-Path $TestDrive 'models/sick3') $poisoned -ThreeValues
        $warnings = $null
        Get-TaskVector -Base $base -FineTuned $sick3, $code | Merge-Linear | Export-Safetensors $target -AllowNonFinite -WarningVariable warnings -WarningAction SilentlyContinue | Out-Null
        $about = @($warnings | Where-Object { "$_" -match [regex]::Escape($poisoned) })
        $about.Count | Should -Be 1
        "$($about[0])" | Should -Match '\b3 NaN/Inf'
        Get-NonFiniteIndex (Read-TestTensor $target $poisoned) | Should -Be @(3, 5, 7)
    }

    It 'fails float16 output that overflows (weight 1e30) with NonFiniteValues; nothing written' {
        $target = Join-Path $out 'overflow'
        $failure = $null
        try { Get-TaskVector -Base $base -FineTuned $math | Merge-Linear -Weight 1e30 -Normalize $false | Export-Safetensors $target -DType float16 -ErrorAction Stop } catch { $failure = $_ }
        $failure.FullyQualifiedErrorId | Should -Be 'NonFiniteValues,Dare.PowerShell.ExportSafetensorsCommand'
        $failure.Exception.Message | Should -Match 'F16'
        $target | Should -Not -Exist
        Get-DareTempFolders $out | Should -BeNullOrEmpty
    }

    It 'writes the overflow with -AllowNonFinite, each warning counting exactly the Inf values on disk' {
        $target = Join-Path $out 'overflow-allowed'
        $warnings = $null
        Get-TaskVector -Base $base -FineTuned $math | Merge-Linear -Weight 1e30 -Normalize $false |
            Export-Safetensors $target -DType float16 -AllowNonFinite -WarningVariable warnings -WarningAction SilentlyContinue | Out-Null
        $name = 'model.layers.0.self_attn.q_proj.weight'
        $onDisk = (Get-NonFiniteIndex (Read-TestTensor $target $name)).Count
        $onDisk | Should -BeGreaterThan 0
        $about = @($warnings | Where-Object { "$_" -match [regex]::Escape("'$name'") })
        $about.Count | Should -Be 1
        "$($about[0])" | Should -Match "\b$onDisk NaN/Inf"
    }

    It 'Invoke-DareMerge fails the same way, and writes with -AllowNonFinite' {
        $target = Join-Path $out 'recipe-nan'
        $yaml = "merge_method: linear`nbase_model: $($base.Path)`nmodels:`n  - model: $($sick.FullName)`n    parameters: {weight: 1.0}`n  - model: $($code.Path)`n    parameters: {weight: 1.0}`n"
        { Invoke-DareMerge -Yaml $yaml -OutputPath $target -ErrorAction Stop } | Should -Throw -ErrorId 'NonFiniteValues,*'
        $target | Should -Not -Exist
        Invoke-DareMerge -Yaml $yaml -OutputPath $target -AllowNonFinite -WarningAction SilentlyContinue | Out-Null
        Get-NonFiniteIndex (Read-TestTensor $target $poisoned) | Should -Be @(3, 5)
    }
}

Describe 'Inputs that change after they were opened' {
    It 'fails with InputChanged naming the file when a fine-tune is replaced by one with a longer header; nothing written' {
        Copy-Item -Recurse $code.Path (Join-Path $TestDrive 'models/replaced')
        $tuned = Get-Item (Join-Path $TestDrive 'models/replaced')
        $vector = Get-TaskVector -Base $base -FineTuned $tuned.FullName
        $file = Join-Path $tuned.FullName 'model.safetensors'
        $tensors = [ordered]@{}
        foreach ($name in (Read-SafetensorsHeader $file).Header.Keys | Where-Object { $_ -ne '__metadata__' }) {
            $raw = Read-TensorBytes $tuned.FullName $name
            $tensors[$name] = @{ DType = $raw.DType; Shape = $raw.Shape; Bytes = $raw.Bytes }
        }
        Write-TestSafetensors "$file.new" $tensors @{ format = 'pt'; padding = 'x' * 4096 }
        Move-Item -Force "$file.new" $file
        $target = Join-Path $out 'stale'
        $failure = $null
        try { $vector | Merge-Linear | Export-Safetensors $target -ErrorAction Stop } catch { $failure = $_ }
        $failure.FullyQualifiedErrorId | Should -Be 'InputChanged,Dare.PowerShell.ExportSafetensorsCommand'
        $failure.Exception.Message | Should -Match ([regex]::Escape($file))
        $target | Should -Not -Exist
        Get-DareTempFolders $out | Should -BeNullOrEmpty
    }

    It 'fails with InputChanged when the file is rewritten in place (same inode, new size)' {
        Copy-Item -Recurse $chat.Path (Join-Path $TestDrive 'models/rewritten')
        $tuned = Get-Item (Join-Path $TestDrive 'models/rewritten')
        $vector = Get-TaskVector -Base $base -FineTuned $tuned.FullName
        $file = Join-Path $tuned.FullName 'model.safetensors'
        $stream = [IO.File]::Open($file, 'Append')
        try { $stream.Write([byte[]]::new(8), 0, 8) } finally { $stream.Dispose() }
        { $vector | Export-Safetensors (Join-Path $out 'rewritten') -ErrorAction Stop } | Should -Throw -ErrorId 'InputChanged,*'
        Join-Path $out 'rewritten' | Should -Not -Exist
    }
}

Describe 'Special files' {
    It 'refuses a FIFO as <Role> with NotRegularFile at once, instead of hanging' -ForEach @(
        @{ Role = 'the model file'; Name = 'model.safetensors' }
        @{ Role = 'config.json'; Name = 'config.json' }
    ) {
        $folder = Join-Path $TestDrive "fifo-$Name"
        Copy-Item -Recurse $code.Path $folder
        Remove-Item (Join-Path $folder $Name)
        & mkfifo (Join-Path $folder $Name)
        # In a child process with a deadline: before the fix this blocked forever.
        $pwsh = Get-PwshCommand
        $script = "Import-Module '$(Join-Path $RepoRoot 'out/Dare/Dare.psd1')'; try { Import-Safetensors '$folder' -ErrorAction Stop } catch { `$_.FullyQualifiedErrorId; `$_.Exception.Message }"
        $process = Start-Process $pwsh[0] -ArgumentList (@($pwsh | Select-Object -Skip 1) + @('-NoProfile', '-NonInteractive', '-Command', $script)) -PassThru -NoNewWindow -RedirectStandardOutput (Join-Path $TestDrive "fifo-$Name.txt")
        $finished = $process.WaitForExit(60000)
        if (-not $finished) { $process.Kill($true) }
        $finished | Should -BeTrue
        $output = Get-Content -Raw (Join-Path $TestDrive "fifo-$Name.txt")
        $output | Should -Match 'NotRegularFile,Dare.PowerShell.ImportSafetensorsCommand'
        $output | Should -Match ([regex]::Escape((Join-Path $folder $Name)))
        $output | Should -Match 'FIFO'
    }

    It 'copies only side files that resolve inside the base folder, warning about one that links out' {
        $folder = Join-Path $TestDrive 'linked-base'
        Copy-Item -Recurse $base.Path $folder
        $secret = Join-Path $TestDrive 'secret.json'
        Set-Content $secret '{"secret": 1}'
        Remove-Item (Join-Path $folder 'tokenizer.json') -ErrorAction Ignore # synthetic models have one; replaced by a link out
        New-Item -ItemType SymbolicLink -Path (Join-Path $folder 'tokenizer.json') -Target $secret | Out-Null
        New-Item -ItemType SymbolicLink -Path (Join-Path $folder 'vocab.json') -Target (Join-Path $folder 'special_tokens_map.json') | Out-Null
        $target = Join-Path $out 'linked'
        $warnings = $null
        Get-TaskVector -Base $folder -FineTuned $math | Export-Safetensors $target -WarningVariable warnings -WarningAction SilentlyContinue | Out-Null
        Join-Path $target 'tokenizer.json' | Should -Not -Exist
        @($warnings | Where-Object { "$_" -match 'tokenizer\.json' -and "$_" -match 'outside the model folder' }).Count | Should -Be 1
        Get-Content -Raw (Join-Path $target 'vocab.json') | Should -Be (Get-Content -Raw (Join-Path $base.Path 'special_tokens_map.json'))
        (Get-Item (Join-Path $target 'vocab.json')).LinkType | Should -BeNullOrEmpty
    }

    It 'skips a side file that is a FIFO with a warning' {
        $folder = Join-Path $TestDrive 'fifo-side'
        Copy-Item -Recurse $base.Path $folder
        & mkfifo (Join-Path $folder 'merges.txt')
        $target = Join-Path $out 'fifo-side'
        $warnings = $null
        Get-TaskVector -Base $folder -FineTuned $math | Export-Safetensors $target -WarningVariable warnings -WarningAction SilentlyContinue | Out-Null
        Join-Path $target 'merges.txt' | Should -Not -Exist
        @($warnings | Where-Object { "$_" -match 'merges\.txt' -and "$_" -match 'FIFO' }).Count | Should -Be 1
    }
}
