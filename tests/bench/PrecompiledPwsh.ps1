# A precompiled copy of the running pwsh, for the bench (dot-sourced by Invoke-Benchmark.ps1).
#
# PowerShell's release packages ship ReadyToRun assemblies (compiled ahead of time); the `dotnet tool` package this
# project installs ships IL only, so every start JIT-compiles ~5,500 of pwsh's own methods. To show what a user with an
# installed pwsh sees, the bench compiles the assemblies a merge process loads from this pwsh with crossgen2 (restored
# from NuGet for the running .NET version) into a copy under tests/bench/data/, once, and runs the medium whole
# processes on both.

# Whether an assembly carries ReadyToRun code (a managed native header).
function Test-ReadyToRun([string] $Path) {
    $stream = [IO.File]::OpenRead($Path)
    try {
        $reader = [Reflection.PortableExecutable.PEReader]::new($stream)
        try { return $reader.PEHeaders.CorHeader.ManagedNativeHeaderDirectory.Size -gt 0 } finally { $reader.Dispose() }
    }
    finally { $stream.Dispose() }
}

# The command line of a precompiled pwsh and what it is: the running one when it is precompiled already, else a copy
# compiled here (cached under $DataRoot). Returns an object with Command ($null when none could be made) and Note.
function Get-PrecompiledPwsh([string] $DataRoot, [string[]] $Pwsh) {
    # The assemblies a merge process loads from $PSHOME (pwsh.dll is the host; the rest hold the cmdlets and engine).
    $names = 'pwsh', 'System.Management.Automation', 'Microsoft.PowerShell.ConsoleHost', 'Microsoft.PowerShell.Commands.Utility',
    'Microsoft.PowerShell.Commands.Management', 'Microsoft.PowerShell.Security', 'Microsoft.PowerShell.SDK', 'Microsoft.ApplicationInsights', 'Newtonsoft.Json'
    if (Test-ReadyToRun (Join-Path $PSHOME 'System.Management.Automation.dll')) {
        return [pscustomobject]@{ Command = $Pwsh; Note = 'this pwsh is precompiled already' }
    }
    $dotnet = $Pwsh[0]
    if ([IO.Path]::GetFileNameWithoutExtension($dotnet) -ne 'dotnet' -or -not $IsLinux) {
        return [pscustomobject]@{ Command = $null; Note = 'not measured: the copy is made only for a pwsh that dotnet runs on Linux' }
    }
    $runtime = [Environment]::Version.ToString()
    $rid = 'linux-' + "$([Runtime.InteropServices.RuntimeInformation]::ProcessArchitecture)".ToLowerInvariant()
    $folder = Join-Path $DataRoot "pwsh-$($PSVersionTable.PSVersion)-net$runtime-r2r"
    $marker = Join-Path $folder 'complete.txt'
    $command = @($dotnet, (Join-Path $folder 'pwsh.dll'))
    $note = "the $($names.Count) assemblies a merge loads from it compiled ReadyToRun (crossgen2 $runtime), as PowerShell's release packages ship them"
    if (Test-Path $marker) { return [pscustomobject]@{ Command = $command; Note = $note } }

    Write-Host "Compiling a ReadyToRun copy of pwsh $($PSVersionTable.PSVersion) into $folder (once)..."
    if (Test-Path $folder) { Remove-Item -Recurse -Force $folder }
    Copy-Item -Recurse $PSHOME $folder
    # crossgen2 comes as a NuGet package matching the runtime; a project that only downloads it brings it into the
    # cache. It is restored outside the repository, whose Directory.*.props would apply to it.
    $restore = Join-Path ([IO.Path]::GetTempPath()) "dare-crossgen2-$PID"
    New-Item -ItemType Directory -Force $restore | Out-Null
    try {
        $package = "Microsoft.NETCore.App.Crossgen2.$rid"
        Set-Content (Join-Path $restore 'restore.csproj') @"
<Project Sdk="Microsoft.NET.Sdk">
  <PropertyGroup><TargetFramework>net$($runtime.Split('.')[0]).0</TargetFramework></PropertyGroup>
  <ItemGroup><PackageDownload Include="$package" Version="[$runtime]" /></ItemGroup>
</Project>
"@
        $output = & $dotnet restore (Join-Path $restore 'restore.csproj') 2>&1
        if ($LASTEXITCODE) { return [pscustomobject]@{ Command = $null; Note = "not measured: $package $runtime could not be restored ($(@($output)[-1]))" } }
        $packages = ((& $dotnet nuget locals global-packages --list) -replace '^global-packages:\s*', '').Trim()
        $crossgen = Join-Path $packages "$($package.ToLowerInvariant())/$runtime/tools/crossgen2"
        $framework = Split-Path ([object].Assembly.Location)
        foreach ($name in $names) {
            $compiled = Join-Path $restore "$name.dll"
            $output = & $crossgen (Join-Path $PSHOME "$name.dll") -o $compiled -r "$framework/*.dll" -r "$PSHOME/*.dll" --targetos linux --targetarch $rid.Split('-')[1] -O 2>&1
            if ($LASTEXITCODE) { return [pscustomobject]@{ Command = $null; Note = "not measured: crossgen2 failed on $name.dll ($(@($output)[-1]))" } }
            Move-Item -Force $compiled (Join-Path $folder "$name.dll")
        }
    }
    finally { Remove-Item -Recurse -Force $restore -ErrorAction Ignore }
    Set-Content $marker "pwsh $($PSVersionTable.PSVersion) from $PSHOME, crossgen2 $runtime"
    return [pscustomobject]@{ Command = $command; Note = $note }
}
