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

# ---------------------------------------------------------------------------------------------------------------
# A small, independent safetensors reader and writer (plain .NET, no Dare or TorchSharp code), so that tests check
# what the cmdlets wrote against the format itself.

# The parsed header of one .safetensors file: Header (ordered, as in the file), Metadata, DataStart.
function Read-SafetensorsHeader([string] $File) {
    $stream = [IO.File]::OpenRead($File)
    try {
        $reader = [IO.BinaryReader]::new($stream)
        $length = $reader.ReadUInt64()
        $header = [Text.Encoding]::UTF8.GetString($reader.ReadBytes([int] $length)) | ConvertFrom-Json -AsHashtable
        [pscustomobject]@{ File = $File; DataStart = 8 + [long] $length; Header = $header; Metadata = $header['__metadata__'] }
    }
    finally { $stream.Dispose() }
}

# The .safetensors file of a model (file, single-file folder or sharded folder) that holds tensor $Name.
function Get-SafetensorsFileOf([string] $Model, [string] $Name) {
    if (Test-Path -LiteralPath $Model -PathType Leaf) { return $Model }
    $index = Join-Path $Model 'model.safetensors.index.json'
    if (Test-Path -LiteralPath $index) {
        $shard = (Get-Content -Raw -LiteralPath $index | ConvertFrom-Json -AsHashtable).weight_map[$Name]
        if (-not $shard) { throw "'$index' does not list '$Name'." }
        return Join-Path $Model $shard
    }
    return Join-Path $Model 'model.safetensors'
}

# One tensor's raw entry: Name, DType, Shape, Bytes.
function Read-TensorBytes([string] $Model, [string] $Name) {
    $file = Get-SafetensorsFileOf $Model $Name
    $parsed = Read-SafetensorsHeader $file
    $entry = $parsed.Header[$Name]
    if (-not $entry) { throw "'$file' has no tensor '$Name'." }
    $begin, $end = $entry.data_offsets
    $bytes = [byte[]]::new($end - $begin)
    $stream = [IO.File]::OpenRead($file)
    try {
        $null = $stream.Seek($parsed.DataStart + $begin, 'Begin')
        $stream.ReadExactly($bytes, 0, $bytes.Length)
    }
    finally { $stream.Dispose() }
    [pscustomobject]@{ Name = $Name; DType = $entry.dtype; Shape = [long[]] @($entry.shape); Bytes = $bytes }
}

# One tensor's values as float[] (row-major), from F32, BF16 or F16 data.
function Read-TestTensor([string] $Model, [string] $Name) {
    $raw = Read-TensorBytes $Model $Name
    $bytes = $raw.Bytes
    switch ($raw.DType) {
        'F32' {
            $values = [float[]]::new($bytes.Length / 4)
            [Buffer]::BlockCopy($bytes, 0, $values, 0, $bytes.Length)
        }
        'BF16' {
            $values = [float[]]::new($bytes.Length / 2)
            for ($i = 0; $i -lt $values.Length; $i++) {
                $values[$i] = [BitConverter]::Int32BitsToSingle(([int] $bytes[2 * $i] -shl 16) -bor ([int] $bytes[2 * $i + 1] -shl 24))
            }
        }
        'F16' {
            $values = [float[]]::new($bytes.Length / 2)
            for ($i = 0; $i -lt $values.Length; $i++) { $values[$i] = [float] [BitConverter]::ToHalf($bytes, 2 * $i) }
        }
        default { throw "Read-TestTensor does not read $($raw.DType)." }
    }
    , $values
}

# Writes a .safetensors file from an ordered dictionary name -> @{ DType; Shape; Bytes } (header padded to 8 bytes).
function Write-TestSafetensors([string] $File, [System.Collections.IDictionary] $Tensors, [hashtable] $Metadata = @{ format = 'pt' }) {
    $header = [ordered]@{ '__metadata__' = $Metadata }
    $offset = 0L
    foreach ($name in $Tensors.Keys) {
        $tensor = $Tensors[$name]
        $header[$name] = [ordered]@{ dtype = $tensor.DType; shape = @($tensor.Shape); data_offsets = @($offset, ($offset + $tensor.Bytes.Length)) }
        $offset += $tensor.Bytes.Length
    }
    $json = $header | ConvertTo-Json -Depth 5 -Compress
    $json += ' ' * ((8 - [Text.Encoding]::UTF8.GetByteCount($json) % 8) % 8)
    $jsonBytes = [Text.Encoding]::UTF8.GetBytes($json)
    $stream = [IO.File]::Create($File)
    try {
        $stream.Write([BitConverter]::GetBytes([uint64] $jsonBytes.Length), 0, 8)
        $stream.Write($jsonBytes, 0, $jsonBytes.Length)
        foreach ($name in $Tensors.Keys) { $stream.Write($Tensors[$name].Bytes, 0, $Tensors[$name].Bytes.Length) }
    }
    finally { $stream.Dispose() }
}

