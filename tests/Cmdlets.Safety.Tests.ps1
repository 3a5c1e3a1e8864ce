# What -Force may replace, and what kills, signals and a full disk leave on disk (issue #10, output side).
BeforeDiscovery {
    # A real tmpfs mount is used for the mount-point and disk-full cases; where mounting is not permitted they are
    # reported as skipped, never faked.
    $probe = Join-Path ([IO.Path]::GetTempPath()) "dare-mount-probe-$PID"
    New-Item -ItemType Directory $probe -Force | Out-Null
    $script:CanMount = $false
    if ($IsLinux) {
        & mount -t tmpfs -o size=1m dare-probe $probe 2>$null
        if ($LASTEXITCODE -eq 0) { $script:CanMount = $true; & umount $probe }
    }
    # chattr +i (root on ext4 and similar) makes a folder refuse new entries with EPERM.
    $script:CanMakeImmutable = $false
    if ($IsLinux -and (Get-Command chattr -ErrorAction Ignore)) {
        & chattr +i $probe 2>$null
        if ($LASTEXITCODE -eq 0) {
            $null = New-Item -ItemType Directory (Join-Path $probe 'x') -ErrorAction Ignore
            $script:CanMakeImmutable = -not (Test-Path (Join-Path $probe 'x'))
            & chattr -i $probe
        }
    }
    Remove-Item $probe -Recurse -Force
}

BeforeAll {
    . (Join-Path $PSScriptRoot 'TestHelpers.ps1')
    Import-DareTestModule
    $script:work = Join-Path $TestDrive 'safety'
    $script:base = New-SyntheticCheckpoint (Join-Path $work 'base') -HiddenSize 64 -Layers 1 -VocabSize 128 -Seed 1
    $script:tune = New-SyntheticCheckpoint (Join-Path $work 'ft1') -BaseModel $base.Path -Seed 2
    function Get-Tree([string] $Folder) {
        Get-ChildItem -LiteralPath $Folder -Recurse -Force -File | Sort-Object FullName | ForEach-Object { "$($_.FullName)=$((Get-FileHash -LiteralPath $_.FullName).Hash)" }
    }
    function Get-DeviceOf([string] $Path) { [long] (& stat -c %d $Path) }
}

Describe 'Export-Safetensors -Force: what it may replace' {
    It 'refuses the current location holding thesis.txt with OutputNotReplaceable, and deletes nothing' {
        $here = Join-Path $work 'thesis'
        New-Item -ItemType Directory $here | Out-Null
        Set-Content (Join-Path $here 'thesis.txt') 'three years of work'
        Push-Location $here
        try {
            $failure = $null
            try { Get-TaskVector $base.Path $tune.Path | Export-Safetensors . -Force -ErrorAction Stop } catch { $failure = $_ }
        }
        finally { Pop-Location }
        $failure.FullyQualifiedErrorId | Should -Be 'OutputNotReplaceable,Dare.PowerShell.ExportSafetensorsCommand'
        $failure.TargetObject | Should -Be $here
        $failure.Exception.Message | Should -BeLike "*$here*current location*"
        (Get-ChildItem -LiteralPath $here -Force).Name | Should -Be 'thesis.txt'
        Get-Content (Join-Path $here 'thesis.txt') | Should -Be 'three years of work'
    }

    It 'refuses another folder holding thesis.txt, naming the file, before any work' {
        $folder = Join-Path $work 'papers'
        New-Item -ItemType Directory $folder | Out-Null
        Set-Content (Join-Path $folder 'thesis.txt') 'draft'
        Copy-Item (Join-Path $base.Path 'config.json') $folder
        $failure = $null
        try { Get-TaskVector $base.Path $tune.Path | Export-Safetensors $folder -Force -ErrorAction Stop } catch { $failure = $_ }
        $failure.FullyQualifiedErrorId | Should -Be 'OutputNotReplaceable,Dare.PowerShell.ExportSafetensorsCommand'
        $failure.Exception.Message | Should -BeLike "*'thesis.txt'*"
        @(Get-ChildItem -LiteralPath $folder -Force).Name | Sort-Object | Should -Be @('config.json', 'thesis.txt')
        Get-DareTempFolders $work | Should -BeNullOrEmpty
    }

    It 'refuses an input model as the destination, even with -WhatIf' {
        $before = Get-Tree $base.Path
        { Get-TaskVector $base.Path $tune.Path | Export-Safetensors $base.Path -Force -WhatIf } | Should -Throw -ErrorId 'OutputNotReplaceable,Dare.PowerShell.ExportSafetensorsCommand'
        Get-Tree $base.Path | Should -Be $before
    }

    It 'Invoke-DareMerge -Force refuses an output folder that holds the input models, and they stay intact' {
        $recipe = Join-Path $work 'r.yml'
        Set-Content -LiteralPath $recipe -Value "merge_method: linear`nbase_model: ./base`nmodels:`n  - model: ./ft1`n    parameters: { weight: 0.5 }`n"
        $before = Get-Tree $work
        $failure = $null
        try { Invoke-DareMerge $recipe -OutputPath $work -Force -ErrorAction Stop } catch { $failure = $_ }
        $failure.FullyQualifiedErrorId | Should -Be 'OutputNotReplaceable,Dare.PowerShell.InvokeDareMergeCommand'
        $failure.Exception.Message | Should -BeLike "'$work'*'base'*"
        Get-Tree $work | Should -Be $before
    }

    It 'replaces a symbolic link''s target folder and keeps the link' {
        $target = Join-Path $work 'store'
        Copy-Item -Recurse $base.Path $target
        $link = Join-Path $work 'current'
        New-Item -ItemType SymbolicLink -Path $link -Target $target | Out-Null
        $result = Get-TaskVector $base.Path $tune.Path | Export-Safetensors $link -Force
        (Get-Item -LiteralPath $link -Force).LinkTarget | Should -Be $target
        (Read-SafetensorsHeader (Join-Path $target 'model.safetensors')).Metadata.dare_content | Should -Be 'model'
        $result.Path | Should -Be $link
        Get-DareTempFolders $work | Should -BeNullOrEmpty
    }
}

