# Partitioned exports (-Partition i/N, Complete-DareExport) run by PowerShell itself (ForEach-Object -Parallel,
# Start-ThreadJob) and by Slurm (a job array and a dependent completion job): the published folder is byte for byte
# what one process writes. SSH remoting (Invoke-Command -HostName) is documented in the README, not tested: no sshd here.
BeforeAll {
    . (Join-Path $PSScriptRoot 'TestHelpers.ps1')
    Import-DareTestModule

    $script:Manifest = Join-Path $RepoRoot 'out/Dare/Dare.psd1'
    $script:Models = Join-Path $TestDrive 'models'
    $script:base = New-SyntheticCheckpoint (Join-Path $Models 'base') -HiddenSize 64 -Layers 2 -VocabSize 128
    $script:math = New-SyntheticCheckpoint (Join-Path $Models 'math') -BaseModel $base -Seed 2
    $script:code = New-SyntheticCheckpoint (Join-Path $Models 'code') -BaseModel $base -Seed 3
    $script:Recipe = Join-Path $Models 'dare-ties.yml'
    Set-Content -LiteralPath $Recipe -Value @'
merge_method: dare_ties
base_model: ./base
models:
  - model: ./math
    parameters: { weight: 1.0, density: 0.5 }
  - model: ./code
    parameters: { weight: 0.5, density: 0.7 }
parameters: { normalize: true }
random_seed: 7
out_dtype: bfloat16
output: { max_shard_size: 12000 }
'@
    $script:SingleRecipe = (Invoke-DareMerge -LiteralPath $Recipe -OutputLiteralPath (Join-Path $TestDrive 'single-recipe')).Path
    $script:SinglePlan = (Get-TaskVector -Base $base -FineTuned $math, $code | Invoke-DareDrop -DropRate 0.5 -Seed 9 | Merge-Ties -KeepRatio 0.5 |
        Export-Safetensors -Path (Join-Path $TestDrive 'single-plan') -MaxShardSize 12KB).Path

    # Names and SHA-256 of every entry (files and folders) of a folder, so extra or missing entries show too.
    function Get-Tree([string] $Folder) {
        Get-ChildItem -LiteralPath $Folder -Force | Sort-Object Name -CaseSensitive |
            ForEach-Object { '{0} {1}' -f $_.Name, ($_.PSIsContainer ? 'folder' : (Get-FileHash -LiteralPath $_.FullName -Algorithm SHA256).Hash) }
    }
    # Staging and temporary folders left beside an output.
    function Get-Leftovers([string] $Output) {
        @(Get-ChildItem -LiteralPath (Split-Path $Output) -Force -Directory | Where-Object Name -like ".$(Split-Path -Leaf $Output).dare-*")
    }
}

