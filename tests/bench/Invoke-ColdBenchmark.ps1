#!/usr/bin/env pwsh
<#
.SYNOPSIS
Merges whose inputs do not fit in memory, from a cold page cache, against the cold floor (run by hand, as root).

.DESCRIPTION
Generates once (cached in tests/bench/data/cold/, ~31 GB) a Llama-shaped bfloat16 base of ~8 GB (hidden 4096,
intermediate 11008, 18 layers, vocab 32000; 5 GB shards like real checkpoints) and three fine-tunes of it, so the
inputs exceed this machine's memory. Then, -Repeat times, interleaved:
- the cold floor: page cache dropped, every input read once to /dev/null (`dd bs=32M iflag=nocache`, which lets
  go of each block after reading it: twice as fast as `cat` here), then one model's bytes written and fsynced
  (`dd oflag=direct conv=fsync`, around the page cache as Export-Safetensors writes): the least any merge of
  these inputs has to do;
- each merge (DARE-linear, TIES, DARE-TIES as in Invoke-Benchmark.ps1), page cache dropped first, in a fresh pwsh
  under /usr/bin/time -v, exporting bfloat16 with its fsyncs; "dare-linear-page-cache" is DARE-linear with
  DARE_DIRECT_READS=0, reading through the page cache instead of past it, to compare the two read paths.
Reports medians, each merge's ratio to the median floor, peak RSS, and the targets (DARE-linear ≤ 1.15 × floor,
TIES and DARE-TIES ≤ 1.3 ×, peak RSS < 1 GB). Dropping the page cache needs root (/proc/sys/vm/drop_caches).

.EXAMPLE
./tests/bench/Invoke-ColdBenchmark.ps1 -Repeat 2
./tests/bench/Invoke-ColdBenchmark.ps1 -RemoveData     # measure, then delete the ~31 GB data set
#>
[CmdletBinding()]
param(
    [ValidateSet('dare-linear', 'dare-linear-page-cache', 'ties', 'dare-ties')] [string[]] $Method = @('dare-linear', 'dare-linear-page-cache', 'ties', 'dare-ties'),
    [ValidateRange(1, 10)] [int] $Repeat = 3,
    [ValidateRange(1, 80)] [int] $Layers = 18,
    [string] $Module,
    [switch] $RemoveData,
    [string] $OutFile
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
$root = Resolve-Path (Join-Path $PSScriptRoot '../..')
if (-not $Module) { $Module = Join-Path $root 'out/Dare/Dare.psd1' }
if (-not (Test-Path $Module)) { throw "The module is not built: $Module is missing. Run ./build.ps1 Build." }
if (-not $IsLinux) { throw 'The cold benchmark drops the Linux page cache; it runs on Linux only.' }
$dropCaches = '/proc/sys/vm/drop_caches'
try { [IO.File]::WriteAllText($dropCaches, '1') } catch { throw "Cannot write $dropCaches ($($_.Exception.Message)); run as root." }
$directory = Join-Path $PSScriptRoot 'data/cold'
$runs = Join-Path $PSScriptRoot 'runs'
New-Item -ItemType Directory -Force $runs | Out-Null
if (-not $OutFile) { $OutFile = Join-Path $runs 'cold-results.md' }
. (Join-Path $PSScriptRoot 'BenchCommon.ps1')
$pwsh = Get-PwshCommand
$targets = @{ 'dare-linear' = 1.15; 'dare-linear-page-cache' = 1.15; 'ties' = 1.3; 'dare-ties' = 1.3 }
$rssLimit = 1e9

function Clear-PageCache {
    Invoke-Shell 'sync'
    [IO.File]::WriteAllText($dropCaches, '3')
}

# The data set, unless its marker says it is complete with this shape.
$spec = [ordered]@{ HiddenSize = 4096; IntermediateSize = 11008; Layers = $Layers; VocabSize = 32000; MaxShardSize = '5GB' } | ConvertTo-Json -Compress
$marker = Join-Path $directory 'complete.json'
if (-not ((Test-Path $marker) -and (Get-Content -Raw $marker | ConvertFrom-Json).spec -eq $spec)) {
    if (Test-Path $directory) { Remove-Item -Recurse -Force $directory }
    New-Item -ItemType Directory -Force $directory | Out-Null
    Write-Host "Generating the cold data set in $directory (4 models of ~$([math]::Round((0.262 + 0.2024 * $Layers) * 2, 1)) GB)..."
    $clock = [Diagnostics.Stopwatch]::StartNew()
    $script = @"
`$ErrorActionPreference = 'Stop'
Import-Module '$Module'
Set-Location '$directory'
`$base = New-SyntheticCheckpoint ./base -HiddenSize 4096 -IntermediateSize 11008 -Layers $Layers -VocabSize 32000 -Seed 1 -MaxShardSize 5GB
foreach (`$i in 1..3) { `$null = New-SyntheticCheckpoint "./ft`$i" -BaseModel `$base -Seed (10 + `$i) -MaxShardSize 5GB }
"@
    & $pwsh[0] @($pwsh | Select-Object -Skip 1) -NoProfile -NonInteractive -Command $script | Out-Host
    if ($LASTEXITCODE) { throw "Generating the cold data set failed (exit code $LASTEXITCODE)." }
    [ordered]@{ spec = $spec; seconds = [math]::Round($clock.Elapsed.TotalSeconds) } | ConvertTo-Json | Set-Content $marker
}
$files = @(Get-SetFiles $directory)
$inputBytes = ($files | ForEach-Object { (Get-Item $_).Length } | Measure-Object -Sum).Sum
$modelBytes = (Get-ChildItem (Join-Path $directory 'ft1') -Filter '*.safetensors' | Measure-Object Length -Sum).Sum
$memoryBytes = [long](((Get-Content /proc/meminfo -TotalCount 1) -split '\s+')[1]) * 1024
Write-Host ('Inputs {0:0.0} GB (4 models), memory {1:0.0} GB{2}' -f ($inputBytes / 1e9), ($memoryBytes / 1e9), $(if ($inputBytes -le $memoryBytes) { ': the inputs fit in memory, so this is not beyond RAM (raise -Layers)' }))

