# Cmdlet tests drive the built module (out/Dare) in this child pwsh, as a user would.
BeforeAll {
    . (Join-Path $PSScriptRoot 'TestHelpers.ps1')
    . (Join-Path $PSScriptRoot 'SmallMerge.ps1')
    Import-DareTestModule
    $script:ModuleFolder = (Resolve-Path (Join-Path $PSScriptRoot '../out/Dare')).Path
    $script:Dependencies = Join-Path $ModuleFolder 'dependencies'

    # Load context name -> assembly versions, for the named assemblies loaded in this process.
    function Get-LoadedAssembly([string[]] $Name) {
        [AppDomain]::CurrentDomain.GetAssemblies() | Where-Object { $_.GetName().Name -in $Name } | ForEach-Object {
            [pscustomobject]@{
                Name     = $_.GetName().Name
                Version  = $_.GetName().Version.ToString()
                Context  = [Runtime.Loader.AssemblyLoadContext]::GetLoadContext($_).Name
                Location = $_.Location
            }
        }
    }
}

Describe 'The Dare module' {
    It 'imports from out/Dare and exports exactly the cmdlets its manifest lists' {
        $manifest = Import-PowerShellDataFile (Join-Path $PSScriptRoot '../Dare.psd1')
        $exported = (Get-Command -Module Dare).Name | Sort-Object
        $exported | Should -Be ($manifest.CmdletsToExport | Sort-Object)
        (Get-Module Dare).ModuleBase | Should -Be $ModuleFolder
    }

    It 'merges on the CPU kernels without loading libtorch, and loads it for a command that needs torch' {
        # A fresh process (this one has long loaded libtorch); the checkpoints are made here, with torch.
        $models = Join-Path $TestDrive 'no-torch'
        $base = New-SyntheticCheckpoint (Join-Path $models 'base') -HiddenSize 32 -Layers 2 -VocabSize 64 -MaxShardSize 20KB
        $tunes = 1, 2 | ForEach-Object { (New-SyntheticCheckpoint (Join-Path $models "ft$_") -BaseModel $base -Seed $_).Path }
        $lines = Invoke-InChildPwsh @"
`$WarningPreference = 'SilentlyContinue'
function Test-Libtorch { @([Diagnostics.Process]::GetCurrentProcess().Modules | Where-Object ModuleName -like 'libtorch_cpu*').Count -gt 0 }
Import-Module '$ModuleFolder/Dare.psd1'
"after import: `$(Test-Libtorch)"
`$v = Get-TaskVector -Base '$($base.Path)' -FineTuned '$($tunes[0])', '$($tunes[1])'
`$null = `$v | Invoke-DareDrop -DropRate 0.5 -Seed 1 | Merge-Linear | Export-Safetensors -Path '$models/linear' -DType float16
`$null = `$v | Merge-Ties -KeepRatio 0.3 | Export-Safetensors -Path '$models/ties'
"after merges: `$(Test-Libtorch)"
`$null = Get-DareEnvironment
"after Get-DareEnvironment: `$(Test-Libtorch)"
"@
        $lines | Should -Be @('after import: False', 'after merges: False', 'after Get-DareEnvironment: True')
        Join-Path $models 'linear/model.safetensors' | Should -Exist
        Join-Path $models 'ties/model.safetensors' | Should -Exist
    }

    It 'has a manifest that Test-ModuleManifest accepts, with the package metadata the Gallery shows' {
        $info = Test-ModuleManifest (Join-Path $ModuleFolder 'Dare.psd1') -ErrorAction Stop
        $info.PowerShellVersion | Should -Be ([version] '7.4')
        $info.CompatiblePSEditions | Should -Be @('Core')
        $info.Description | Should -Not -BeNullOrEmpty
        $info.Author | Should -Be 'Dare contributors'
        $info.ProjectUri | Should -Not -BeNullOrEmpty
        $info.LicenseUri | Should -Not -BeNullOrEmpty
        $info.ReleaseNotes | Should -Not -BeNullOrEmpty
        $info.Tags | Should -Contain 'DARE'
        Get-Content -Raw (Join-Path $ModuleFolder 'LICENSE') | Should -Match 'MIT License'
    }
}