Describe 'Export-Safetensors -Partition and Complete-DareExport' {
    It 'the fixtures make several shards, so partitions have work to share' {
        @(Get-ChildItem $SinglePlan -Filter 'model-*.safetensors').Count | Should -BeGreaterOrEqual 4
        @(Get-ChildItem $SingleRecipe -Filter 'model-*.safetensors').Count | Should -BeGreaterOrEqual 4
    }

    It 'four partitions run with ForEach-Object -Parallel publish the single-process export byte for byte' {
        $out = Join-Path $TestDrive 'parallel'
        $results = 0..3 | ForEach-Object -ThrottleLimit 4 -Parallel {
            Import-Module $using:Manifest
            Get-TaskVector -Base $using:base -FineTuned $using:math, $using:code | Invoke-DareDrop -DropRate 0.5 -Seed 9 | Merge-Ties -KeepRatio 0.5 |
                Export-Safetensors -Path $using:out -MaxShardSize 12KB -Partition "$_/4"
        }
        @($results).Count | Should -Be 4
        @($results | Where-Object Published).Count | Should -Be 1
        ($results | Where-Object Published).Path | Should -Be $out
        ($results.Partition | Sort-Object) | Should -Be @('0/4', '1/4', '2/4', '3/4')
        Get-Tree $out | Should -Be (Get-Tree $SinglePlan)
        Get-Leftovers $out | Should -BeNullOrEmpty
    }

    It 'Invoke-DareMerge partitions run as thread jobs, started in reverse order, publish the recipe''s single-process output' {
        $out = Join-Path $TestDrive 'threadjobs'
        $jobs = foreach ($index in 2, 1, 0) {
            Start-ThreadJob -ArgumentList $Manifest, $Recipe, $out, $index {
                param($manifest, $recipe, $out, $index)
                Import-Module $manifest
                Invoke-DareMerge -LiteralPath $recipe -OutputLiteralPath $out -Partition "$index/3"
            }
        }
        $results = $jobs | Receive-Job -Wait -AutoRemoveJob -ErrorAction Stop
        @($results | Where-Object Published).Count | Should -Be 1
        Get-Tree $out | Should -Be (Get-Tree $SingleRecipe)
        Get-Leftovers $out | Should -BeNullOrEmpty
    }

    It 'reports the partition in its progress and its result' {
        $out = Join-Path $TestDrive 'progress'
        $run = Invoke-InRunspace -ArgumentList $base, $math, $out {
            param($base, $math, $out)
            Get-TaskVector -Base $base -FineTuned $math | Export-Safetensors -Path $out -MaxShardSize 12KB -Partition 1/2
        }
        $run.Errors | Should -BeNullOrEmpty
        $run.Progress.Activity | Select-Object -Unique | Should -Be 'Merging partition 1/2'
        $run.Output.Partition | Should -Be '1/2'
        $run.Output.Published | Should -BeFalse
        $run.Output.Path | Should -Be (Join-Path (Split-Path $out) ".progress.dare-partitions/part-00001-of-00002")
        # Its files are exactly the shards it sealed there, and nothing is at the destination yet.
        $run.Output.Files | Should -Be @(Get-ChildItem $run.Output.Path -Filter *.safetensors | Sort-Object Name -CaseSensitive | ForEach-Object FullName)
        $out | Should -Not -Exist
    }

    It 'Complete-DareExport names the partitions still missing, and publishes once they are there' {
        $out = Join-Path $TestDrive 'complete'
        $plan = Get-TaskVector -Base $base -FineTuned $math, $code | Invoke-DareDrop -DropRate 0.5 -Seed 9 | Merge-Ties -KeepRatio 0.5
        $null = $plan | Export-Safetensors -Path $out -MaxShardSize 12KB -Partition 1/3
        { Complete-DareExport -Path $out } | Should -Throw -ErrorId 'PartitionIncomplete,Dare.PowerShell.CompleteDareExportCommand' -ExpectedMessage '*partition(s) 0, 2 of 3*'

        # Another process holds the completion: the last partition seals and leaves publishing to it.
        $staging = Join-Path $TestDrive '.complete.dare-partitions'
        Set-Content (Join-Path $staging 'complete.lock') 'process 1 on node7'
        ($plan | Export-Safetensors -Path $out -MaxShardSize 12KB -Partition 0/3).Published | Should -BeFalse
        ($plan | Export-Safetensors -Path $out -MaxShardSize 12KB -Partition 2/3).Published | Should -BeFalse
        { Complete-DareExport -Path $out } | Should -Throw -ErrorId 'PartitionCompletionBusy,Dare.PowerShell.CompleteDareExportCommand' -ExpectedMessage '*node7*'

        Remove-Item (Join-Path $staging 'complete.lock')
        Complete-DareExport -Path $out -WhatIf
        $out | Should -Not -Exist
        $result = Complete-DareExport -Path $out
        $result.Path | Should -Be $out
        # Ordinal order, as the export lists its files (README.md, the model card, sorts before config.json).
        [string[]] $onDisk = @(Get-ChildItem $out -File | ForEach-Object FullName)
        [Array]::Sort($onDisk, [StringComparer]::Ordinal)
        $result.Files | Should -Be $onDisk
        Get-Tree $out | Should -Be (Get-Tree $SinglePlan)
        $staging | Should -Not -Exist

        # Run again (a scheduler's completion job after the last partition published): a warning, nothing else.
        Complete-DareExport -Path $out -WarningVariable warnings -WarningAction SilentlyContinue | Should -BeNullOrEmpty
        $warnings | Should -BeLike '*already holds a model*'
        { Complete-DareExport -Path (Join-Path $TestDrive 'never-started') } | Should -Throw -ErrorId 'PartitionIncomplete,Dare.PowerShell.CompleteDareExportCommand'
    }

    It 'refuses a partition of another plan and names the staging folder to delete' {
        $out = Join-Path $TestDrive 'mismatch'
        $null = Get-TaskVector -Base $base -FineTuned $math | Invoke-DareDrop -DropRate 0.5 -Seed 1 | Export-Safetensors -Path $out -MaxShardSize 12KB -Partition 0/2
        { Get-TaskVector -Base $base -FineTuned $math | Invoke-DareDrop -DropRate 0.5 -Seed 2 | Export-Safetensors -Path $out -MaxShardSize 12KB -Partition 1/2 } |
            Should -Throw -ErrorId 'PartitionPlanMismatch,Dare.PowerShell.ExportSafetensorsCommand' -ExpectedMessage "*delete '*.mismatch.dare-partitions'*"
        $out | Should -Not -Exist
    }

    It 'refuses -Partition <Text>' -TestCases @(@{ Text = '2/2' }, @{ Text = '1' }, @{ Text = '0/0' }) {
        { Get-TaskVector -Base $base -FineTuned $math | Export-Safetensors -Path (Join-Path $TestDrive 'bad') -Partition $Text } |
            Should -Throw -ErrorId 'InvalidParameter,Dare.PowerShell.ExportSafetensorsCommand' -ExpectedMessage '*counted from 0 to N-1*'
        Join-Path $TestDrive '.bad.dare-partitions' | Should -Not -Exist
    }
}