# Copies a single-file model folder without some of its tensors (config.json included).
function Copy-ModelWithoutTensor([string] $Source, [string] $Destination, [string[]] $Exclude) {
    $file = Join-Path $Source 'model.safetensors'
    $tensors = [ordered]@{}
    foreach ($name in (Read-SafetensorsHeader $file).Header.Keys) {
        if ($name -eq '__metadata__' -or $name -in $Exclude) { continue }
        $raw = Read-TensorBytes $Source $name
        $tensors[$name] = @{ DType = $raw.DType; Shape = $raw.Shape; Bytes = $raw.Bytes }
    }
    New-Item -ItemType Directory -Force $Destination | Out-Null
    Write-TestSafetensors (Join-Path $Destination 'model.safetensors') $tensors
    Copy-Item (Join-Path $Source 'config.json') $Destination
}

# Names of the tensors in a model, in file order.
function Get-TestTensorNames([string] $Model) {
    (Import-Safetensors -LiteralPath $Model).Tensors.Name
}

# The largest |x| of a float[].
function Get-MaxAbs([float[]] $Values) {
    $max = 0.0
    foreach ($v in $Values) { $a = [Math]::Abs([double] $v); if ($a -gt $max) { $max = $a } }
    $max
}

# SHA-256 of every file in a folder, as name -> hash (sorted by name).
function Get-FolderHashes([string] $Folder) {
    $hashes = [ordered]@{}
    foreach ($file in Get-ChildItem -LiteralPath $Folder -File | Sort-Object Name) { $hashes[$file.Name] = (Get-FileHash -LiteralPath $file.FullName -Algorithm SHA256).Hash }
    $hashes
}

# Hidden temporary folders (.dare-XXXXXXXX) and their owner records the atomic writer leaves behind if it fails to clean up.
function Get-DareTempFolders([string] $Parent) {
    @(Get-ChildItem -LiteralPath $Parent -Force | Where-Object Name -like '.dare-*')
}

# Runs $Script (with the module imported) in a runspace of a child pwsh, waits until a Dare temporary folder appears in
# $WatchFolder, stops the pipeline as Ctrl+C does and returns { Completed (before the stop), State, StopSeconds }.
# A child process, because PowerShell has been seen to crash the whole process (InvalidRunspaceStateException on a
# thread-pool thread) when a runspace is disposed right after its pipeline was stopped; the Pester host must survive.
function Invoke-StoppedInChild([string] $Script, [string] $WatchFolder) {
    $manifest = Join-Path $script:RepoRoot 'out/Dare/Dare.psd1'
    $child = @"
`$ps = [powershell]::Create()
`$null = `$ps.AddScript(@'
Import-Module '$manifest'
$Script
'@)
`$handle = `$ps.BeginInvoke()
`$deadline = [DateTime]::UtcNow.AddSeconds(60)
while (-not (Get-ChildItem -LiteralPath '$WatchFolder' -Force | Where-Object Name -like '.dare-*') -and -not `$handle.IsCompleted -and [DateTime]::UtcNow -lt `$deadline) { Start-Sleep -Milliseconds 5 }
Start-Sleep -Milliseconds 50
`$completed = `$handle.IsCompleted
`$clock = [Diagnostics.Stopwatch]::StartNew()
`$ps.Stop()
[pscustomobject]@{ Completed = `$completed; State = "`$(`$ps.InvocationStateInfo.State)"; StopSeconds = `$clock.Elapsed.TotalSeconds } | ConvertTo-Json -Compress
"@
    $lines = Invoke-InChildPwsh $child
    $json = $lines | Where-Object { $_ -is [string] -and $_.StartsWith('{') } | Select-Object -Last 1
    if (-not $json) { throw "The child pwsh printed no result: $($lines -join "`n")" }
    $json | ConvertFrom-Json
}

# Runs $Script in a new runspace of this process (with the module imported) and returns its output, errors and
# progress records. Arguments are passed to the script block's param().
function Invoke-InRunspace([scriptblock] $Script, [object[]] $ArgumentList = @()) {
    $manifest = Join-Path $script:RepoRoot 'out/Dare/Dare.psd1'
    $ps = [powershell]::Create()
    try {
        $null = $ps.AddScript("Import-Module '$manifest'").AddStatement().AddScript($Script.ToString())
        foreach ($argument in $ArgumentList) { $null = $ps.AddArgument($argument) }
        $output = $ps.Invoke()
        [pscustomobject]@{ Output = $output; Errors = @($ps.Streams.Error); Progress = @($ps.Streams.Progress) }
    }
    finally { $ps.Dispose() }
}