Describe 'Dependency isolation' {
    It 'keeps only the loader and the cmdlet assembly in the module folder; everything else in dependencies/' {
        (Get-ChildItem $ModuleFolder -Filter '*.dll').Name | Sort-Object | Should -Be @('Dare.Loader.dll', 'Dare.PowerShell.dll')
        foreach ($file in 'Dare.Engine.dll', 'TorchSharp.dll', 'YamlDotNet.dll', 'libLibTorchSharp.so', 'libtorch_cpu.so') {
            Join-Path $Dependencies $file | Should -Exist
        }
    }

    It 'loads the engine, TorchSharp and YamlDotNet in the Dare load context, never in the default one' {
        $null = Get-DareEnvironment
        $loaded = @(Get-LoadedAssembly 'Dare.Engine', 'TorchSharp', 'YamlDotNet')
        ($loaded | Where-Object Name -eq 'Dare.Engine').Context | Should -Be 'Dare'
        ($loaded | Where-Object Name -eq 'TorchSharp').Context | Should -Be 'Dare'
        $loaded | Where-Object Context -ne 'Dare' | Should -BeNullOrEmpty
        $loaded | ForEach-Object { Split-Path $_.Location } | Select-Object -Unique | Should -Be $Dependencies
    }

    It 'keeps the engine types usable as type literals in scripts' {
        $environment = Get-DareEnvironment
        $environment | Should -BeOfType ([Dare.Engine.DareEnvironment])
        [Dare.Engine.Merge.ExportResult].Assembly | Should -Be $environment.GetType().Assembly
        [TorchSharp.torch].Assembly.Location | Should -Be (Join-Path $Dependencies 'TorchSharp.dll')
    }

    It 'runs a recipe in a session where another module already loaded a different YamlDotNet' {
        $tools = Join-Path $PSScriptRoot 'tools/Tools.csproj'
        $otherYaml = Join-Path (dotnet msbuild $tools -getProperty:PkgYamlDotNet -nologo).Trim() 'lib/net8.0/YamlDotNet.dll'
        $otherYaml | Should -Exist -Because 'tests/tools/Tools.csproj restores YamlDotNet 15.3.0 (run ./build.ps1 Test once)'
        $work = Join-Path $TestDrive 'yaml-clash'
        $prelude = @"
Add-Type -Path '$otherYaml'
Import-Module '$(Join-Path $ModuleFolder 'Dare.psd1')'
"@
        $report = @"
[AppDomain]::CurrentDomain.GetAssemblies() | Where-Object { `$_.GetName().Name -eq 'YamlDotNet' } |
    ForEach-Object { "yaml:`$([Runtime.Loader.AssemblyLoadContext]::GetLoadContext(`$_).Name):`$(`$_.GetName().Version)" }
"@
        $output = Invoke-InChildPwsh ((Get-SmallMergeScript $work $prelude) + "`n" + $report)
        $text = $output -join "`n"
        $text | Should -Match 'merged:' -Because $text
        $text | Should -Match 'result-type-matches:True'
        # Both YamlDotNets live side by side: 15 where the other module put it, 16 (ours) in Dare's context.
        @($output | Where-Object { $_ -like 'yaml:*' }) | Sort-Object | Should -Be @('yaml:Dare:16.0.0.0', 'yaml:Default:15.0.0.0')
        $check = Measure-SmallMergeError $work
        $check.Tensors | Should -BeGreaterThan 5
        $check.LargestDelta | Should -BeGreaterThan 1e-4
        $check.MaxError | Should -BeLessThan 1e-6
    }
}

Describe 'Get-DareEnvironment' {
    It 'initialises TorchSharp and reports versions, devices, folders and the native compat step' {
        $environment = Get-DareEnvironment
        $environment.TorchSharpVersion | Should -Be '0.107.0'
        $environment.LibTorchVersion | Should -Be '2.10.0'
        $environment.Devices | Should -Contain 'cpu'
        $environment.NativeCompat | Should -Match '^(applied|not needed)'
        $environment.ModuleDirectory | Should -Be $ModuleFolder
        $environment.LibraryDirectory | Should -Be $Dependencies
    }

    It 'loads libtorch from the module''s dependencies folder, not from a NuGet cache' {
        $null = Get-DareEnvironment
        $loaded = Get-Content /proc/self/maps | Where-Object { $_ -match 'lib(torch_cpu|LibTorchSharp)\.so' } | ForEach-Object { ($_ -split '\s+')[-1] } | Select-Object -Unique
        @($loaded).Count | Should -Be 2
        $loaded | ForEach-Object { Split-Path $_ } | Select-Object -Unique | Should -Be $Dependencies
    }
}
