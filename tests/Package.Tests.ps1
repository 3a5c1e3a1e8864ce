# A fresh machine's view: the module installed from its package, and the native compat step with no compiler tools.
# Each check runs a child pwsh outside the repository and verifies its merge against a recomputation from the files.
BeforeAll {
    . (Join-Path $PSScriptRoot 'TestHelpers.ps1')
    . (Join-Path $PSScriptRoot 'SmallMerge.ps1')
    $script:RepoRoot = (Resolve-Path (Join-Path $PSScriptRoot '..')).Path
    $script:ModuleFolder = Join-Path $RepoRoot 'out/Dare'
    $script:Version = (Import-PowerShellDataFile (Join-Path $RepoRoot 'Dare.psd1')).ModuleVersion

    # Runs $Script in a child pwsh with the given environment variables set, restoring them afterwards.
    function Invoke-InChildPwshWithEnvironment([string] $Script, [hashtable] $Environment) {
        $saved = @{}
        foreach ($name in $Environment.Keys) { $saved[$name] = [Environment]::GetEnvironmentVariable($name) }
        try {
            foreach ($name in $Environment.Keys) { [Environment]::SetEnvironmentVariable($name, $Environment[$name]) }
            Invoke-InChildPwsh $Script
        }
        finally {
            foreach ($name in $saved.Keys) { [Environment]::SetEnvironmentVariable($name, $saved[$name]) }
        }
    }
}

Describe 'The module package (./build.ps1 Package)' {
    BeforeAll {
        $script:Package = Join-Path $RepoRoot "out/Dare.$Version.nupkg"
        if (-not (Test-Path $Package)) { throw "$Package is missing: ./build.ps1 Test builds it before Pester (or run ./build.ps1 Package)." }
    }

    It 'is a NuGet package holding the manifest, the loader, the cmdlets and libtorch' {
        Add-Type -AssemblyName System.IO.Compression.FileSystem
        $zip = [IO.Compression.ZipFile]::OpenRead($Package)
        try { $entries = $zip.Entries.FullName } finally { $zip.Dispose() }
        foreach ($file in 'Dare.nuspec', 'Dare.psd1', 'LICENSE', 'Dare.Loader.dll', 'Dare.PowerShell.dll',
            'en-US/Dare.PowerShell.dll-Help.xml', 'dependencies/Dare.Engine.dll', 'dependencies/libLibTorchSharp.so', 'dependencies/libtorch_cpu.so') {
            $entries | Should -Contain $file
        }
        # libtorch (CPU) is a few hundred MB unpacked; the zip should be well under that and far above the managed code.
        (Get-Item $Package).Length / 1MB | Should -BeGreaterThan 50
        (Get-Item $Package).Length / 1MB | Should -BeLessThan 400
    }

    It 'installs with Install-PSResource from a local repository, imports by name outside the repository and merges' {
        $repository = Join-Path $TestDrive 'repository'
        $userHome = Join-Path $TestDrive 'home'
        # .NET reports a missing ~/.local/share or ~/.config as "", and PSResourceGet and NuGet would then write their
        # settings to the cwd.
        New-Item -ItemType Directory $repository, (Join-Path $userHome '.local/share'), (Join-Path $userHome '.config') | Out-Null
        New-Item -ItemType HardLink -Path (Join-Path $repository (Split-Path $Package -Leaf)) -Target $Package | Out-Null
        $work = Join-Path $TestDrive 'installed-merge'
        # A home of its own gives the child its own PSResourceGet repository list and user module folder (and a
        # PSModulePath computed afresh from them), so the test neither reads nor changes this machine's.
        $prelude = @"
Register-PSResourceRepository -Name DareTest -Uri '$repository' -Trusted
Install-PSResource -Name Dare -Repository DareTest -Scope CurrentUser -TrustRepository -Quiet
Import-Module Dare
"base:`$((Get-Module Dare).ModuleBase)"
"@
        $output = Invoke-InChildPwshWithEnvironment (Get-SmallMergeScript $work $prelude) @{
            HOME = $userHome; XDG_DATA_HOME = Join-Path $userHome '.local/share'; PSModulePath = $null
        }
        $text = $output -join "`n"
        $text | Should -Match 'merged:' -Because $text
        $installedBase = ($output | Where-Object { $_ -like 'base:*' }) -replace '^base:'
        $installedBase | Should -BeLike "$userHome/*"
        Join-Path $installedBase 'dependencies/libtorch_cpu.so' | Should -Exist
        Get-Content -Raw (Join-Path $userHome '.local/share/PSResourceGet/PSResourceRepository.xml') | Should -Match 'Name="DareTest"'
        Join-Path $TestDrive 'PSResourceGet' | Should -Not -Exist
        Join-Path $TestDrive 'NuGet' | Should -Not -Exist
        $text | Should -Match 'result-type-matches:True'
        $check = Measure-SmallMergeError $work
        $check.LargestDelta | Should -BeGreaterThan 1e-4
        $check.MaxError | Should -BeLessThan 1e-6
    }
}

