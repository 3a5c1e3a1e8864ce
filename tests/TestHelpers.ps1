# Shared helpers for the Pester suites. Dot-source from BeforeAll.

$script:RepoRoot = Resolve-Path (Join-Path $PSScriptRoot '..')

function Import-DareTestModule {
    $manifest = Join-Path $script:RepoRoot 'out/Dare/Dare.psd1'
    if (-not (Test-Path $manifest)) { throw "The module is not built; run ./build.ps1 Build first ($manifest missing)." }
    Import-Module $manifest -Force -ErrorAction Stop
}

# The command line for a fresh pwsh child process (works when pwsh runs as the dotnet tool).
function Get-PwshCommand {
    $process = [Environment]::ProcessPath
    if ([IO.Path]::GetFileNameWithoutExtension($process) -eq 'dotnet') { return @($process, (Join-Path $PSHOME 'pwsh.dll')) }
    return @($process)
}

# Runs a script block in a fresh pwsh (separate process) and returns its output lines.
function Invoke-InChildPwsh([string] $Script, [string] $WorkingDirectory = $TestDrive) {
    $pwsh = Get-PwshCommand
    Push-Location $WorkingDirectory
    try { & $pwsh[0] @($pwsh | Select-Object -Skip 1) -NoProfile -NonInteractive -Command $Script 2>&1 }
    finally { Pop-Location }
}
