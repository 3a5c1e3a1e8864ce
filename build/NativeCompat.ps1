# Makes TorchSharp's libLibTorchSharp.so load on systems whose libstdc++ predates GCC 13.
#
# libLibTorchSharp.so (TorchSharp 0.107) requires GLIBCXX_3.4.32 for exactly one symbol,
# std::ios_base_library_init(), which GCC 13's <iostream> references only to pin the library version:
# no relocation uses it. On such systems we mark the GLIBCXX_3.4.32 entry of .gnu.version_r weak
# (VER_FLG_WEAK) in the *copy in the build output* (never the NuGet cache), so the loader accepts a
# libstdc++ that lacks it. A byte edit in managed code: no gcc, no patchelf, no shim library.

Set-StrictMode -Version Latest

$script:MissingVersion = 'GLIBCXX_3.4.32'
$script:VersionedSymbol = '_ZSt21ios_base_library_initv'

function Test-BytesContain([byte[]] $Bytes, [string] $Text) {
    # Latin-1 maps every byte to one char, so a string search is a byte search.
    return [Text.Encoding]::Latin1.GetString($Bytes).Contains($Text, [StringComparison]::Ordinal)
}

function Get-SystemLibStdCxx {
    # ldconfig lives in /sbin, which a non-root user's PATH on Debian lacks; without it the usual paths still serve.
    $ldconfig = @(Get-Command ldconfig -CommandType Application -ErrorAction Ignore | ForEach-Object Source) + '/sbin/ldconfig' |
        Where-Object { Test-Path -LiteralPath $_ } | Select-Object -First 1
    $candidates = @()
    if ($ldconfig) {
        $candidates += @(& $ldconfig -p 2>$null | Where-Object { $_ -match 'libstdc\+\+\.so\.6 \(.*x86-64' } |
            ForEach-Object { ($_ -split '=>')[-1].Trim() })
    }
    $candidates += '/lib/x86_64-linux-gnu/libstdc++.so.6', '/usr/lib64/libstdc++.so.6'
    return $candidates | Where-Object { Test-Path -LiteralPath $_ } | Select-Object -First 1
}

# Sets VER_FLG_WEAK on the .gnu.version_r auxiliary entry named $VersionName. Returns $true if changed.
function Set-ElfVersionRequirementWeak([string] $Path, [string] $VersionName) {
    $bytes = [IO.File]::ReadAllBytes($Path)
    if ($bytes.Length -lt 64 -or $bytes[0] -ne 0x7f -or $bytes[4] -ne 2 -or $bytes[5] -ne 1) {
        throw "$Path is not a little-endian ELF64 file."
    }
    $u16 = { param($o) [BitConverter]::ToUInt16($bytes, $o) }
    $u32 = { param($o) [BitConverter]::ToUInt32($bytes, $o) }
    $u64 = { param($o) [long][BitConverter]::ToUInt64($bytes, $o) }
    $sectionTable = & $u64 0x28; $entrySize = & $u16 0x3A; $count = & $u16 0x3C
    $sections = for ($i = 0; $i -lt $count; $i++) {
        $h = $sectionTable + $i * $entrySize
        [pscustomobject]@{ Type = (& $u32 ($h + 4)); Offset = (& $u64 ($h + 24)); Link = (& $u32 ($h + 40)); Info = (& $u32 ($h + 44)) }
    }
    $verneed = $sections | Where-Object Type -eq 0x6ffffffe | Select-Object -First 1
    if (-not $verneed) { throw "$Path has no .gnu.version_r section." }
    $strings = $sections[$verneed.Link].Offset
    $readString = { param($o) $end = [Array]::IndexOf($bytes, [byte]0, $o); [Text.Encoding]::ASCII.GetString($bytes, $o, $end - $o) }

    $entry = $verneed.Offset
    for ($n = 0; $n -lt $verneed.Info; $n++) {
        $auxCount = & $u16 ($entry + 2); $aux = $entry + (& $u32 ($entry + 8))
        for ($a = 0; $a -lt $auxCount; $a++) {
            if ((& $readString ($strings + (& $u32 ($aux + 8)))) -eq $VersionName) {
                $flags = & $u16 ($aux + 4)
                if ($flags -band 2) { return $false }
                [BitConverter]::GetBytes([uint16]($flags -bor 2)).CopyTo($bytes, $aux + 4)
                [IO.File]::WriteAllBytes($Path, $bytes)
                return $true
            }
            $aux += & $u32 ($aux + 12)
        }
        $entry += & $u32 ($entry + 12)
    }
    throw "$Path does not require $VersionName."
}

function Install-TorchSharpNativeCompat {
    <#
    .SYNOPSIS
    Marks GLIBCXX_3.4.32 weak in libLibTorchSharp.so in $Directory when the system libstdc++ lacks it. Idempotent.
    Writes native-compat.txt next to it describing what was done (read by Get-DareEnvironment).
    #>
    param([Parameter(Mandatory)] [string] $Directory, [switch] $Quiet)

    $library = Join-Path $Directory 'libLibTorchSharp.so'
    $report = Join-Path $Directory 'native-compat.txt'
    if (-not $IsLinux -or -not (Test-Path -LiteralPath $library)) { return }

    $systemLibrary = Get-SystemLibStdCxx
    if (-not $systemLibrary) { throw 'Native compat: cannot find the system libstdc++.so.6 (neither ldconfig -p nor /lib/x86_64-linux-gnu or /usr/lib64 has one).' }
    if (Test-BytesContain ([IO.File]::ReadAllBytes($systemLibrary)) $script:MissingVersion) {
        "not needed: $systemLibrary provides $($script:MissingVersion)" | Set-Content -LiteralPath $report
        return
    }
    if (-not (Test-BytesContain ([IO.File]::ReadAllBytes($library)) $script:MissingVersion)) {
        "not needed: $library does not require $($script:MissingVersion)" | Set-Content -LiteralPath $report
        return
    }

    $changed = Set-ElfVersionRequirementWeak -Path $library -VersionName $script:MissingVersion
    $summary = "applied: $systemLibrary lacks $($script:MissingVersion); in this copy of libLibTorchSharp.so " +
        "the $($script:MissingVersion) entry of .gnu.version_r is marked weak (no relocation uses its only symbol, $($script:VersionedSymbol))."
    $summary | Set-Content -LiteralPath $report
    if (-not $Quiet) { Write-Host "Native compat $summary$(if (-not $changed) { ' (already marked)' })" }
}
