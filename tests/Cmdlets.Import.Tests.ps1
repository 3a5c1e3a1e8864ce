# Import-Safetensors: opening files and model folders, path resolution, and errors for bad input.
BeforeAll {
    . (Join-Path $PSScriptRoot 'TestHelpers.ps1')
    Import-DareTestModule

    $models = Join-Path $TestDrive 'models'
    $script:sharded = New-SyntheticCheckpoint (Join-Path $models 'sharded') -HiddenSize 64 -Layers 2 -VocabSize 128 -MaxShardSize 100KB
    $script:folder = New-SyntheticCheckpoint (Join-Path $models 'folder') -BaseModel $sharded -Seed 2
    $script:single = Join-Path $TestDrive 'single.safetensors'
    Copy-Item (Join-Path $folder.Path 'model.safetensors') $single
    $script:bracketed = New-SyntheticCheckpoint -LiteralPath (Join-Path $TestDrive 'brackets/m[1]') -HiddenSize 64 -Layers 1 -VocabSize 128

    # Bad inputs, each in its own folder.
    $bad = Join-Path $TestDrive 'bad'
    New-Item -ItemType Directory -Force $bad, (Join-Path $bad 'empty') | Out-Null
    $script:tooShort = Join-Path $bad 'too-short.safetensors'
    [IO.File]::WriteAllBytes($tooShort, [byte[]] (1, 2, 3, 4))
    $script:truncated = Join-Path $bad 'truncated.safetensors'
    $whole = [IO.File]::ReadAllBytes($single)
    [IO.File]::WriteAllBytes($truncated, $whole[0..([int] ($whole.Length / 2))])
    $script:notJson = Join-Path $bad 'not-json.safetensors'
    $text = [Text.Encoding]::UTF8.GetBytes('{"a": this is not JSON ')
    [IO.File]::WriteAllBytes($notJson, [BitConverter]::GetBytes([uint64] $text.Length) + $text)
    $script:empty = Join-Path $bad 'empty'
}

