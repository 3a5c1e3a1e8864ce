#!/usr/bin/env pwsh
<#
.SYNOPSIS
The one entry point for building, testing and demonstrating Dare.

.DESCRIPTION
  Build  Lays out an importable module at out/Dare (every managed and native dependency copied flat).
  Test   Builds and packs, runs the xunit engine tests and the Pester cmdlet tests, prints "N passed, N failed".
  Demo   Builds, generates small Hugging Face style checkpoints and runs a real DARE merge through the cmdlets.
  Package Builds, then writes out/Dare.<version>.nupkg: a PowerShell Gallery-style package of the module (libtorch
         included), made by PSResourceGet's Publish-PSResource into a temporary local repository.
  Bench  Builds and runs the speed and memory benchmark (by hand; not part of Test).
  Clean  Removes build output.

.EXAMPLE
dotnet tool restore && dotnet pwsh ./build.ps1 Test
#>
[CmdletBinding()]
param(
    [Parameter(Position = 0)]
    [ValidateSet('Build', 'Test', 'Package', 'Demo', 'Bench', 'Clean')]
    [string] $Task = 'Build',

    # Build against TorchSharp-cuda-linux instead of TorchSharp-cpu.
    [switch] $Cuda,

    [ValidateSet('Release', 'Debug')]
    [string] $Configuration = 'Release',

    # Bench only: which checkpoint sizes to measure; 'cold' is the beyond-RAM set from a dropped page cache (~31 GB
    # of inputs, root only; tests/bench/Invoke-ColdBenchmark.ps1), measured only when named.
    [ValidateSet('small', 'medium', 'large', 'cold')]
    [string[]] $BenchSize = @('small', 'medium', 'large')
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
$root = $PSScriptRoot
$moduleDir = Join-Path $root 'out/Dare'
. (Join-Path $root 'build/NativeCompat.ps1')

function Invoke-Native([string] $What, [scriptblock] $Command) {
    & $Command | Out-Host
    if ($LASTEXITCODE) { throw "$What failed (exit code $LASTEXITCODE)." }
}

# The pwsh that runs this script, as a command line usable for child processes (works for the .NET tool too).
function Get-PwshCommand {
    $process = [Environment]::ProcessPath
    if ([IO.Path]::GetFileNameWithoutExtension($process) -eq 'dotnet') { return @($process, (Join-Path $PSHOME 'pwsh.dll')) }
    return @($process)
}

function Get-RuntimeIdentifier {
    $arch = [Runtime.InteropServices.RuntimeInformation]::OSArchitecture.ToString().ToLowerInvariant()
    if ($IsWindows) { return "win-$arch" }
    if ($IsMacOS) { return "osx-$arch" }
    return "linux-$arch"
}

function Invoke-Build {
    $cudaProperty = "-p:DareCuda=$($Cuda.IsPresent.ToString().ToLowerInvariant())"
    if ($Cuda) {
        Write-Host 'Restoring the CUDA build of TorchSharp (TorchSharp-cuda-linux)...'
        & dotnet restore (Join-Path $root 'src/Dare.PowerShell/Dare.PowerShell.csproj') -r (Get-RuntimeIdentifier) $cudaProperty -v quiet
        if ($LASTEXITCODE) {
            throw "Build -Cuda: the package TorchSharp-cuda-linux 0.107.0 (and its libtorch-cuda dependencies) could not be restored from the configured NuGet sources. Add a source that has them, or build without -Cuda for the CPU engine."
        }
    }
    if (Test-Path $moduleDir) { Remove-Item -Recurse -Force $moduleDir }
    $publishDir = Join-Path $root 'out/publish'
    if (Test-Path $publishDir) { Remove-Item -Recurse -Force $publishDir }
    Write-Host "Building the Dare module into $moduleDir ($Configuration$(if ($Cuda) { ', CUDA' }))..."
    Invoke-Native 'dotnet publish' {
        dotnet publish (Join-Path $root 'src/Dare.PowerShell/Dare.PowerShell.csproj') -c $Configuration `
            -r (Get-RuntimeIdentifier) --self-contained false -o $publishDir $cudaProperty -nologo -v quiet
    }
    # Unused libtorch test and Python-binding libraries only add weight.
    Get-ChildItem $publishDir -Filter '*.so*' | Where-Object Name -match '^lib(torch_python|jitbackend_test|torchbind_test|backend_with_compiler|aoti_custom_ops|nnapi_backend)\.so' | Remove-Item
    Remove-Item (Join-Path $publishDir '*.pdb'), (Join-Path $publishDir '*.deps.json') -ErrorAction Ignore
    # Only the loader and the cmdlet assembly sit in the module folder (default load context); the engine, TorchSharp,
    # YamlDotNet and the native libraries go to dependencies/, which src/Dare.Loader loads into Dare's own load context.
    $dependencies = Join-Path $moduleDir 'dependencies'
    New-Item -ItemType Directory -Force $dependencies | Out-Null
    Move-Item (Join-Path $publishDir 'Dare.Loader.dll'), (Join-Path $publishDir 'Dare.PowerShell.dll') $moduleDir
    Get-ChildItem $publishDir | Move-Item -Destination $dependencies
    Remove-Item $publishDir
    Copy-Item (Join-Path $root 'Dare.psd1'), (Join-Path $root 'LICENSE') $moduleDir
    Copy-Item (Join-Path $root 'src/Dare.PowerShell/Dare.Format.ps1xml') $moduleDir
    # Before the help: Build-Help imports the built module in a child pwsh.
    Install-TorchSharpNativeCompat -Directory $dependencies
    Build-Help -Destination (Join-Path $moduleDir 'en-US/Dare.PowerShell.dll-Help.xml')
    Write-Host "Built $moduleDir"
}

# Packs out/Dare into out/Dare.<version>.nupkg with PSResourceGet (ships with PowerShell 7.4+): Publish-PSResource to
# a temporary folder repository, in a child pwsh whose home is a temporary folder, so that the repository registration
# never touches the user's PSResourceGet settings.
function Invoke-Package {
    $version = (Import-PowerShellDataFile (Join-Path $moduleDir 'Dare.psd1')).ModuleVersion
    $package = Join-Path $root "out/Dare.$version.nupkg"
    $scratch = Join-Path $root 'out/package-scratch'
    if (Test-Path $scratch) { Remove-Item -Recurse -Force $scratch }
    $repository = Join-Path $scratch 'repository'
    # .NET reports a missing ~/.local/share or ~/.config as "", and PSResourceGet and NuGet would then write their
    # settings to the cwd.
    New-Item -ItemType Directory $repository, (Join-Path $scratch '.local/share'), (Join-Path $scratch '.config') | Out-Null
    $script = @"
`$ErrorActionPreference = 'Stop'
Register-PSResourceRepository -Name DareBuild -Uri '$repository' -Trusted
Publish-PSResource -Path '$moduleDir' -Repository DareBuild -SkipDependenciesCheck
"@
    Write-Host "Packing $moduleDir ..."
    $saved = $env:HOME, $env:XDG_DATA_HOME
    $clock = [Diagnostics.Stopwatch]::StartNew()
    try {
        $env:HOME = $scratch; $env:XDG_DATA_HOME = Join-Path $scratch '.local/share'
        $pwsh = Get-PwshCommand
        Invoke-Native 'Publish-PSResource' { & $pwsh[0] @($pwsh | Select-Object -Skip 1) -NoProfile -NonInteractive -Command $script }
    }
    finally { $env:HOME, $env:XDG_DATA_HOME = $saved }
    Move-Item (Join-Path $repository "Dare.$version.nupkg") $package -Force
    Remove-Item -Recurse -Force $scratch
    Write-Host ("Packed $package ({0:N0} MB in {1:N0} s)" -f ((Get-Item $package).Length / 1MB), $clock.Elapsed.TotalSeconds)
}

# Cmdlet help: one MAML <command:command> fragment per cmdlet in src/Dare.PowerShell/help/<Verb-Noun>.xml holds
# the prose; the syntax and each parameter's type, position, pipeline input, aliases, wildcards, default and the
# online link are generated from the compiled cmdlets (read in a child pwsh, so this process never loads the
# module), then all are joined into the single help file PowerShell reads for the cmdlet assembly. The about_Dare
# topic is copied beside it.
function Build-Help([string] $Destination) {
    . (Join-Path $root 'build/HelpBuilder.ps1')
    $helpSource = Join-Path $root 'src/Dare.PowerShell/help'
    $manifest = Join-Path (Split-Path (Split-Path $Destination)) 'Dare.psd1'
    $pwsh = Get-PwshCommand
    $json = & $pwsh[0] @($pwsh | Select-Object -Skip 1) -NoProfile -NonInteractive -File (Join-Path $root 'build/Get-CmdletHelpMetadata.ps1') -ModuleManifest $manifest
    if ($LASTEXITCODE) { throw "Reading the cmdlets' parameter metadata failed (exit code $LASTEXITCODE): $json" }
    $metadata = @{}
    foreach ($command in ($json | Out-String | ConvertFrom-Json)) { $metadata[$command.Name] = $command }

    $fragments = Get-ChildItem $helpSource -Filter '*.xml' | Sort-Object Name
    $missing = $metadata.Keys | Where-Object { $_ -notin $fragments.BaseName }
    if ($missing) { throw "No help fragment in $helpSource for: $($missing -join ', ')." }
    $body = foreach ($fragment in $fragments) {
        $text = Get-Content -Raw $fragment.FullName
        try { Complete-HelpFragment $text $metadata[$fragment.BaseName] $fragment.Name }
        catch { throw "Help fragment $($fragment.Name): $_" }
    }
    New-Item -ItemType Directory -Force (Split-Path $Destination) | Out-Null
    @(
        '<?xml version="1.0" encoding="utf-8"?>'
        '<helpItems schema="maml" xmlns="http://msh" xmlns:maml="http://schemas.microsoft.com/maml/2004/10" xmlns:command="http://schemas.microsoft.com/maml/dev/command/2004/10" xmlns:dev="http://schemas.microsoft.com/maml/dev/2004/10">'
        $body
        '</helpItems>'
    ) | Set-Content -LiteralPath $Destination -Encoding utf8
    Copy-Item (Join-Path $helpSource 'about_Dare.help.txt') (Split-Path $Destination)
}

function Get-PesterModulePath {
    $tools = Join-Path $root 'tests/tools/Tools.csproj'
    Invoke-Native 'restoring test tools' { dotnet restore $tools -v quiet -nologo }
    $package = (& dotnet msbuild $tools -getProperty:PkgPester -nologo).Trim()
    $manifest = Join-Path $package 'tools/Pester.psd1'
    if (-not (Test-Path $manifest)) { throw "Pester was restored but $manifest is missing." }
    return $manifest
}

# A failure's name and message on one line, short enough for a log's tail.
function Get-OneLine([string] $Text) {
    $line = ("$Text" -split '\r?\n' | ForEach-Object Trim | Where-Object { $_ }) -join ' | '
    if ($line.Length -gt 600) { $line.Substring(0, 600) + '...' } else { $line }
}

function Invoke-EngineTests {
    $project = Join-Path $root 'tests/Dare.Engine.Tests/Dare.Engine.Tests.csproj'
    Invoke-Native 'building engine tests' { dotnet build $project -c $Configuration -nologo -v quiet }
    $bin = Join-Path $root "tests/Dare.Engine.Tests/bin/$Configuration/net10.0"
    Install-TorchSharpNativeCompat -Directory (Join-Path $bin "runtimes/$(Get-RuntimeIdentifier)/native") -Quiet
    $results = Join-Path $root 'out/test-results'
    $trx = Join-Path $results 'engine.trx'
    Remove-Item $trx -ErrorAction Ignore
    & dotnet test $project -c $Configuration --no-build -nologo --logger "trx;LogFileName=$trx" --logger 'console;verbosity=normal' | Out-Host
    if (-not (Test-Path $trx)) { throw 'xunit produced no results file.' }
    $run = ([xml](Get-Content -Raw $trx)).TestRun
    $counters = $run.ResultSummary.Counters
    $failures = @($run.Results.UnitTestResult | Where-Object outcome -notin 'Passed', 'NotExecuted' | ForEach-Object {
        "$($_.testName): $($_.Output.ErrorInfo.Message)" })
    return [pscustomobject]@{ Passed = [int]$counters.passed; Failed = [int]$counters.failed + [int]$counters.error; Failures = $failures }
}

function Invoke-PesterTests {
    $pester = Get-PesterModulePath
    $results = Join-Path $root 'out/test-results/pester.json'
    $script = @"
`$ErrorActionPreference = 'Stop'
Import-Module '$pester'
`$config = New-PesterConfiguration
`$config.Run.Path = '$(Join-Path $root 'tests')'
`$config.Run.PassThru = `$true
`$config.Output.Verbosity = 'Detailed'
`$result = Invoke-Pester -Configuration `$config
`$failures = @(@(`$result.Failed) + @(`$result.FailedBlocks) + @(`$result.FailedContainers) | ForEach-Object {
    "`$(if (`$_.ExpandedPath) { `$_.ExpandedPath } else { `$_.Name }): `$(@(`$_.ErrorRecord)[0].Exception.Message)" })
@{ Passed = `$result.PassedCount; Failed = `$result.FailedCount + `$result.FailedBlocksCount + `$result.FailedContainersCount; Failures = `$failures } |
    ConvertTo-Json | Set-Content '$results'
"@
    Remove-Item $results -ErrorAction Ignore
    $pwsh = Get-PwshCommand
    & $pwsh[0] @($pwsh | Select-Object -Skip 1) -NoProfile -NonInteractive -Command $script | Out-Host
    if (-not (Test-Path $results)) { return [pscustomobject]@{ Passed = 0; Failed = 1; Failures = @('Pester wrote no results file') } }
    return Get-Content -Raw $results | ConvertFrom-Json
}

switch ($Task) {
    'Clean' {
        foreach ($dir in @('out') + (Get-ChildItem $root -Recurse -Directory -Include bin, obj | ForEach-Object FullName)) {
            $path = if ([IO.Path]::IsPathRooted($dir)) { $dir } else { Join-Path $root $dir }
            if (Test-Path $path) { Remove-Item -Recurse -Force $path; Write-Host "Removed $path" }
        }
    }
    'Build' { Invoke-Build }
    'Package' { Invoke-Build; Invoke-Package }
    'Test' {
        Invoke-Build
        Invoke-Package   # tests/Package.Tests.ps1 installs it
        New-Item -ItemType Directory -Force (Join-Path $root 'out/test-results') | Out-Null
        $engine = Invoke-EngineTests
        $cmdlets = Invoke-PesterTests
        # Repeated at the end, where a log's tail shows them, each on one line.
        foreach ($failure in @($engine.Failures) + @($cmdlets.Failures) | Where-Object { $_ }) { Write-Host "FAILED $(Get-OneLine $failure)" }
        Write-Host "xunit: $($engine.Passed) passed, $($engine.Failed) failed; Pester: $($cmdlets.Passed) passed, $($cmdlets.Failed) failed"
        $passed = $engine.Passed + $cmdlets.Passed
        $failed = $engine.Failed + $cmdlets.Failed
        Write-Host "$passed passed, $failed failed"
        if ($failed -gt 0 -or $passed -eq 0) { exit 1 }
    }
    'Demo' {
        Invoke-Build
        $pwsh = Get-PwshCommand
        & $pwsh[0] @($pwsh | Select-Object -Skip 1) -NoProfile -NonInteractive -File (Join-Path $root 'examples/demo.ps1')
        if ($LASTEXITCODE) { exit $LASTEXITCODE }
    }
    'Bench' {
        Invoke-Build
        # A tensor above 2^31 bytes and elements: too big for the test suite, so it runs with the benchmark.
        $largeTensor = Join-Path $root 'tests/bench/LargeTensor/LargeTensor.csproj'
        Invoke-Native 'building the large-tensor check' { dotnet build $largeTensor -c $Configuration -nologo -v quiet }
        $largeBin = Join-Path $root "tests/bench/LargeTensor/bin/$Configuration/net10.0"
        Install-TorchSharpNativeCompat -Directory (Join-Path $largeBin "runtimes/$(Get-RuntimeIdentifier)/native") -Quiet
        Invoke-Native 'the large-tensor round trip' { dotnet (Join-Path $largeBin 'LargeTensor.dll') (Join-Path $root 'tests/bench/data/large-tensor') }
        $pwsh = Get-PwshCommand
        $warm = @($BenchSize | Where-Object { $_ -ne 'cold' })
        if ($warm) {
            & $pwsh[0] @($pwsh | Select-Object -Skip 1) -NoProfile -NonInteractive -File (Join-Path $root 'tests/bench/Invoke-Benchmark.ps1') -Size ($warm -join ',')
            if ($LASTEXITCODE) { exit $LASTEXITCODE }
        }
        if ($BenchSize -contains 'cold') {
            & $pwsh[0] @($pwsh | Select-Object -Skip 1) -NoProfile -NonInteractive -File (Join-Path $root 'tests/bench/Invoke-ColdBenchmark.ps1')
            if ($LASTEXITCODE) { exit $LASTEXITCODE }
        }
    }
}