# One floor sample: every input read once from a cold cache, then one model's bytes written and fsynced.
function Measure-ColdFloor {
    $copy = Join-Path $runs 'cold-floor.bin'
    Clear-PageCache
    $clock = [Diagnostics.Stopwatch]::StartNew()
    # dd with iflag=nocache drops what it read as it goes: on this VM the fastest way to read cold files (see README).
    Invoke-Shell 'for f in "$@"; do dd if="$f" of=/dev/null bs=32M iflag=nocache status=none || exit 1; done' $files
    $read = $clock.Elapsed.TotalSeconds
    $clock.Restart()
    # Around the page cache, as Export-Safetensors writes (O_DIRECT), then fsync.
    Invoke-Shell 'dd if=/dev/zero of="$1" bs=64M count="$2" oflag=direct conv=fsync status=none' @($copy, [string][math]::Ceiling($modelBytes / 64MB))
    $write = $clock.Elapsed.TotalSeconds
    Remove-Item $copy
    [pscustomobject]@{ Read = $read; Write = $write; Seconds = $read + $write }
}

function Measure-ColdMerge([string] $Name) {
    $output = Join-Path $runs "cold-$Name"
    $timeFile = "$output.time"
    if (Test-Path $output) { Remove-Item -Recurse -Force $output }
    Clear-PageCache
    $arguments = @($pwsh | Select-Object -Skip 1) + @('-NoProfile', '-NonInteractive', '-File', (Join-Path $PSScriptRoot 'Invoke-BenchMerge.ps1'),
        '-Method', ($Name -replace '-page-cache$'), '-Data', $directory, '-Output', $output, '-Module', $Module)
    $env:DARE_DIRECT_READS = if ($Name -like '*-page-cache') { '0' } else { $null }
    try { $lines = & /usr/bin/time -v -o $timeFile $pwsh[0] @arguments 2>&1 }
    finally { $env:DARE_DIRECT_READS = $null }
    if ($LASTEXITCODE) { throw "Merge $Name failed (exit code $LASTEXITCODE):`n$($lines -join "`n")" }
    $measured = Read-GnuTime $timeFile
    Remove-Item $timeFile, $output -Recurse -Force
    [pscustomobject]@{ Method = $Name; Wall = $measured.Wall; Cpu = $measured.Cpu; PeakRss = $measured.PeakRssBytes }
}

$floors = @(); $merges = @()
foreach ($r in 1..$Repeat) {
    $floor = Measure-ColdFloor
    $floors += $floor
    Write-Host ('run {0}: floor {1:0.0} s (read {2:0.0} s + write {3:0.0} s)' -f $r, $floor.Seconds, $floor.Read, $floor.Write)
    foreach ($m in $Method) {
        $merge = Measure-ColdMerge $m
        $merges += $merge
        Write-Host ('run {0}: {1} {2:0.0} s, CPU {3:0.0} s, peak RSS {4:0} MB' -f $r, $m, $merge.Wall, $merge.Cpu, ($merge.PeakRss / 1e6))
    }
}

$floorSeconds = Get-Median ($floors | ForEach-Object Seconds)
$report = [Collections.Generic.List[string]]::new()
$report.Add("# Cold benchmark ($(Get-Date -Format 'yyyy-MM-dd HH:mm'), $Repeat run(s), medians)")
$report.Add('')
$report.Add(('Inputs: base + 3 fine-tunes, {0:0.0} GB in all ({1:0.0} GB per model), machine memory {2:0.0} GB, {3} CPUs. Cold floor = every input read once from a dropped page cache (`dd iflag=nocache`) + `dd oflag=direct conv=fsync` of one model''s bytes: **{4:0.0} s** (read {5:0.0} s = {6:0.00} GB/s, write {7:0.0} s).' -f
        ($inputBytes / 1e9), ($modelBytes / 1e9), ($memoryBytes / 1e9), [Environment]::ProcessorCount, $floorSeconds, (Get-Median ($floors | ForEach-Object Read)), ($inputBytes / 1e9 / (Get-Median ($floors | ForEach-Object Read))), (Get-Median ($floors | ForEach-Object Write))))
$report.Add('')
$report.Add('| method | wall s | CPU s | × cold floor | target | peak RSS MB | RSS < 1 GB |')
$report.Add('|---|---|---|---|---|---|---|')
foreach ($m in $Method) {
    $runsOf = @($merges | Where-Object Method -eq $m)
    $wall = Get-Median ($runsOf | ForEach-Object Wall)
    $rss = ($runsOf | Measure-Object PeakRss -Maximum).Maximum
    $ratio = $wall / $floorSeconds
    $report.Add(('| {0} | {1:0.0} | {2:0.0} | {3:0.00} | {4} {5} | {6:0} | {7} |' -f $m, $wall, (Get-Median ($runsOf | ForEach-Object Cpu)), $ratio, $targets[$m],
            $(if ($ratio -le $targets[$m]) { 'met' } else { 'missed' }), ($rss / 1e6), $(if ($rss -lt $rssLimit) { 'yes' } else { 'no' })))
}
$report | Set-Content $OutFile
$report | Out-Host
if ($RemoveData) { Remove-Item -Recurse -Force $directory; Write-Host "Removed $directory." }
