# Helpers shared by the benchmark scripts (dot-sourced).

# The command line for a fresh pwsh (works when pwsh runs as the dotnet tool).
function Get-PwshCommand {
    $process = [Environment]::ProcessPath
    if ([IO.Path]::GetFileNameWithoutExtension($process) -eq 'dotnet') { return @($process, (Join-Path $PSHOME 'pwsh.dll')) }
    return @($process)
}

# The safetensors files of a data set (base, ft1, ft2, ft3), each model's in name order.
function Get-SetFiles([string] $SetDirectory) {
    foreach ($model in 'base', 'ft1', 'ft2', 'ft3') {
        Get-ChildItem (Join-Path $SetDirectory $model) -Filter '*.safetensors' | Sort-Object Name | ForEach-Object FullName
    }
}

function Get-Median([double[]] $Values) {
    $sorted = @($Values | Sort-Object)
    if ($sorted.Count % 2) { return $sorted[[int][math]::Floor($sorted.Count / 2)] }
    return ($sorted[$sorted.Count / 2 - 1] + $sorted[$sorted.Count / 2]) / 2
}

function Invoke-Shell([string] $Script, [string[]] $Arguments) {
    & /bin/sh -c $Script sh @Arguments
    if ($LASTEXITCODE) { throw "sh -c '$Script' failed (exit code $LASTEXITCODE)." }
}

# Wall, CPU (user + sys) and peak RSS from the output file of /usr/bin/time -v.
function Read-GnuTime([string] $Path) {
    $text = Get-Content -Raw $Path
    $field = { param($label) if ($text -match "$([regex]::Escape($label)):\s*(\S+)") { $Matches[1] } else { throw "'$label' missing in /usr/bin/time output: $text" } }
    $elapsed = 0.0
    foreach ($part in (& $field 'Elapsed (wall clock) time (h:mm:ss or m:ss)').Split(':')) { $elapsed = $elapsed * 60 + [double]$part }
    [pscustomobject]@{
        Wall = $elapsed
        Cpu = [double](& $field 'User time (seconds)') + [double](& $field 'System time (seconds)')
        PeakRssBytes = [long](& $field 'Maximum resident set size (kbytes)') * 1024
    }
}