Describe 'Kills and signals during an export' {
    BeforeAll {
        # ~27 MB; the export (DARE and TIES over two inputs, 1 MB shards) takes a second or more and its first shard
        # holds data early. The fine-tune is a copy: the values do not matter here, only that the export runs.
        $script:bigBase = New-SyntheticCheckpoint (Join-Path $work 'big-base') -HiddenSize 384 -Layers 4 -VocabSize 8192
        $script:bigTune = Join-Path $work 'big-ft'
        Copy-Item -Recurse $bigBase.Path $bigTune
        $script:oldHashes = Get-FolderHashes $base.Path
        # One child pwsh per signal, all at once: each replaces its own copy of an old model with -Force and is sent
        # its signal once its temporary folder holds tensor data.
        $manifest = Join-Path $RepoRoot 'out/Dare/Dare.psd1'
        $pwsh = Get-PwshCommand
        $script:runs = foreach ($signal in 'TERM', 'HUP', 'KILL') {
            $parent = Join-Path $work "signal-$signal"
            New-Item -ItemType Directory $parent | Out-Null
            Copy-Item -Recurse $base.Path (Join-Path $parent 'out')
            $script = "Import-Module '$manifest'; Get-TaskVector '$($bigBase.Path)' '$bigTune','$bigTune' | Invoke-DareDrop 0.5 -Seed 1 | Merge-Ties | Export-Safetensors '$parent/out' -Force -MaxShardSize 1MB"
            $info = [Diagnostics.ProcessStartInfo]::new($pwsh[0])
            foreach ($argument in @($pwsh | Select-Object -Skip 1) + @('-NoProfile', '-NonInteractive', '-Command', $script)) { $info.ArgumentList.Add($argument) }
            $info.RedirectStandardOutput = $true
            $info.RedirectStandardError = $true
            $process = [Diagnostics.Process]::Start($info)
            [pscustomobject]@{ Signal = $signal; Parent = $parent; Process = $process; Output = $process.StandardOutput.ReadToEndAsync(); Errors = $process.StandardError.ReadToEndAsync(); SentWhileWriting = $false }
        }
        $deadline = [DateTime]::UtcNow.AddSeconds(60)
        $pending = [Collections.Generic.List[object]]::new([object[]] $runs)
        while ($pending.Count -gt 0 -and [DateTime]::UtcNow -lt $deadline) {
            foreach ($run in @($pending)) {
                $data = @(Get-ChildItem -LiteralPath $run.Parent -Force -Directory -Filter '.dare-*' | Get-ChildItem -Filter '*.safetensors' | Where-Object Length -gt 0)
                if ($data -and -not $run.Process.HasExited) {
                    & kill -s $run.Signal $run.Process.Id
                    $run.SentWhileWriting = $true
                }
                if ($data -or $run.Process.HasExited) { $null = $pending.Remove($run) }
            }
            Start-Sleep -Milliseconds 10
        }
        foreach ($run in $runs) {
            if (-not $run.Process.WaitForExit(60000)) { $run.Process.Kill() }
        }
    }

    It 'SIG<Signal> during the export: exit code <Code>, the old model stays, the temporary folder is gone' -ForEach @(
        @{ Signal = 'TERM'; Code = 143 }, @{ Signal = 'HUP'; Code = 129 }
    ) {
        $run = $runs | Where-Object Signal -eq $Signal
        $run.SentWhileWriting | Should -BeTrue -Because "the signal must arrive while the export writes ($($run.Errors.Result))"
        $run.Process.ExitCode | Should -Be $Code
        $hashes = Get-FolderHashes (Join-Path $run.Parent 'out')
        $hashes.Keys | Should -Be $oldHashes.Keys
        foreach ($name in $oldHashes.Keys) { $hashes[$name] | Should -Be $oldHashes[$name] -Because $name }
        Get-DareTempFolders $run.Parent | Should -BeNullOrEmpty
    }

    It 'kill -9 during the export: the old model stays, and the next export reclaims the temporary folder with a warning' {
        $run = $runs | Where-Object Signal -eq 'KILL'
        $run.SentWhileWriting | Should -BeTrue
        $run.Process.ExitCode | Should -Be 137
        $out = Join-Path $run.Parent 'out'
        $hashes = Get-FolderHashes $out
        foreach ($name in $oldHashes.Keys) { $hashes[$name] | Should -Be $oldHashes[$name] -Because $name }
        $left = @(Get-DareTempFolders $run.Parent)
        ($left.Name | Sort-Object) -join ',' | Should -Match '^\.dare-[0-9a-f]{8},\.dare-[0-9a-f]{8}\.owner$'
        $orphan = $left | Where-Object PSIsContainer

        $warnings = $null
        Get-TaskVector $base.Path $tune.Path | Export-Safetensors $out -Force -WarningVariable warnings -WarningAction SilentlyContinue | Out-Null

        @($warnings).Count | Should -Be 1
        "$($warnings[0])" | Should -BeLike "Reclaimed '$($orphan.FullName)' (*B), left by process $($run.Process.Id) *"
        Get-DareTempFolders $run.Parent | Should -BeNullOrEmpty
        (Read-SafetensorsHeader (Join-Path $out 'model.safetensors')).Metadata.dare_content | Should -Be 'model'
    }
}

