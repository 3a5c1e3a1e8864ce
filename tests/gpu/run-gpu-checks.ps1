#!/usr/bin/env pwsh
<#
.SYNOPSIS
The GPU checks of the tensor backend (-Device cuda), for a Linux machine with an NVIDIA GPU; about 3-5 minutes.

.DESCRIPTION
Nothing here has been run on a GPU yet: the project's machines have none, and their NuGet copy lacks
TorchSharp-cuda-linux. On a CUDA machine with the .NET SDK and network access to nuget.org (or a feed with
TorchSharp-cuda-linux 0.107.0 and its libtorch-cuda packages):

  1. builds the module against TorchSharp-cuda-linux (./build.ps1 Build -Cuda) and reports what TorchSharp sees;
  2. runs the backend-equality tests (tests/Dare.Engine.Tests, TorchBackendTests) with DARE_TEST_DEVICE=cuda: every
     method's output against the SIMD kernels (bit-identical; within one ulp where a method's sums over a tensor are
     added in another order: the spherical methods and sce; with the count of differing elements), the DARE
     masks and magnitude bits computed on the GPU, and DeviceUnavailable for a device index beyond the GPUs;
  3. a short bench: a synthetic bf16 base + 3 fine-tunes (-BenchHiddenSize, default 2048 with 16 layers, ~0.9B
     parameters each), DARE-linear, DARE-TIES, DELLA and breadcrumbs (with TIES), SCE and Model Stock exported with
     -Device cpu and -Device cuda, export times as a ratio and the tensor-data SHA-256 of both (they must be equal;
     for SCE and Model Stock, whose sums the device adds in another order, at most one element in 10^4 may differ); and Export-LoraAdapter of one fine-tune's layer 0 at
     rank 16 with -Device cpu and the device (each module's relative error within 1e-4 of the CPU's).

Writes its log and a summary to tests/gpu/out/. Exit code 0 when everything passed.

