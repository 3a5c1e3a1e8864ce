#!/usr/bin/env pwsh
<#
.SYNOPSIS
Speed and memory benchmark of Dare's merges against the copy floor (run by hand: ./build.ps1 Bench).

.DESCRIPTION
For each size it generates (once; cached under tests/bench/data/<size>/) a Llama-shaped bfloat16 base, sharded,
and three fine-tunes of it, then measures DARE-linear, TIES, DARE-TIES, DELLA (della: MagPrune, then TIES sign election), SLERP (base and ft1 only) and Model Stock, each as a separate pwsh process
(start-up and module import included; libtorch is not loaded, as merges on the CPU kernels do not need it) that
exports bfloat16 to tests/bench/runs/.
It reports wall time, CPU time (user + sys), peak RSS and throughput (input bytes / wall time) next to the copy
floor (cat of all inputs to /dev/null + cp of one model, warm page cache), checks the targets, prints a
markdown report and writes it to -OutFile (tests/bench/results.md for a complete run). With the medium size it
also runs DARE-linear and DARE-TIES as whole processes on this pwsh and on a precompiled copy of it
(PrecompiledPwsh.ps1: PowerShell's release packages are precompiled, the dotnet tool is not), interleaved.

With -Profile each merge runs with DARE_PROFILE=1 and the report adds the executor's per-phase stopwatch
breakdown (read, bf16 -> f32, delta, mask, select, trim, combine, to output dtype, write, commit), e.g.
  ./tests/bench/Invoke-Benchmark.ps1 -Size large -Method ties -Profile

The module must be built first (./build.ps1 Build; ./build.ps1 Bench does both).

.PARAMETER KeepOutput
Keep the merged models in tests/bench/runs/<size>-<method> (normally each is deleted once measured, to save disk).
#>
[CmdletBinding()]
param(
    # small, medium, large (any subset); also as one comma-separated string (pwsh -File passes arrays that way).
    [string[]] $Size = @('small', 'medium', 'large'),
    # dare-linear, ties, dare-ties, della, slerp, model-stock (any subset, comma-separated allowed); also, on request
    # only, breadcrumbs, sce (select_topk 0.1) and arcee-fusion (ft1 alone), without targets, and dare-linear-torch and
    # dare-ties-torch: the same merges on the TorchSharp tensor backend (-Device torch-cpu), 10-40× slower on a CPU
    # (about 10 minutes at the small size), so that cost is visible.
    [string[]] $Method = @('dare-linear', 'ties', 'dare-ties', 'della', 'slerp', 'model-stock'),
    # Measure each method this many times and report the median (peak RSS: the maximum over the runs).
    [ValidateRange(1, 20)] [int] $Repeat = 3,
    # Before each measurement wait (up to -QuietTimeout seconds) until other processes use less than this share of
    # the machine's CPUs, so a build or test run elsewhere does not distort the timings. 1 disables the wait.
    [ValidateRange(0.01, 1)] [double] $QuietBelow = 0.1,
    [int] $QuietTimeout = 600,
    [switch] $Profile,
    [switch] $KeepOutput,
    # Where the report goes. Default: tests/bench/results.md for a complete run (both sizes, all methods), else
    # tests/bench/runs/results-partial.md, so a partial or profiling run does not replace the complete table.
    [string] $OutFile
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
$root = Resolve-Path (Join-Path $PSScriptRoot '../..')
function Split-Choice([string[]] $Values, [string[]] $Allowed, [string] $Name) {
    $chosen = @($Values | ForEach-Object { $_ -split ',' } | ForEach-Object Trim | Where-Object { $_ })
    foreach ($value in $chosen) { if ($value -notin $Allowed) { throw "-$Name '$value' is not one of: $($Allowed -join ', ')." } }
    # In the canonical order, each once.
    return @($Allowed | Where-Object { $_ -in $chosen })
}
$Size = Split-Choice $Size @('small', 'medium', 'large') 'Size'
$Method = Split-Choice $Method @('dare-linear', 'ties', 'dare-ties', 'della', 'slerp', 'model-stock', 'breadcrumbs', 'sce', 'arcee-fusion', 'dare-linear-torch', 'dare-ties-torch') 'Method'
$module = Join-Path $root 'out/Dare/Dare.psd1'
$dataRoot = Join-Path $PSScriptRoot 'data'
$runsRoot = Join-Path $PSScriptRoot 'runs'
if (-not (Test-Path $module)) { throw "The module is not built: $module is missing. Run ./build.ps1 Build (or ./build.ps1 Bench)." }
if (-not $OutFile) {
    $complete = @($Size | Select-Object -Unique).Count -eq 3 -and @($Method | Where-Object { $_ -in 'dare-linear', 'ties', 'dare-ties', 'della', 'slerp', 'model-stock' } | Select-Object -Unique).Count -eq 6
    $OutFile = if ($complete) { Join-Path $PSScriptRoot 'results.md' } else { Join-Path $runsRoot 'results-partial.md' }
}

# Llama-shaped sets: base sharded, three fine-tunes (base + seeded N(0, 0.002²) delta), all bfloat16.
$Sizes = [ordered]@{
    small = [ordered]@{ HiddenSize = 1024; Layers = 8; VocabSize = 32000; BaseShardSize = '128MB' }
    # 438M parameters per model: the size at which the issue tracker's whole-process targets are stated.
    medium = [ordered]@{ HiddenSize = 1536; Layers = 12; VocabSize = 32000; BaseShardSize = '512MB' }
    large = [ordered]@{ HiddenSize = 2048; Layers = 16; VocabSize = 32000; BaseShardSize = '1GB' }
}
# della ranks every row (a sort per row) and reads δ unfused, so its target is looser; slerp and model-stock take one
# extra pass over each tensor (norms and dot products) before writing it.
$Targets = @{ 'dare-linear' = 2.0; 'ties' = 3.5; 'dare-ties' = 3.5; 'della' = 12.0; 'slerp' = 8.0; 'model-stock' = 8.0 }
$Pipelines = [ordered]@{
    'dare-linear' = 'Invoke-DareDrop -DropRate 0.9 -Seed 42 | Merge-Linear'
    'ties' = 'Merge-Ties -KeepRatio 0.2'
    'dare-ties' = 'Invoke-DareDrop -DropRate 0.9 -Seed 42 | Merge-Ties -KeepRatio 0.5'
    'della' = 'Invoke-DellaDrop -Density 0.3 -Epsilon 0.1 -Seed 42 | Merge-Ties -KeepRatio 1'
    'slerp' = 'Select-Object -First 1 | Merge-Slerp -T 0.5'
    'model-stock' = 'Merge-ModelStock'
    'breadcrumbs' = 'Invoke-BreadcrumbsDrop -Density 0.9 -Gamma 0.01 | Merge-Linear'
    'sce' = 'Merge-Sce -SelectTopK 0.1'
    'arcee-fusion' = 'Select-Object -First 1 | Merge-ArceeFusion'
    'dare-linear-torch' = 'Invoke-DareDrop -DropRate 0.9 -Seed 42 | Merge-Linear'
    'dare-ties-torch' = 'Invoke-DareDrop -DropRate 0.9 -Seed 42 | Merge-Ties -KeepRatio 0.5'
}
# The *-torch rows show what the TorchSharp backend costs on the CPU device (its data hash must equal the SIMD row's);
# they have no target: on a GPU the same backend runs with -Device cuda (tests/gpu). Breadcrumbs, SCE and Arcee Fusion
# are measured on request too, without a target: each had a slow path once (bench history item 18).
$Untargeted = @('breadcrumbs', 'sce', 'arcee-fusion', 'dare-linear-torch', 'dare-ties-torch')
$RssLimitBytes = 1.5e9
$RssGrowthLimit = 1.2

. (Join-Path $PSScriptRoot 'BenchCommon.ps1')
. (Join-Path $PSScriptRoot 'PrecompiledPwsh.ps1')
$Pwsh = Get-PwshCommand
$GnuTime = if ((Test-Path /usr/bin/time) -and ((& /usr/bin/time -v true 2>&1) -match 'Maximum resident set size')) { '/usr/bin/time' } else { $null }

# Generates the set unless its completion marker matches the wanted shape; a half-written set has no marker.
function Initialize-DataSet([string] $Name) {
    $spec = $Sizes[$Name]
    $directory = Join-Path $dataRoot $Name
    $marker = Join-Path $directory 'complete.json'
    $wanted = $spec | ConvertTo-Json -Compress
    if ((Test-Path $marker) -and (Get-Content -Raw $marker | ConvertFrom-Json).spec -eq $wanted) {
        Write-Host "Data set '$Name' is cached in $directory."
        return
    }
    if (Test-Path $directory) { Remove-Item -Recurse -Force $directory }
    New-Item -ItemType Directory -Force $directory | Out-Null
    Write-Host "Generating data set '$Name' (hidden $($spec.HiddenSize), $($spec.Layers) layers, vocab $($spec.VocabSize)) in $directory..."
    $script = @"
`$ErrorActionPreference = 'Stop'
Import-Module '$module'
Set-Location '$directory'
`$base = New-SyntheticCheckpoint ./base -HiddenSize $($spec.HiddenSize) -Layers $($spec.Layers) -VocabSize $($spec.VocabSize) -Seed 1 -MaxShardSize $($spec.BaseShardSize)
foreach (`$i in 1..3) { `$null = New-SyntheticCheckpoint "./ft`$i" -BaseModel `$base -Seed (10 + `$i) }
"@
    $clock = [Diagnostics.Stopwatch]::StartNew()
    & $Pwsh[0] @($Pwsh | Select-Object -Skip 1) -NoProfile -NonInteractive -Command $script | Out-Host
    if ($LASTEXITCODE) { throw "Generating data set '$Name' failed (exit code $LASTEXITCODE)." }
    if (@(Get-ChildItem (Join-Path $directory 'base') -Filter '*.safetensors').Count -lt 2) { throw "The '$Name' base was expected to be sharded." }
    $files = Get-SetFiles $directory
    [ordered]@{
        spec = $wanted
        generated = (Get-Date).ToUniversalTime().ToString('o')
        seconds = [math]::Round($clock.Elapsed.TotalSeconds, 1)
        files = @($files | ForEach-Object { [ordered]@{ path = [IO.Path]::GetRelativePath($directory, $_); bytes = (Get-Item $_).Length } })
    } | ConvertTo-Json -Depth 4 | Set-Content $marker
    Write-Host ("Generated '$Name' in {0:0} s." -f $clock.Elapsed.TotalSeconds)
}

# Busy and total CPU time of the whole machine, in clock ticks (/proc/stat).
function Get-MachineCpuTicks {
    $fields = @((Get-Content /proc/stat -TotalCount 1) -split '\s+' | Select-Object -Skip 1 | Where-Object { $_ } | ForEach-Object { [long]$_ })
    $busy = $fields[0] + $fields[1] + $fields[2] + $fields[5] + $fields[6] + $fields[7]   # user nice system irq softirq steal
    [pscustomobject]@{ Busy = $busy; Total = $busy + $fields[3] + $fields[4] }           # + idle iowait
}
$ClockTicks = [double](& getconf CLK_TCK)

# Waits until the machine has been nearly idle for two seconds running (other work may share the machine).
function Wait-Quiet {
    if ($QuietBelow -ge 1) { return }
    $deadline = [DateTime]::UtcNow.AddSeconds($QuietTimeout)
    $quiet = 0; $said = $false
    while ($quiet -lt 2) {
        $before = Get-MachineCpuTicks
        Start-Sleep -Milliseconds 1000
        $after = Get-MachineCpuTicks
        $share = ($after.Busy - $before.Busy) / [math]::Max(1, $after.Total - $before.Total)
        if ($share -lt $QuietBelow) { $quiet++ } else { $quiet = 0 }
        if ($share -ge $QuietBelow -and -not $said) { Write-Host ('Waiting for the machine to be idle (CPU busy {0:P0})...' -f $share); $said = $true }
        if ([DateTime]::UtcNow -gt $deadline) { Write-Warning "The machine did not become idle within $QuietTimeout s; measuring anyway."; return }
    }
}

# Copy floor samples: every input read once (cat to /dev/null) plus one model's safetensors copied (cp), warm
# page cache. Taken before and after a size's merges: on a VM the cost of cp's page-cache writes swings widely.
function Measure-CopyFloor([string] $Name, [int] $Iterations = 5) {
    $directory = Join-Path $dataRoot $Name
    $files = @(Get-SetFiles $directory)
    $model = @(Get-ChildItem (Join-Path $directory 'ft1') -Filter '*.safetensors' | ForEach-Object FullName)
    $copy = Join-Path $runsRoot "$Name-copy"
    Invoke-Shell 'cat "$@" > /dev/null' $files   # warm the page cache
    $read = @(); $cp = @(); $sync = @()
    Wait-Quiet
    foreach ($i in 1..$Iterations) {
        if (Test-Path $copy) { Remove-Item -Recurse -Force $copy }
        New-Item -ItemType Directory -Force $copy | Out-Null
        $clock = [Diagnostics.Stopwatch]::StartNew()
        Invoke-Shell 'cat "$@" > /dev/null' $files
        $read += $clock.Elapsed.TotalSeconds
        $clock.Restart()
        Invoke-Shell 'cp "$@"' ($model + $copy)
        $cp += $clock.Elapsed.TotalSeconds
        # Informational: Export-Safetensors fsyncs each shard; a plain cp does not.
        $clock.Restart()
        Invoke-Shell 'sync "$@"' @(Get-ChildItem $copy | ForEach-Object FullName)
        $sync += $clock.Elapsed.TotalSeconds
    }
    Remove-Item -Recurse -Force $copy
    $bytes = ($files | ForEach-Object { (Get-Item $_).Length } | Measure-Object -Sum).Sum
    $modelBytes = ($model | ForEach-Object { (Get-Item $_).Length } | Measure-Object -Sum).Sum
    [pscustomobject]@{ Size = $Name; InputBytes = $bytes; ModelBytes = $modelBytes; Read = $read; Copy = $cp; Sync = $sync }
}

# The floor from all samples of a size: the median of (cat + cp), with its range.
function Join-CopyFloor([object[]] $Samples) {
    $read = @($Samples | ForEach-Object { $_.Read }); $cp = @($Samples | ForEach-Object { $_.Copy }); $sync = @($Samples | ForEach-Object { $_.Sync })
    $sums = @(for ($i = 0; $i -lt $read.Count; $i++) { $read[$i] + $cp[$i] })
    [pscustomobject]@{
        Size = $Samples[0].Size; InputBytes = $Samples[0].InputBytes; ModelBytes = $Samples[0].ModelBytes
        ReadSeconds = Get-Median $read; CopySeconds = Get-Median $cp; FsyncSeconds = Get-Median $sync
        Seconds = Get-Median $sums; Min = ($sums | Measure-Object -Minimum).Minimum; Max = ($sums | Measure-Object -Maximum).Maximum
        CopyMin = ($cp | Measure-Object -Minimum).Minimum; CopyMax = ($cp | Measure-Object -Maximum).Maximum; Count = $sums.Count
    }
}

# Runs one step in a fresh pwsh (-Command: another pwsh's command line) under /usr/bin/time -v (or, without it, the
# child's own VmHWM and CPU time).
function Measure-Step([string] $Name, [string] $Step, [string[]] $Command = $Pwsh) {
    $output = Join-Path $runsRoot "$Name-$Step"
    $timeFile = Join-Path $runsRoot "$Name-$Step.time"
    $arguments = @($Command | Select-Object -Skip 1) + @('-NoProfile', '-NonInteractive', '-File', (Join-Path $PSScriptRoot 'Invoke-BenchMerge.ps1'),
        '-Method', $Step, '-Data', (Join-Path $dataRoot $Name), '-Output', $output, '-Module', $module)
    Wait-Quiet
    # Warm means warm: this VM pages out what nothing has read for about a minute (a DAMON pageout scheme), so the
    # inputs are read once more right before each merge (TIES's counted route, for one, takes only cached inputs).
    if ($Step -notin 'startup', 'torch', 'bare') { Invoke-Shell 'cat "$@" > /dev/null' @(Get-SetFiles (Join-Path $dataRoot $Name)) }
    $machineBefore = Get-MachineCpuTicks
    $clock = [Diagnostics.Stopwatch]::StartNew()
    $lines = if ($GnuTime) { & $GnuTime -v -o $timeFile $Command[0] @arguments 2>&1 } else { & $Command[0] @arguments 2>&1 }
    $wall = $clock.Elapsed.TotalSeconds
    $machineAfter = Get-MachineCpuTicks
    if ($LASTEXITCODE) { throw "Benchmark step $Name/$Step failed (exit code $LASTEXITCODE):`n$($lines -join "`n")" }
    $line = @($lines | Where-Object { "$_" -like 'DARE-BENCH *' })[-1]
    if (-not $line) { throw "Benchmark step $Name/$Step printed no DARE-BENCH line:`n$($lines -join "`n")" }
    $child = "$line".Substring('DARE-BENCH '.Length) | ConvertFrom-Json
    $measured = if ($GnuTime) { Read-GnuTime $timeFile } else {
        [pscustomobject]@{ Wall = $wall; Cpu = $child.user_s + $child.sys_s; PeakRssBytes = [long]$child.vmhwm_kb * 1024 }
    }
    Remove-Item $timeFile -ErrorAction Ignore
    $hash = $null
    if ($Step -notin 'startup', 'torch', 'bare') {
        $shards = @(Get-ChildItem $output -Filter '*.safetensors' | Sort-Object Name)
        if ($shards.Count -eq 0) { throw "Benchmark step $Name/$Step wrote no safetensors to $output." }
        # Fingerprint of the tensor data (outside the timing), so optimisations can be checked for bit-identical
        # results: each shard after its header (the header's __metadata__ holds the recipe and version).
        $sha = [Security.Cryptography.IncrementalHash]::CreateHash('SHA256')
        foreach ($shard in $shards) {
            $stream = [IO.File]::OpenRead($shard.FullName)
            try {
                $buffer = [byte[]]::new(1MB)
                $null = $stream.Read($buffer, 0, 8)
                $stream.Position = 8 + [BitConverter]::ToInt64($buffer, 0)
                while (($n = $stream.Read($buffer, 0, $buffer.Length)) -gt 0) { $sha.AppendData($buffer, 0, $n) }
            }
            finally { $stream.Dispose() }
        }
        $hash = [Convert]::ToHexString($sha.GetHashAndReset()).ToLowerInvariant().Substring(0, 16)
        if (-not $KeepOutput) { Remove-Item -Recurse -Force $output }
    }
    [pscustomobject]@{
        Size = $Name; Method = $Step; Wall = $measured.Wall; Cpu = $measured.Cpu; PeakRssBytes = $measured.PeakRssBytes
        ChildVmHwmBytes = [long]$child.vmhwm_kb * 1024; ExportSeconds = $child.export_s; BytesRead = $child.bytes_read
        Profile = @($child.profile); OutputHash = $hash
        # CPU time other processes used during the measurement (machine busy time minus the child's own).
        OthersCpu = [math]::Max(0, ($machineAfter.Busy - $machineBefore.Busy) / $ClockTicks - $measured.Cpu)
    }
}

function Get-MachineDescription {
    $cpu = (Select-String -Path /proc/cpuinfo -Pattern '^model name\s*:\s*(.*)$' | Select-Object -First 1).Matches[0].Groups[1].Value
    $memKb = [long]((Select-String -Path /proc/meminfo -Pattern '^MemTotal:\s+(\d+)').Matches[0].Groups[1].Value)
    $os = if (Test-Path /etc/os-release) { (Select-String -Path /etc/os-release -Pattern '^PRETTY_NAME="?([^"]*)"?').Matches[0].Groups[1].Value } else { 'unknown' }
    $commit = (& git -C $root rev-parse --short HEAD 2>$null)
    $dirty = if (& git -C $root status --porcelain --untracked-files=no -- src 2>$null) { ' (src modified)' } else { '' }
    # The kernels differ by instruction set: the fused single passes and TIES's counted route need AVX-512 (bench README item 30).
    $flags = @((Select-String -Path /proc/cpuinfo -Pattern '^flags\s*:\s*(.*)$' | Select-Object -First 1).Matches[0].Groups[1].Value -split ' ')
    $vectors = if ('avx512f' -in $flags) { 'AVX-512 (16-lane kernels, fused single passes)' } elseif ('avx2' -in $flags) { 'AVX2, no AVX-512 (8-lane kernels, no fused single passes)' } else { 'no AVX2' }
    [ordered]@{
        'CPU' = "$cpu, nproc $(& nproc), $vectors"
        'RAM' = '{0:0.0} GiB' -f ($memKb / 1MB)
        'OS' = "$os, kernel $(& uname -r)"
        'Runtime' = ".NET $([Environment]::Version), PowerShell $($PSVersionTable.PSVersion)"
        'Date' = (Get-Date).ToUniversalTime().ToString('yyyy-MM-dd HH:mm') + ' UTC'
        'Commit' = "$commit$dirty"
        'Measured with' = if ($GnuTime) { '/usr/bin/time -v (wall, user+sys, max RSS of the pwsh process)' } else { 'Stopwatch + the child''s own /proc/self/status VmHWM and CPU time' }
    }
}

function Format-Verdict([double] $Value, [double] $Limit, [string] $Unit, [switch] $Strict) {
    $pass = if ($Strict) { $Value -lt $Limit } else { $Value -le $Limit }
    '{0} ({1:0.00}{2} vs {3}{4}{2})' -f $(if ($pass) { 'PASS' } else { 'FAIL' }), $Value, $Unit, $(if ($Strict) { '< ' } else { '≤ ' }), $Limit
}

# --- run ---------------------------------------------------------------------------------------------------
New-Item -ItemType Directory -Force $dataRoot, $runsRoot | Out-Null
if ($Profile) { $env:DARE_PROFILE = '1' }
try {
    # The start-up step plans a merge of the small set, so that set must exist first (on a fresh clone it does not).
    Initialize-DataSet 'small'
    # Interleaved with a bare pwsh start, so the module's own cost is a difference measured in the same minute.
    $bare = [Collections.Generic.List[object]]::new(); $startup = [Collections.Generic.List[object]]::new(); $torch = [Collections.Generic.List[object]]::new()
    foreach ($i in 1..5) { $bare.Add((Measure-Step 'small' 'bare')); $startup.Add((Measure-Step 'small' 'startup')); $torch.Add((Measure-Step 'small' 'torch')) }
    $overBare = (Get-Median $startup.Wall) - (Get-Median $bare.Wall)
    Write-Host ('Start-up: {0:0.00} s wall, {1:0.00} s over a bare pwsh start (median of 5 each)' -f (Get-Median $startup.Wall), $overBare)
    $floors = [ordered]@{}
    $results = [Collections.Generic.List[object]]::new()
    foreach ($name in $Size) {
        Initialize-DataSet $name
        $floorSamples = @(Measure-CopyFloor $name)
        $floors[$name] = Join-CopyFloor $floorSamples
        Write-Host ('Copy floor {0} (before the merges): {1:0.00} s (cat {2:0.00} s + cp {3:0.00} s, cp {4:0.00}–{5:0.00} s; fsync of the copy {6:0.00} s more)' -f $name, $floors[$name].Seconds, $floors[$name].ReadSeconds, $floors[$name].CopySeconds, $floors[$name].CopyMin, $floors[$name].CopyMax, $floors[$name].FsyncSeconds)
        foreach ($m in $Method) {
            $runs = @(foreach ($i in 1..$Repeat) {
                    $run = Measure-Step $name $m
                    Write-Host ('{0,-6} {1,-12} wall {2,7:0.00} s  cpu {3,7:0.00} s  peak RSS {4,6:0} MB  (export {5:0.00} s; others used {6:0.00} CPU s meanwhile)' -f $name, $m, $run.Wall, $run.Cpu, ($run.PeakRssBytes / 1e6), $run.ExportSeconds, $run.OthersCpu)
                    $run
                })
            $middle = @($runs | Sort-Object Wall)[[int][math]::Floor(($runs.Count - 1) / 2)]
            $results.Add([pscustomobject]@{
                    Size = $name; Method = $m
                    Wall = Get-Median $runs.Wall; Cpu = Get-Median $runs.Cpu; ExportSeconds = Get-Median $runs.ExportSeconds
                    OthersCpu = ($runs.OthersCpu | Measure-Object -Sum).Sum
                    WallRange = ('{0:0.00}–{1:0.00}' -f ($runs.Wall | Measure-Object -Minimum).Minimum, ($runs.Wall | Measure-Object -Maximum).Maximum)
                    PeakRssBytes = ($runs.PeakRssBytes | Measure-Object -Maximum).Maximum
                    Profile = $middle.Profile; OutputHash = ($runs.OutputHash | Select-Object -Unique) -join ', '
                })
        }
        $floorSamples += Measure-CopyFloor $name
        $floors[$name] = Join-CopyFloor $floorSamples
        Write-Host ('Copy floor {0} (all {1} samples): {2:0.00} s, range {3:0.00}–{4:0.00} s' -f $name, $floors[$name].Count, $floors[$name].Seconds, $floors[$name].Min, $floors[$name].Max)
    }
    # The medium whole-process target on this pwsh and on a precompiled one (PrecompiledPwsh.ps1), interleaved.
    $wholeMethods = @('dare-linear', 'dare-ties' | Where-Object { $_ -in $Method })
    $precompiled = $null; $whole = [Collections.Generic.List[object]]::new()
    if ($Size -contains 'medium' -and $wholeMethods) {
        $precompiled = Get-PrecompiledPwsh $dataRoot $Pwsh
        Write-Host "Precompiled pwsh: $($precompiled.Note)"
        if ($precompiled.Command -and "$($precompiled.Command)" -ne "$Pwsh") {
            foreach ($i in 1..$Repeat) {
                foreach ($step in @('bare') + $wholeMethods) {
                    foreach ($build in 'this', 'precompiled') {
                        $run = Measure-Step $(if ($step -eq 'bare') { 'small' } else { 'medium' }) $step $(if ($build -eq 'this') { $Pwsh } else { $precompiled.Command })
                        $run | Add-Member Build $build
                        Write-Host ('{0,-11} pwsh {1,-12} wall {2,6:0.00} s' -f $build, $step, $run.Wall)
                        $whole.Add($run)
                    }
                }
            }
        }
    }
}
finally {
    if ($Profile) { Remove-Item Env:DARE_PROFILE -ErrorAction Ignore }
}

# --- report ------------------------------------------------------------------------------------------------
$lines = [Collections.Generic.List[string]]::new()
$lines.Add('# Dare benchmark results')
$lines.Add('')
$lines.Add('Generated by `./build.ps1 Bench` (tests/bench/Invoke-Benchmark.ps1). Each merge is a separate pwsh process: start-up and module import are included (libtorch is not loaded: merges on the CPU kernels do not need it). Inputs are bfloat16 Llama-shaped checkpoints (a sharded base + 3 fine-tunes), output bfloat16 (`Export-Safetensors -DType bfloat16 -Force`). MB = 10^6 bytes.')
$lines.Add('')
$lines.Add('| method | pipeline after `Get-TaskVector -Base base -FineTuned ft1, ft2, ft3` |')
$lines.Add('|---|---|')
foreach ($m in $Method) { $lines.Add("| $m | ``$($Pipelines[$m]) | Export-Safetensors -DType bfloat16$(if ($m -like '*-torch') { ' -Device torch-cpu' })`` |") }
$lines.Add('')
$lines.Add('## Machine')
$lines.Add('')
foreach ($entry in (Get-MachineDescription).GetEnumerator()) { $lines.Add("- $($entry.Key): $($entry.Value)") }
$lines.Add(('- Process start-up (pwsh + Import-Module + Get-TaskVector planning a merge of the small set, median of 5): {0:0.00} s wall, {1:0.00} s CPU, {2:0} MB peak RSS; a bare pwsh start: {3:0.00} s wall, {4:0.00} s CPU' -f (Get-Median $startup.Wall), (Get-Median $startup.Cpu), (($startup.PeakRssBytes | Measure-Object -Maximum).Maximum / 1e6), (Get-Median $bare.Wall), (Get-Median $bare.Cpu)))
$lines.Add(('- Loading libtorch (pwsh + Import-Module + Get-DareEnvironment, median of 5): {0:0.00} s wall, {1:0.00} s over a bare start, paid only by what computes with torch (the tensor backend, LoRA inputs, Export-LoraAdapter, vocabulary alignment, Get-TaskVectorTensor, Measure-TaskVector, Get-DareRecommendation, Measure-Perplexity)' -f (Get-Median $torch.Wall), ((Get-Median $torch.Wall) - (Get-Median $bare.Wall))))
$lines.Add(('- Module import and engine start-up over a bare pwsh start: {0}' -f (Format-Verdict $overBare 0.3 ' s')))
if ($Profile) { $lines.Add('- Profiling was on (DARE_PROFILE=1) for these runs.') }
$lines.Add('')
$lines.Add('## Data sets and copy floor')
$lines.Add('')
$lines.Add('Copy floor = `cat` of the 4 models'' safetensors to /dev/null + `cp` of one model''s safetensors to a new folder, warm page cache (everything read once first): the median of (cat + cp) over 5 samples taken before and 5 after the size''s merges, with its range. On this kind of VM the cost of writing into the page cache swings with whether the guest''s free pages are still backed by the host, so cp varies a lot between samples. Export-Safetensors also fsyncs its output, which the floor does not include; the fsync of the copy is shown separately, and "× floor + fsync" in the results divides by the floor plus that fsync (a copy as durable as the export).')
$lines.Add('')
$lines.Add('| size | shape | parameters / model | input (4 models) | cat s | cp s (range) | copy floor s (range) | (fsync of the copy s) |')
$lines.Add('|---|---|---:|---:|---:|---:|---:|---:|')
foreach ($name in $Size) {
    $spec = $Sizes[$name]; $floor = $floors[$name]
    $params = $floor.ModelBytes / 2   # bfloat16
    $lines.Add(('| {0} | hidden {1}, {2} layers, vocab {3}, base in {4} shards | {5:0}M | {6:0} MB | {7:0.00} | {8:0.00} ({11:0.00}–{12:0.00}) | **{9:0.00}** ({13:0.00}–{14:0.00}) | {10:0.00} |' -f $name, $spec.HiddenSize, $spec.Layers, $spec.VocabSize,
            @(Get-ChildItem (Join-Path $dataRoot "$name/base") -Filter '*.safetensors').Count, ($params / 1e6), ($floor.InputBytes / 1e6), $floor.ReadSeconds, $floor.CopySeconds, $floor.Seconds, $floor.FsyncSeconds,
            $floor.CopyMin, $floor.CopyMax, $floor.Min, $floor.Max))
}
$lines.Add('')
$lines.Add('## Results')
$lines.Add('')
$lines.Add("Median of $Repeat run(s) per cell (wall, CPU and export time each; ""wall range"" spans all runs); peak RSS is the maximum over the runs. ""× copy floor"" divides the median wall time by the median floor. ""export s"" is the time inside Export-Safetensors, the rest of ""wall s"" is process start-up and pipeline set-up. Throughput = input bytes (4 models) / wall time. ""others CPU s"" is CPU time other processes used during the runs (the machine may be shared; each run first waits until it is idle). The data hash (first 16 hex digits of the SHA-256 of the output's tensor bytes, headers excluded) shows whether the result changed across engine changes.")
$lines.Add('')
$lines.Add('| method | size | wall s | CPU s | export s | × copy floor | × floor + fsync | peak RSS MB | RSS large/small | throughput MB/s | wall range s | others CPU s | data sha256 |')
$lines.Add('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|')
foreach ($m in $Method) {
    foreach ($name in $Size) {
        $r = $results | Where-Object { $_.Size -eq $name -and $_.Method -eq $m }
        $small = $results | Where-Object { $_.Size -eq 'small' -and $_.Method -eq $m }
        $growth = if ($name -eq 'large' -and $small) { '{0:0.00}' -f ($r.PeakRssBytes / $small.PeakRssBytes) } else { '' }
        $lines.Add(('| {0} | {1} | {2:0.00} | {3:0.00} | {4:0.00} | {5:0.0}× | {12:0.0}× | {6:0} | {7} | {8:0} | {9} | {10:0.00} | `{11}` |' -f $m, $name, $r.Wall, $r.Cpu, $r.ExportSeconds,
                ($r.Wall / $floors[$name].Seconds), ($r.PeakRssBytes / 1e6), $growth, ($floors[$name].InputBytes / 1e6 / $r.Wall), $r.WallRange, $r.OthersCpu, $r.OutputHash,
                ($r.Wall / ($floors[$name].Seconds + $floors[$name].FsyncSeconds))))
    }
}
$lines.Add('')
$lines.Add('## Targets (at the large size)')
$lines.Add('')
$lines.Add('| method | time vs copy floor | peak RSS vs small | peak RSS < 1.5 GB |')
$lines.Add('|---|---|---|---|')
$anyFail = $false
foreach ($m in $Method) {
    $large = $results | Where-Object { $_.Size -eq 'large' -and $_.Method -eq $m }
    $small = $results | Where-Object { $_.Size -eq 'small' -and $_.Method -eq $m }
    if ($m -in $Untargeted) { continue }
    if (-not $large) { $lines.Add("| $m | (large not measured) | | |"); continue }
    $floor = $floors['large']
    $time = (Format-Verdict ($large.Wall / $floor.Seconds) $Targets[$m] '×') + (' — {0:0.0}–{1:0.0}× over the floor''s range' -f ($large.Wall / $floor.Max), ($large.Wall / $floor.Min))
    $growth = if ($small) { Format-Verdict ($large.PeakRssBytes / $small.PeakRssBytes) $RssGrowthLimit '×' } else { '(small not measured)' }
    $absolute = Format-Verdict ($large.PeakRssBytes / 1e9) ($RssLimitBytes / 1e9) ' GB' -Strict
    if ("$time $growth $absolute" -match 'FAIL') { $anyFail = $true }
    $lines.Add("| $m | $time | $growth | $absolute |")
}
if ($Size -contains 'small') {
    $lines.Add('')
    $lines.Add('For reference, the small size against the same time limits: ' + (($Method | Where-Object { $_ -notin $Untargeted } | ForEach-Object {
                    $r = $results | Where-Object Size -eq 'small' | Where-Object Method -eq $_
                    '{0} {1:0.0}× (limit {2}×)' -f $_, ($r.Wall / $floors['small'].Seconds), $Targets[$_]
                }) -join ', ') + '. Start-up is a large share of a small run.')
}
if ($Size -contains 'medium' -and $wholeMethods) {
    # Small merges should feel instant: whole processes, start-up included, at 438M parameters per model.
    $lines.Add('')
    $lines.Add('## Whole processes at the medium size')
    $lines.Add('')
    if ($whole.Count) {
        $lines.Add("438M parameters per model, target under 2 s: medians of $Repeat runs on each pwsh, interleaved (a bare start, then each merge on one pwsh and then the other). This pwsh ships IL only (as the ``dotnet tool`` package does); the precompiled one is the same pwsh with $($precompiled.Note).")
        $lines.Add('')
        $lines.Add('| pwsh | bare start s | ' + (($wholeMethods | ForEach-Object { "$_ s" }) -join ' | ') + ' |')
        $lines.Add('|---|---:|' + (($wholeMethods | ForEach-Object { '---' }) -join '|') + '|')
        foreach ($build in 'this', 'precompiled') {
            $runs = @($whole | Where-Object Build -eq $build)
            $cells = foreach ($m in $wholeMethods) { Format-Verdict (Get-Median @($runs | Where-Object Method -eq $m).Wall) 2.0 ' s' -Strict }
            $label = if ($build -eq 'this') { 'this one (IL only)' } else { 'precompiled (ReadyToRun)' }
            $lines.Add(('| {0} | {1:0.00} | {2} |' -f $label, (Get-Median @($runs | Where-Object Method -eq 'bare').Wall), ($cells -join ' | ')))
        }
    }
    else {
        $lines.Add('438M parameters per model, target under 2 s (from the results above): ' + (($wholeMethods | ForEach-Object {
                        $r = $results | Where-Object Size -eq 'medium' | Where-Object Method -eq $_
                        '{0} {1}' -f $_, (Format-Verdict $r.Wall 2.0 ' s' -Strict)
                    }) -join ', ') + ". On a precompiled pwsh: $($precompiled.Note).")
    }
}
if ($Profile) {
    $lines.Add('')
    $lines.Add('## Phase profile (DARE_PROFILE=1)')
    $lines.Add('')
    $lines.Add('Stopwatch time per phase inside MergeExecutor.Export, on the pipeline thread (parallel phases count their wall time, not CPU time).')
    foreach ($r in $results) {
        $lines.Add('')
        $lines.Add("### $($r.Method), $($r.Size)")
        $lines.Add('')
        $lines.Add('```')
        foreach ($p in $r.Profile) { $lines.Add($p.Substring('profile:'.Length).Trim()) }
        $lines.Add('```')
    }
}
$report = $lines -join "`n"
Write-Host ''
Write-Host $report
Set-Content -LiteralPath $OutFile -Value $report -Encoding utf8
Write-Host ''
Write-Host "Wrote $OutFile"
if ($anyFail) { Write-Host 'At least one target was missed (see the Targets table).' -ForegroundColor Yellow }