Describe 'New-SyntheticCheckpoint and Ctrl+C' {
    It 'stops within seconds when the pipeline is stopped, leaving no output and no temporary folder' {
        $parent = Join-Path $work 'synthetic-stop'
        New-Item -ItemType Directory $parent | Out-Null
        # About 1.5 GB if it ran to the end.
        $run = Invoke-StoppedInChild "New-SyntheticCheckpoint '$parent/big' -HiddenSize 1024 -Layers 24 -VocabSize 32000 -DType float32" $parent
        $run.Completed | Should -BeFalse
        $run.StopSeconds | Should -BeLessThan 5
        $run.State | Should -Be 'Stopped'
        Join-Path $parent 'big' | Should -Not -Exist
        Get-DareTempFolders $parent | Should -BeNullOrEmpty
    }
}

Describe 'Mount points and a full disk' -Skip:(-not $CanMount) {
    BeforeAll {
        $script:mounts = [Collections.Generic.List[string]]::new()
        function New-TmpfsMount([string] $Path, [string] $Size) {
            New-Item -ItemType Directory $Path | Out-Null
            & mount -t tmpfs -o "size=$Size" dare-test $Path
            if ($LASTEXITCODE -ne 0) { throw "mount -t tmpfs $Path failed" }
            $mounts.Add($Path)
        }
    }
    AfterAll { foreach ($mount in $mounts) { & umount $mount } }

    It 'writes an empty mount point on its own file system, and replaces it there with -Force' {
        $mount = Join-Path $work 'mounted'
        New-TmpfsMount $mount '64m'
        (Get-DeviceOf $mount) | Should -Not -Be (Get-DeviceOf $work)

        Get-TaskVector $base.Path $tune.Path | Export-Safetensors $mount | Out-Null
        Get-TaskVector $base.Path $tune.Path | Merge-Linear | Export-Safetensors $mount -Force | Out-Null

        & mountpoint -q $mount
        $LASTEXITCODE | Should -Be 0
        Get-DeviceOf (Join-Path $mount 'model.safetensors') | Should -Be (Get-DeviceOf $mount)
        (Read-SafetensorsHeader (Join-Path $mount 'model.safetensors')).Metadata.dare_recipe | Should -BeLike '*linear*'
        @(Get-ChildItem -LiteralPath $mount -Force | Where-Object Name -like '.dare-*') | Should -BeNullOrEmpty
        Get-DareTempFolders $work | Should -BeNullOrEmpty
    }

    It 'turns a full disk while copying side files into OutputWriteFailed naming the path, and leaves nothing' {
        $source = Join-Path $work 'big-tokenizer'
        Copy-Item -Recurse $base.Path $source
        # Valid JSON (tokenizers are read to align vocabularies), 2 MB: larger than the 1 MB disk.
        [IO.File]::WriteAllText((Join-Path $source 'tokenizer.json'), '{"padding": "' + (' ' * 2MB) + '"}')
        $small = Join-Path $work 'small-disk'
        New-TmpfsMount $small '1m'

        $failure = $null
        try { Get-TaskVector $source $tune.Path | Export-Safetensors (Join-Path $small 'out') -ErrorAction Stop } catch { $failure = $_ }

        $failure.FullyQualifiedErrorId | Should -Be 'OutputWriteFailed,Dare.PowerShell.ExportSafetensorsCommand'
        $failure.CategoryInfo.Category | Should -Be 'WriteError'
        $failure.TargetObject | Should -BeLike "$small/.dare-*"
        $failure.Exception.Message | Should -BeLike "Could not copy side files into '$small/.dare-*'*"
        @(Get-ChildItem -LiteralPath $small -Force) | Should -BeNullOrEmpty
    }
}