.EXAMPLE
dotnet tool restore && dotnet pwsh tests/gpu/run-gpu-checks.ps1
#>
[CmdletBinding()]
param(
    [string] $Device = 'cuda',
    [int] $BenchHiddenSize = 2048,
    [int] $BenchLayers = 16,
    [switch] $SkipBuild
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'
$root = Resolve-Path (Join-Path $PSScriptRoot '../..')
# dotnet pwsh and the build find the repository's tool manifest and props from here.
Set-Location $root
$outDir = Join-Path $PSScriptRoot 'out'
New-Item -ItemType Directory -Force $outDir | Out-Null
$summary = [Collections.Generic.List[string]]::new()
$clock = [Diagnostics.Stopwatch]::StartNew()
function Step([string] $Text) { Write-Host "== [$('{0:0}' -f $clock.Elapsed.TotalSeconds) s] $Text" -ForegroundColor Cyan }

Step 'nvidia-smi'
try { & nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | Tee-Object -Variable gpu | Out-Host; $summary.Add("GPU: $gpu") }
catch { $summary.Add('nvidia-smi: not found') }

if (-not $SkipBuild) {
    Step 'Build -Cuda'
    & dotnet pwsh (Join-Path $root 'build.ps1') Build -Cuda
    if ($LASTEXITCODE) { throw 'Build -Cuda failed; see the message above.' }
}
$module = Join-Path $root 'out/Dare/Dare.psd1'

Step 'What TorchSharp reports'
$environment = & dotnet pwsh -NoProfile -c "Import-Module '$module'; Get-DareEnvironment | Format-List | Out-String -Width 200"
$environment | Out-Host
$summary.Add(($environment | Out-String).Trim())

Step "Backend-equality tests on $Device"
$tests = Join-Path $root 'tests/Dare.Engine.Tests/Dare.Engine.Tests.csproj'
# (-Device torch-cpu -SkipBuild -BenchHiddenSize 64 -BenchLayers 2 is a dry run of this script on a CPU machine.)
$cudaBuild = "-p:DareCuda=$(if ($Device -like 'cuda*') { 'true' } else { 'false' })"
& dotnet build $tests -c Release $cudaBuild -nologo -v quiet
if ($LASTEXITCODE) { throw "Building the engine tests ($cudaBuild) failed." }
. (Join-Path $root 'build/NativeCompat.ps1')
$rid = "linux-$([Runtime.InteropServices.RuntimeInformation]::OSArchitecture.ToString().ToLowerInvariant())"
Install-TorchSharpNativeCompat -Directory (Join-Path $root "tests/Dare.Engine.Tests/bin/Release/net10.0/runtimes/$rid/native") -Quiet
$env:DARE_TEST_DEVICE = $Device
$testLog = Join-Path $outDir 'backend-tests.log'
& dotnet test $tests -c Release --no-build -nologo --filter 'FullyQualifiedName~TorchBackendTests' --logger 'console;verbosity=detailed' 2>&1 | Tee-Object $testLog | Out-Host
$testsFailed = $LASTEXITCODE -ne 0
Remove-Item Env:DARE_TEST_DEVICE
$summary.Add("Backend-equality tests on ${Device}: $(if ($testsFailed) { 'FAILED' } else { 'passed' }) (log: $testLog)")
$summary.AddRange([string[]] @(Get-Content $testLog | Where-Object { $_ -match 'elements differ' } | ForEach-Object Trim))

Step "Short bench: cpu against $Device"
$bench = & dotnet pwsh -NoProfile -c @"
`$ErrorActionPreference = 'Stop'
Import-Module '$module'
`$data = Join-Path '$outDir' 'bench-data'
if (-not (Test-Path (Join-Path `$data 'ft3'))) {
    `$base = New-SyntheticCheckpoint (Join-Path `$data 'base') -HiddenSize $BenchHiddenSize -Layers $BenchLayers -VocabSize 32000 -Force
    1..3 | ForEach-Object { `$null = New-SyntheticCheckpoint (Join-Path `$data "ft`$_") -BaseModel `$base -Seed `$_ -Force }
}
function Get-DataHash([string] `$folder) {
    `$sha = [Security.Cryptography.IncrementalHash]::CreateHash('SHA256')
    foreach (`$shard in Get-ChildItem `$folder -Filter '*.safetensors' | Sort-Object Name) {
        `$bytes = [IO.File]::ReadAllBytes(`$shard.FullName)
        `$start = 8 + [BitConverter]::ToInt64(`$bytes, 0)
        `$sha.AppendData(`$bytes, [int] `$start, `$bytes.Length - [int] `$start)
    }
    [Convert]::ToHexString(`$sha.GetHashAndReset()).Substring(0, 16)
}
foreach (`$method in 'dare-linear', 'dare-ties', 'della', 'breadcrumbs', 'sce', 'model-stock') {
    `$targets = foreach (`$device in 'cpu', '$Device') {
        `$vectors = Get-TaskVector -Base (Join-Path `$data 'base') -FineTuned (1..3 | ForEach-Object { Join-Path `$data "ft`$_" })
        `$merged = switch (`$method) {
            'dare-linear' { `$vectors | Invoke-DareDrop -DropRate 0.9 -Seed 42 | Merge-Linear }
            'dare-ties' { `$vectors | Invoke-DareDrop -DropRate 0.9 -Seed 42 | Merge-Ties -KeepRatio 0.5 }
            'della' { `$vectors | Invoke-DellaDrop -Density 0.3 -Epsilon 0.1 -Seed 42 | Merge-Ties -KeepRatio 1 }
            'breadcrumbs' { `$vectors | Invoke-BreadcrumbsDrop -Density 0.9 -Gamma 0.01 | Merge-Ties -KeepRatio 1 }
            'sce' { `$vectors | Merge-Sce -SelectTopK 0.3 }
            'model-stock' { `$vectors | Merge-ModelStock }
        }
        `$target = Join-Path '$outDir' "bench-`$method-`$(`$device -replace ':', '')"
        `$result = `$merged | Export-Safetensors `$target -DType bfloat16 -Device `$device -Force
        '{0,-12} {1,-8} export {2,7:0.00} s  data sha256 {3}' -f `$method, `$device, `$result.Elapsed.TotalSeconds, (Get-DataHash `$target) | Out-Host
        `$target
    }
    # Where the device adds its sums in another order (sce's Σ δ², model_stock's Gram matrices), the outputs may differ
    # by rounding: the differences between them, as the task vector of one over the other, measure how much.
    if (`$method -in 'sce', 'model-stock') {
        `$difference = Get-TaskVector -Base `$targets[0] -FineTuned `$targets[1] | Measure-TaskVector -RankSamples 0
        'compare      {0,-12} differing {1:0.0e0} of {2} elements, largest {3:0.0e0}' -f `$method, (1 - `$difference.NaturalSparsity), `$difference.ParameterCount, `$difference.MaxAbs | Out-Host
    }
    Remove-Item -Recurse -Force `$targets
}
foreach (`$device in 'cpu', '$Device') {
    `$target = Join-Path '$outDir' "lora-`$(`$device -replace ':', '')"
    `$lora = Get-TaskVector -Base (Join-Path `$data 'base') -FineTuned (Join-Path `$data 'ft1') | Export-LoraAdapter `$target -Rank 16 -Include '*.layers.0.*' -Device `$device -Force
    'lora         {0,-8} export {1,7:0.00} s  errors {2}' -f `$device, `$lora.Elapsed.TotalSeconds, ((`$lora.Modules | Sort-Object Tensor | ForEach-Object { '{0:0.000000}' -f `$_.RelativeError }) -join ',')
    Remove-Item -Recurse -Force `$target
}
"@
$bench | Out-Host
$summary.AddRange([string[]] @($bench))
if ($LASTEXITCODE) { $summary.Add('Bench: FAILED'); $testsFailed = $true }
else {
    foreach ($method in 'dare-linear', 'dare-ties', 'della', 'breadcrumbs', 'sce', 'model-stock') {
        $rows = @($bench | Where-Object { $_ -like "$method *" })
        $hashes = @($rows | ForEach-Object { ($_ -split 'sha256 ')[-1] } | Select-Object -Unique)
        $seconds = @($rows | ForEach-Object { [double](($_ -split '\s+')[3]) })
        $ratio = if ($seconds.Count -eq 2) { '{0:0.00}×' -f ($seconds[1] / $seconds[0]) } else { '?' }
        $compared = "$(@($bench | Where-Object { $_ -like "compare      $method *" }))"
        if ($hashes.Count -eq 1) { $summary.Add("Bench ${method}: $Device / cpu = $ratio export time, identical data") }
        elseif ($compared -match 'differing (\S+) ' -and [double]$Matches[1] -le 1e-4) {
            # Sums added in another order may round a few elements the other way (TorchBackendTests bounds each to one
            # ulp); more than one in 10^4 would be a fault, not rounding.
            $summary.Add("Bench ${method}: $Device / cpu = $ratio export time, data differ by rounding ($($compared.Trim()))")
        }
        else { $summary.Add("Bench ${method}: the cpu and $Device outputs DIFFER $compared"); $testsFailed = $true }
    }
    # Export-LoraAdapter -Device: the SVDs on the device, each module's relative error within 1e-4 of the CPU's.
    $loraRows = @($bench | Where-Object { $_ -like 'lora *' })
    $errors = @($loraRows | ForEach-Object { , [double[]] (($_ -split 'errors ')[-1] -split ',') })
    $loraSeconds = @($loraRows | ForEach-Object { [double](($_ -split '\s+')[3]) })
    $worst = if ($errors.Count -eq 2) { (0..($errors[0].Length - 1) | ForEach-Object { [Math]::Abs($errors[0][$_] - $errors[1][$_]) } | Measure-Object -Maximum).Maximum } else { [double]::NaN }
    if (-not ($worst -le 1e-4)) { $summary.Add("LoRA extraction: the cpu and $Device errors DIFFER (largest difference $worst)"); $testsFailed = $true }
    else { $summary.Add(('LoRA extraction: {0} / cpu = {1:0.00}× time, module errors within {2:0.0e0}' -f $Device, ($loraSeconds[1] / $loraSeconds[0]), $worst)) }
}

$summary.Add(('Total: {0:0} s' -f $clock.Elapsed.TotalSeconds))
$summary | Set-Content (Join-Path $outDir 'summary.txt')
Write-Host ''
$summary | Out-Host
exit ([int] $testsFailed)