Describe 'Import-Safetensors' {
    Context 'Opening models' {
        It 'opens a sharded folder through its index, with every shard''s tensors' {
            $checkpoint = Import-Safetensors $sharded.Path
            $checkpoint | Should -BeOfType Dare.Engine.Safetensors.Checkpoint
            $checkpoint.Layout | Should -Be 'Sharded'
            $checkpoint.Files.Count | Should -BeGreaterThan 1
            $checkpoint.TensorCount | Should -Be 21
            $checkpoint.Tensors.Name | Should -Contain 'model.layers.1.mlp.up_proj.weight'
            ($checkpoint.Tensors.File | Select-Object -Unique).Count | Should -Be $checkpoint.Files.Count
            $checkpoint.ConfigInt('hidden_size') | Should -Be 64
        }

        It 'exposes config.json as a dictionary that reads naturally in PowerShell' {
            $config = (Import-Safetensors $sharded.Path).Config
            $config.hidden_size | Should -Be 64
            $config.model_type | Should -Be 'llama'
            $config.architectures | Should -Be @('LlamaForCausalLM')
        }

        It 'opens a folder holding one model.safetensors' {
            $checkpoint = Import-Safetensors $folder.Path
            $checkpoint.Layout | Should -Be 'Folder'
            $checkpoint.Name | Should -Be 'folder'
            $checkpoint.TensorCount | Should -Be 21
            $checkpoint.ParameterCount | Should -Be $sharded.ParameterCount
        }

        It 'opens a single .safetensors file' {
            $checkpoint = Import-Safetensors $single
            $checkpoint.Layout | Should -Be 'File'
            $checkpoint.Name | Should -Be 'single'
            $checkpoint.Files | Should -Be @($single)
            $checkpoint.SizeBytes | Should -Be $folder.SizeBytes
        }

        It 'reports each tensor''s dtype, shape, size and file' {
            $tensor = (Import-Safetensors $sharded.Path).Tensors | Where-Object Name -eq 'model.embed_tokens.weight'
            $tensor.DType | Should -Be 'BF16'
            $tensor.Shape | Should -Be @(128, 64)
            $tensor.ByteLength | Should -Be (128 * 64 * 2)
            $tensor.File | Should -BeLike (Join-Path $sharded.Path 'model-*-of-*.safetensors')
        }
    }

    Context 'Paths' {
        It 'expands wildcards in -Path' {
            $checkpoints = Import-Safetensors (Join-Path $TestDrive 'models/*')
            $checkpoints.Name | Sort-Object | Should -Be @('folder', 'sharded')
        }

        It 'resolves relative paths against the PowerShell location, not the process directory' {
            Push-Location $TestDrive
            try { (Import-Safetensors ./models/folder).Path | Should -Be $folder.Path }
            finally { Pop-Location }
        }

        It 'takes -LiteralPath exactly as typed, where -Path would read [1] as a wildcard' {
            $path = Join-Path $TestDrive 'brackets/m[1]'
            (Import-Safetensors -LiteralPath $path).Path | Should -Be $bracketed.Path
            Import-Safetensors -Path $path -ErrorVariable failures -ErrorAction SilentlyContinue | Should -BeNullOrEmpty
            $failures[0].FullyQualifiedErrorId | Should -BeLike 'PathNotFound,*'
        }

        It 'imports folders piped from Get-ChildItem -Directory' {
            $checkpoints = Get-ChildItem (Join-Path $TestDrive 'models') -Directory | Import-Safetensors
            $checkpoints.Name | Sort-Object | Should -Be @('folder', 'sharded')
        }

        It 'imports a file piped from Get-Item, and paths piped as strings' {
            (Get-Item $single | Import-Safetensors).Layout | Should -Be 'File'
            ($sharded.Path, $single | Import-Safetensors).Count | Should -Be 2
        }

        It 'refuses paths on other providers with NotFileSystemPath, whether or not they exist there' {
            foreach ($path in 'Env:\PATH', 'Env:\DARE_NO_SUCH_VARIABLE', 'Function:\x') {
                $failures = $null
                Import-Safetensors $path -ErrorVariable failures -ErrorAction SilentlyContinue | Should -BeNullOrEmpty
                $failures.Count | Should -Be 1
                $failures[0].FullyQualifiedErrorId | Should -Be 'NotFileSystemPath,Dare.PowerShell.ImportSafetensorsCommand'
                $failures[0].CategoryInfo.Category | Should -Be 'InvalidArgument'
                $failures[0].Exception.Message | Should -BeLike "*$path*"
            }
        }
    }

    Context 'Bad input' {
        BeforeAll {
            # Returns the single ErrorRecord Import-Safetensors writes for $Path (and checks it wrote no object).
            function Get-ImportError([string] $Path) {
                $failures = $null
                Import-Safetensors -LiteralPath $Path -ErrorVariable failures -ErrorAction SilentlyContinue | Should -BeNullOrEmpty
                $failures.Count | Should -Be 1
                $failures[0]
            }
        }

        It 'reports a missing path as PathNotFound (ObjectNotFound), naming it' {
            $record = Get-ImportError (Join-Path $TestDrive 'no-such-model')
            $record.FullyQualifiedErrorId | Should -Be 'PathNotFound,Dare.PowerShell.ImportSafetensorsCommand'
            $record.CategoryInfo.Category | Should -Be 'ObjectNotFound'
            $record.Exception.Message | Should -BeLike '*no-such-model*'
        }

        It 'reports a file shorter than the 8-byte length prefix as SafetensorsFileTooShort (InvalidData), naming it' {
            $record = Get-ImportError $tooShort
            $record.FullyQualifiedErrorId | Should -BeLike 'SafetensorsFileTooShort,*'
            $record.CategoryInfo.Category | Should -Be 'InvalidData'
            $record.Exception.Message | Should -BeLike "*$tooShort*"
            $record.TargetObject | Should -Be $tooShort
        }

        It 'reports a truncated file as SafetensorsOffsetsInvalid, naming the file and a tensor past the end' {
            $record = Get-ImportError $truncated
            $record.FullyQualifiedErrorId | Should -BeLike 'SafetensorsOffsetsInvalid,*'
            $record.CategoryInfo.Category | Should -Be 'InvalidData'
            $record.Exception.Message | Should -BeLike "*$truncated*"
            $record.Exception.TensorName | Should -Not -BeNullOrEmpty
        }

        It 'reports a header that is not JSON as SafetensorsHeaderInvalid, naming the file' {
            $record = Get-ImportError $notJson
            $record.FullyQualifiedErrorId | Should -BeLike 'SafetensorsHeaderInvalid,*'
            $record.CategoryInfo.Category | Should -Be 'InvalidData'
            $record.Exception.Message | Should -BeLike "*$notJson*"
        }

        It 'reports a folder without safetensors files as NoSafetensorsFound (ObjectNotFound), naming it' {
            $record = Get-ImportError $empty
            $record.FullyQualifiedErrorId | Should -BeLike 'NoSafetensorsFound,*'
            $record.CategoryInfo.Category | Should -Be 'ObjectNotFound'
            $record.Exception.Message | Should -BeLike "*$empty*"
        }

        It 'writes non-terminating errors and goes on with the other inputs' {
            $checkpoints = Import-Safetensors -LiteralPath $notJson, $single, $empty -ErrorVariable failures -ErrorAction SilentlyContinue
            @($checkpoints).Count | Should -Be 1
            $checkpoints.Name | Should -Be 'single'
            $failures.Count | Should -Be 2
        }

        It 'stops at the first bad input with -ErrorAction Stop' {
            { Import-Safetensors -LiteralPath $notJson, $single -ErrorAction Stop } | Should -Throw -ErrorId 'SafetensorsHeaderInvalid,Dare.PowerShell.ImportSafetensorsCommand'
        }
    }
}