Describe 'Native compat without gcc or patchelf' {
    It 'prepares a fresh copy of the NuGet libLibTorchSharp.so with only dotnet on PATH, and that copy merges' {
        # A module copy whose libLibTorchSharp.so is the untouched NuGet file (the other libraries are links).
        $nuget = ((dotnet nuget locals global-packages --list) -replace '^global-packages:\s*').Trim()
        $torchSharpVersion = (Get-Item (Join-Path $ModuleFolder 'dependencies/TorchSharp.dll')).VersionInfo.ProductVersion -replace '\+.*$'
        $original = Join-Path $nuget "torchsharp/$torchSharpVersion/runtimes/linux-x64/native/libLibTorchSharp.so"
        $original | Should -Exist
        $copy = Join-Path $TestDrive 'Dare'
        Copy-Item $ModuleFolder $copy -Recurse -Exclude '*.so*'
        foreach ($library in Get-ChildItem (Join-Path $ModuleFolder 'dependencies') -Filter '*.so*' | Where-Object Name -ne 'libLibTorchSharp.so') {
            New-Item -ItemType SymbolicLink -Path (Join-Path $copy "dependencies/$($library.Name)") -Target $library.FullName | Out-Null
        }
        Remove-Item (Join-Path $copy 'dependencies/native-compat.txt')
        Copy-Item $original (Join-Path $copy 'dependencies/libLibTorchSharp.so')

        # PATH holds one folder with a link to the dotnet host: no gcc, cc, patchelf, readelf or ldconfig.
        $bin = Join-Path $TestDrive 'bin'
        New-Item -ItemType Directory $bin | Out-Null
        $dotnet = (Get-Command dotnet -CommandType Application | Select-Object -First 1).Source
        New-Item -ItemType SymbolicLink -Path (Join-Path $bin 'dotnet') -Target $dotnet | Out-Null
        $prepare = @"
`$ErrorActionPreference = 'Stop'
"tools:`$(@(Get-Command gcc, cc, patchelf, readelf, ldconfig -CommandType Application -ErrorAction Ignore).Count)"
. '$(Join-Path $RepoRoot 'build/NativeCompat.ps1')'
Install-TorchSharpNativeCompat -Directory '$(Join-Path $copy 'dependencies')' -Quiet
"@
        $output = Invoke-InChildPwshWithEnvironment $prepare @{ PATH = $bin }
        $output | Should -Contain 'tools:0' -Because ($output -join "`n")
        $report = Get-Content -Raw (Join-Path $copy 'dependencies/native-compat.txt')
        $report | Should -Be (Get-Content -Raw (Join-Path $ModuleFolder 'dependencies/native-compat.txt')) -Because 'the same machine needs the same step'
        $patched = [IO.File]::ReadAllBytes((Join-Path $copy 'dependencies/libLibTorchSharp.so'))
        $pristine = [IO.File]::ReadAllBytes($original)
        $patched.Length | Should -Be $pristine.Length
        # Differing byte offsets: blocks compared whole first, bytes only inside blocks that differ.
        $block = 65536
        $changed = @(for ($start = 0; $start -lt $pristine.Length; $start += $block) {
                $length = [Math]::Min($block, $pristine.Length - $start)
                if ([Linq.Enumerable]::SequenceEqual[byte]([ArraySegment[byte]]::new($patched, $start, $length), [ArraySegment[byte]]::new($pristine, $start, $length))) { continue }
                for ($i = $start; $i -lt $start + $length; $i++) { if ($patched[$i] -ne $pristine[$i]) { $i } }
            })
        # Applied: one 16-bit flags field changes (VER_FLG_WEAK); not needed: the file stays as NuGet ships it.
        $changed.Count | Should -Be $(if ($report -like 'applied*') { 1 } else { 0 })

        $work = Join-Path $TestDrive 'compat-merge'
        $maps = "`n(Get-Content /proc/self/maps | Where-Object { `$_ -match 'libLibTorchSharp\.so' } | Select-Object -First 1) -replace '^.*\s(/\S+)$', 'native:`$1'"
        $output = Invoke-InChildPwshWithEnvironment ((Get-SmallMergeScript $work "Import-Module '$copy/Dare.psd1'") + $maps) @{ PATH = $bin }
        $text = $output -join "`n"
        $text | Should -Match 'merged:' -Because $text
        $output | Should -Contain "native:$copy/dependencies/libLibTorchSharp.so"
        $check = Measure-SmallMergeError $work
        $check.LargestDelta | Should -BeGreaterThan 1e-4
        $check.MaxError | Should -BeLessThan 1e-6
    }
}