Describe 'Slurm: examples/slurm-partitioned-merge.sh' {
    BeforeAll {
        # A single-node Slurm in a temporary folder: slurmctld and slurmd as root with auth/none, on free ports.
        $script:SlurmSkip = $null
        $script:Slurm = Join-Path $TestDrive 'slurm'
        if (-not (Get-Command slurmctld, slurmd, sbatch, squeue -ErrorAction Ignore | Measure-Object).Count -eq 4) {
            $script:SlurmSkip = 'slurm-wlm not installed (apt-get install slurm-wlm; see README "Merging on a cluster")'
        }
        elseif ((& id -u) -ne '0') {
            $script:SlurmSkip = 'the test Slurm runs its daemons as root (SlurmUser=root); run the suite as root'
        }
        else {
            New-Item -ItemType Directory (Join-Path $Slurm 'state'), (Join-Path $Slurm 'spool') | Out-Null
            $listener = [Net.Sockets.TcpListener]::new([Net.IPAddress]::Loopback, 0); $listener.Start()
            $port = $listener.LocalEndpoint.Port; $listener.Stop()
            $node = (& hostname -s).Trim()
            $script:SlurmConf = Join-Path $Slurm 'slurm.conf'
            Set-Content $SlurmConf @"
ClusterName=dare-test
SlurmctldHost=$node(127.0.0.1)
AuthType=auth/none
CredType=cred/none
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$port
SlurmdPort=$($port + 1)
StateSaveLocation=$Slurm/state
SlurmdSpoolDir=$Slurm/spool
SlurmctldPidFile=$Slurm/slurmctld.pid
SlurmdPidFile=$Slurm/slurmd.pid
SlurmctldLogFile=$Slurm/slurmctld.log
SlurmdLogFile=$Slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/builtin
SchedulerParameters=sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName=$node NodeAddr=127.0.0.1 CPUs=$([Environment]::ProcessorCount) RealMemory=1000 State=UNKNOWN
PartitionName=dare Nodes=$node Default=YES MaxTime=INFINITE State=UP
"@
            $env:SLURM_CONF = $SlurmConf
            & slurmctld -c -i -f $SlurmConf 2>&1 | Out-Null
            & slurmd -c -f $SlurmConf 2>&1 | Out-Null
            $deadline = [DateTime]::UtcNow.AddSeconds(20)
            while ([DateTime]::UtcNow -lt $deadline -and -not ((& sinfo -h -o '%t' 2>$null) -match '^idle')) { Start-Sleep -Milliseconds 250 }
            if (-not ((& sinfo -h -o '%t' 2>$null) -match '^idle')) {
                $log = Get-Content (Join-Path $Slurm 'slurmctld.log'), (Join-Path $Slurm 'slurmd.log') -Tail 3 -ErrorAction Ignore
                $script:SlurmSkip = "the Slurm daemons did not start: $($log -join ' | ')"
            }
        }
    }

    AfterAll {
        if ($env:SLURM_CONF) { & scancel --full --quiet --user root 2>$null }
        foreach ($daemon in 'slurmd', 'slurmctld') {
            $pidFile = Join-Path $Slurm "$daemon.pid"
            if (Test-Path $pidFile) { Stop-Process -Id ([int](Get-Content $pidFile)) -ErrorAction Ignore }
        }
        Remove-Item Env:SLURM_CONF -ErrorAction Ignore
    }

    It 'a job array of 3 partitions and its completion job publish the single-process output byte for byte' {
        if ($SlurmSkip) { Set-ItResult -Skipped -Because $SlurmSkip; return }
        $out = Join-Path $TestDrive 'slurm-out'
        $env:DARE_PWSH = (Get-PwshCommand) -join ' '
        $env:DARE_MODULE = $Manifest
        try {
            Push-Location $Slurm
            $ids = (& bash (Join-Path $RepoRoot 'examples/slurm-partitioned-merge.sh') $Recipe $out 3 -o "$Slurm/job-%A_%a.log") -split ' '
            Pop-Location
        }
        finally { Remove-Item Env:DARE_PWSH, Env:DARE_MODULE -ErrorAction Ignore }
        $LASTEXITCODE | Should -Be 0
        $ids.Count | Should -Be 2
        $deadline = [DateTime]::UtcNow.AddSeconds(50)
        while ([DateTime]::UtcNow -lt $deadline -and (& squeue -h -j ($ids -join ','))) { Start-Sleep -Milliseconds 250 }
        $logs = Get-ChildItem $Slurm -Filter 'job-*.log' | ForEach-Object { "--- $($_.Name)"; Get-Content $_ }
        & squeue -h -j ($ids -join ',') | Should -BeNullOrEmpty -Because "the jobs should finish within 50 s: $($logs -join "`n")"
        @(Get-ChildItem $Slurm -Filter 'job-*.log').Count | Should -Be 4 -Because 'three partitions and one completion ran'
        Get-Tree $out | Should -Be (Get-Tree $SingleRecipe) -Because ($logs -join "`n")
        Get-Leftovers $out | Should -BeNullOrEmpty
    }
}
