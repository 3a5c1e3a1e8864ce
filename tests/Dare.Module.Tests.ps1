# Cmdlet tests drive the built module (out/Dare) in this child pwsh, as a user would.
BeforeAll {
    . (Join-Path $PSScriptRoot 'TestHelpers.ps1')
    Import-DareTestModule
}

Describe 'The Dare module' {
    It 'imports from out/Dare and exports exactly the cmdlets its manifest lists' {
        $manifest = Import-PowerShellDataFile (Join-Path $PSScriptRoot '../Dare.psd1')
        $exported = (Get-Command -Module Dare).Name | Sort-Object
        $exported | Should -Be ($manifest.CmdletsToExport | Sort-Object)
        (Get-Module Dare).ModuleBase | Should -Be (Resolve-Path (Join-Path $PSScriptRoot '../out/Dare')).Path
    }
}

Describe 'Get-DareEnvironment' {
    It 'initialises TorchSharp and reports versions, devices and the native compat step' {
        $environment = Get-DareEnvironment
        $environment.TorchSharpVersion | Should -Be '0.107.0'
        $environment.LibTorchVersion | Should -Be '2.10.0'
        $environment.Devices | Should -Contain 'cpu'
        $environment.NativeCompat | Should -Match '^(applied|not needed)'
    }

    It 'loads libtorch from the module folder, not from a NuGet cache' {
        $null = Get-DareEnvironment
        $loaded = Get-Content /proc/self/maps | Where-Object { $_ -match 'libtorch_cpu\.so' } | ForEach-Object { ($_ -split '\s+')[-1] } | Select-Object -Unique
        $loaded | Should -Not -BeNullOrEmpty
        $loaded | ForEach-Object { Split-Path $_ } | Should -Be (Get-Module Dare).ModuleBase
    }
}