Describe 'A folder that refuses writes' -Skip:(-not $CanMakeImmutable) {
    It 'turns EPERM when creating the temporary folder into OutputWriteFailed naming the folder, and writes nothing' {
        $locked = Join-Path $work 'locked'
        New-Item -ItemType Directory $locked | Out-Null
        & chattr +i $locked
        try {
            $failure = $null
            try { Get-TaskVector $base.Path $tune.Path | Export-Safetensors (Join-Path $locked 'out') -ErrorAction Stop } catch { $failure = $_ }
        }
        finally { & chattr -i $locked }
        $failure.FullyQualifiedErrorId | Should -Be 'OutputWriteFailed,Dare.PowerShell.ExportSafetensorsCommand'
        $failure.TargetObject | Should -Be $locked
        $failure.Exception.Message | Should -BeLike "Could not create a temporary folder in '$locked': *"
        @(Get-ChildItem -LiteralPath $locked -Force) | Should -BeNullOrEmpty
    }

    It 'puts the new model in place when the old one cannot be deleted, and the next export reclaims the old one' {
        $parent = Join-Path $work 'undeletable'
        $out = Join-Path $parent 'out'
        New-Item -ItemType Directory $parent | Out-Null
        Copy-Item -Recurse $base.Path $out
        $pinned = Join-Path $out 'config.json'
        & chattr +i $pinned
        try {
            $warnings = $null
            Get-TaskVector $base.Path $tune.Path | Export-Safetensors $out -Force -WarningVariable warnings -WarningAction SilentlyContinue | Out-Null
        }
        finally {
            foreach ($folder in @($out) + @(Get-ChildItem -LiteralPath $parent -Force -Directory -Filter '.dare-*').FullName) {
                if (Test-Path -LiteralPath (Join-Path $folder 'config.json')) { & chattr -i (Join-Path $folder 'config.json') }
            }
        }
        (Read-SafetensorsHeader (Join-Path $out 'model.safetensors')).Metadata.dare_content | Should -Be 'model'
        $old = @(Get-ChildItem -LiteralPath $parent -Force -Directory -Filter '.dare-*')
        $old.Count | Should -Be 1
        "$(@($warnings)[0])" | Should -BeLike "*the old one at '$($old[0].FullName)' could not be removed*"

        $warnings = $null
        Get-TaskVector $base.Path $tune.Path | Export-Safetensors (Join-Path $parent 'second') -WarningVariable warnings -WarningAction SilentlyContinue | Out-Null
        "$(@($warnings)[0])" | Should -BeLike "Reclaimed '$($old[0].FullName)'*could not delete*"
        Get-DareTempFolders $parent | Should -BeNullOrEmpty
    }
}
