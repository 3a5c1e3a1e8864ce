# Every example in every cmdlet's help runs, as Get-Help shows it, against small generated checkpoints laid out
# under the names the examples use (./llama2-7b, ./wizardmath, ./finetunes/*, ...), so an example cannot rot.
BeforeDiscovery {
    . (Join-Path $PSScriptRoot 'TestHelpers.ps1')
    Import-DareTestModule
    $manifest = Import-PowerShellDataFile (Join-Path $PSScriptRoot '../Dare.psd1')
    $script:examples = foreach ($name in $manifest.CmdletsToExport | Sort-Object) {
        $number = 0
        foreach ($example in @((Get-Help $name -Examples).examples.example)) {
            @{ Cmdlet = $name; Number = ++$number; Code = ($example.code -join "`n") }
        }
    }
}

BeforeAll {
    . (Join-Path $PSScriptRoot 'TestHelpers.ps1')
    Import-DareTestModule

    # Models under every name the examples use, generated once; each cmdlet's examples run in a folder of their
    # own that links to them, so one cmdlet's outputs (./merged, ...) never meet another's.
    $script:Fixture = Join-Path $TestDrive 'fixture'
    $size = @{ HiddenSize = 32; Layers = 2; VocabSize = 64 }
    $base = New-SyntheticCheckpoint (Join-Path $Fixture 'llama2-7b') @size
    $seed = 10
    foreach ($name in 'wizardmath', 'codellama', 'llama2-chat', 'finetunes/wizardmath', 'finetunes/codellama', 'models/wizardmath', 'models/codellama') {
        $null = New-SyntheticCheckpoint (Join-Path $Fixture $name) -BaseModel $base -Seed ($seed++)
    }
    $null = New-SyntheticCheckpoint -LiteralPath (Join-Path $Fixture 'runs/[v2] wizardmath') -BaseModel $base -Seed ($seed++)
    # LoRA adapters of the base, extracted from two of the fine-tunes.
    foreach ($pair in @(@('lora-math', 'wizardmath'), @('lora-code', 'codellama'))) {
        $null = Get-TaskVector $base (Join-Path $Fixture $pair[1]) | Export-LoraAdapter (Join-Path $Fixture $pair[0]) -Rank 4
    }
    $other = New-SyntheticCheckpoint (Join-Path $Fixture 'base') @size -Seed 2
    foreach ($name in 'math', 'code', 'chat', 'a', 'b') { $null = New-SyntheticCheckpoint (Join-Path $Fixture $name) -BaseModel $other -Seed ($seed++) }
    Copy-Item (Join-Path $PSScriptRoot '../examples/batch.yml') (Join-Path $Fixture 'batch.yml')
    New-Item -ItemType Directory (Join-Path $Fixture 'adapters') | Out-Null
    Copy-Item (Join-Path $Fixture 'wizardmath/model.safetensors') (Join-Path $Fixture 'adapters/wizardmath.safetensors')
    Copy-Item (Join-Path $Fixture 'codellama/model.safetensors') (Join-Path $Fixture 'adapters/codellama.safetensors')

    function New-ExampleFolder([string] $Cmdlet) {
        $folder = Join-Path $TestDrive "run-$Cmdlet"
        if (-not (Test-Path -LiteralPath $folder)) {
            New-Item -ItemType Directory $folder | Out-Null
            # New-SyntheticCheckpoint's examples make their own ./base, ./math and ./code.
            if ($Cmdlet -ne 'New-SyntheticCheckpoint') {
                foreach ($item in Get-ChildItem -LiteralPath $Fixture) {
                    New-Item -ItemType SymbolicLink -Path (Join-Path $folder $item.Name) -Target $item.FullName | Out-Null
                }
            }
        }
        $folder
    }
}

# One Describe for all: Pester empties TestDrive of what a Describe created when it ends, and a later example of a
# cmdlet may use what an earlier one wrote.
Describe 'Help examples' {
    It 'example <Number> of <Cmdlet> runs without an error and returns output (or, with -WhatIf, writes nothing)' -ForEach $examples {
        # Examples of one cmdlet share a folder and run in order.
        $folder = New-ExampleFolder $Cmdlet
        $before = @(Get-ChildItem -LiteralPath $folder -Recurse -Force | ForEach-Object FullName)
        Push-Location -LiteralPath $folder
        try {
            $output = & {
                $ErrorActionPreference = 'Stop'
                & ([scriptblock]::Create($Code)) 3>$null 6>$null
            }
        }
        finally { Pop-Location }
        if ($Code -match '-WhatIf') {
            $after = @(Get-ChildItem -LiteralPath $folder -Recurse -Force | ForEach-Object FullName)
            $after | Where-Object { $_ -notin $before -and $_ -notlike '*.yml' } | Should -BeNullOrEmpty
        }
        else {
            @($output).Count | Should -BeGreaterThan 0 -Because "the example should show something:`n$Code"
        }
    }
}
