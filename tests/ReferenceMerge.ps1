# Plain re-computations of DARE, TIES and linear merges over double[] deltas, for checking the engine's output.
# Only DARE's drop decision comes from the engine (its public mask function is the mask's definition).

# DARE: drop where the engine's counter hash says so (the mask's definition), scale survivors by 1/(1-p).
function Get-Dropped([double[]] $Delta, [string] $Tensor, [long] $Seed, [int] $Stream, [double] $DropRate) {
    $key = [Dare.Engine.Merge.DareMask]::Key($Seed, $Stream, $Tensor)
    $threshold = [Dare.Engine.Merge.DareMask]::Threshold($DropRate)
    $scale = [float](1 / (1 - $DropRate))
    $d = [double[]]::new($Delta.Length)
    for ($i = 0; $i -lt $d.Length; $i++) {
        if (-not [Dare.Engine.Merge.DareMask]::IsDropped($key, $i, $threshold)) { $d[$i] = [float]($Delta[$i] * $scale) }
    }
    , $d
}

# TIES trim: keep the ceil(k*n) largest magnitudes (ties to the earliest elements).
function Get-Trimmed([double[]] $Delta, [double] $KeepRatio) {
    $n = $Delta.Length
    $keep = [Math]::Ceiling($KeepRatio * $n - 1e-9)
    if ($keep -ge $n) { return , $Delta }
    $magnitudes = [double[]]($Delta | ForEach-Object { [Math]::Abs($_) })
    $sorted = $magnitudes.Clone(); [Array]::Sort($sorted)
    $threshold = $sorted[$n - $keep]
    $equalToKeep = $keep - @($magnitudes | Where-Object { $_ -gt $threshold }).Count
    $d = [double[]]::new($n)
    for ($i = 0; $i -lt $n; $i++) {
        if ($magnitudes[$i] -gt $threshold) { $d[$i] = $Delta[$i] }
        elseif ($magnitudes[$i] -eq $threshold -and $equalToKeep -gt 0) { $d[$i] = $Delta[$i]; $equalToKeep-- }
    }
    , $d
}

# Weighted sum of deltas (divided by the summed weights when normalizing).
function Get-LinearMerge([object[]] $Deltas, [double[]] $Weights, [bool] $Normalize, [double] $Lambda = 1) {
    $total = ($Weights | Measure-Object -Sum).Sum
    $scale = if ($Normalize -and $total -ne 0) { $Lambda / $total } else { $Lambda }
    $m = [double[]]::new($Deltas[0].Length)
    for ($i = 0; $i -lt $m.Length; $i++) {
        $sum = 0.0
        for ($k = 0; $k -lt $Deltas.Count; $k++) { $sum += $Weights[$k] * $Deltas[$k][$i] }
        $m[$i] = $sum * $scale
    }
    , $m
}

# TIES sign election (sign of the weighted sum, ties to +) and mean over the agreeing entries.
function Get-TiesMerge([object[]] $Deltas, [double[]] $Weights, [bool] $Normalize) {
    $m = [double[]]::new($Deltas[0].Length)
    for ($i = 0; $i -lt $m.Length; $i++) {
        $election = 0.0
        for ($k = 0; $k -lt $Deltas.Count; $k++) { $election += $Weights[$k] * $Deltas[$k][$i] }
        $sum = 0.0; $weight = 0.0
        for ($k = 0; $k -lt $Deltas.Count; $k++) {
            $x = $Deltas[$k][$i]
            if (($election -ge 0 -and $x -gt 0) -or ($election -lt 0 -and $x -lt 0)) { $sum += $Weights[$k] * $x; $weight += $Weights[$k] }
        }
        $m[$i] = if (-not $Normalize) { $sum } elseif ($weight -ne 0) { $sum / $weight } else { 0 }
    }
    , $m
}
