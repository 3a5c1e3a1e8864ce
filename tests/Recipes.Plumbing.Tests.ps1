# Invoke-DareMerge as PowerShell plumbing (piped lines, literal paths, resuming a batch, progress, verbose) and
# recipe limits that used to end the host (deep nesting, cycles, size). What is on disk is checked after each.
BeforeAll {
    . (Join-Path $PSScriptRoot 'TestHelpers.ps1')
    Import-DareTestModule

    $script:Work = Join-Path ([IO.Path]::GetTempPath()) "dare-plumbing-$([guid]::NewGuid().ToString('N'))"
    New-Item -ItemType Directory $Work | Out-Null
    $base = New-SyntheticCheckpoint (Join-Path $Work 'base') -HiddenSize 64 -Layers 2 -VocabSize 128 -DType float32
    $null = New-SyntheticCheckpoint (Join-Path $Work 'math') -BaseModel $base -Seed 11 -DType float32
    $null = New-SyntheticCheckpoint (Join-Path $Work 'code') -BaseModel $base -Seed 12 -DType float32

    $script:Recipe = Join-Path $Work 'recipe.yml'
    Set-Content -LiteralPath $Recipe -Value "merge_method: ties`nbase_model: ./base`nmodels:`n  - model: ./math`n    parameters: { weight: 1, density: 0.5 }`n  - model: ./code`n    parameters: { weight: 0.5, density: 0.5 }`n"
    # The reference output: the recipe run from its path.
    $script:Reference = (Invoke-DareMerge $Recipe -OutputPath (Join-Path $Work 'reference')).Path
    $script:ReferenceHash = (Get-FileHash (Join-Path $Reference 'model.safetensors')).Hash

    # The first recipe draws its DARE seed (no random_seed); the second reads the first one's output.
    $script:Batch = Join-Path $Work 'batch.yml'
    Set-Content -LiteralPath $Batch -Value @"
name: first
merge_method: dare_linear
base_model: ./base
models:
  - model: ./math
    parameters: { weight: 1, density: 0.5 }
output: { path: ./first }
---
name: second
merge_method: task_arithmetic
base_model: ./base
models:
  - model: first
    parameters: { weight: 0.5 }
  - model: ./code
    parameters: { weight: 0.5 }
output: { path: ./second }
"@

    function Get-FolderEntries([string] $Folder) { @(Get-ChildItem -LiteralPath $Folder -Force -Recurse | ForEach-Object FullName | Sort-Object) }
    function Get-Stamp([string] $Folder) { (Get-Item -LiteralPath (Join-Path $Folder 'model.safetensors')).LastWriteTimeUtc.Ticks }
}

AfterAll {
    Remove-Item -LiteralPath $Work -Recurse -Force -ErrorAction Ignore
}

Describe 'Invoke-DareMerge recipe input' {
    It 'reads the lines of Get-Content (no -Raw) as one recipe and writes the same model as the file' {
        Push-Location $Work
        try { $result = Get-Content -LiteralPath $Recipe | Invoke-DareMerge -OutputPath (Join-Path $Work 'from-lines') }
        finally { Pop-Location }
        @($result).Count | Should -Be 1
        (Get-FileHash (Join-Path $result.Path 'model.safetensors')).Hash | Should -Be $ReferenceHash
    }

    It 'keeps line numbers of piped lines, leading empty lines included' {
        $record = $null
        try { '', '', 'merge_method: ties', 'models: [./math]', 'wieght: 1' | Invoke-DareMerge -OutputPath (Join-Path $Work 'never') } catch { $record = $_ }
        $record.FullyQualifiedErrorId | Should -Be 'RecipeUnknownKey,Dare.PowerShell.InvokeDareMergeCommand'
        $record.Exception.Message | Should -BeLike 'YAML text, line 5, column 1 (wieght):*'
    }

    It 'takes -LiteralPath and -OutputLiteralPath with wildcard characters in the names, and files piped from Get-ChildItem' {
        $literal = Join-Path $Work 'recipe[1].yml'
        Copy-Item -LiteralPath $Recipe -Destination $literal
        $output = Join-Path $Work 'out[1]'
        $result = Invoke-DareMerge -LiteralPath $literal -OutputLiteralPath $output
        $result.Path | Should -Be $output
        (Get-FileHash -LiteralPath (Join-Path $output 'model.safetensors')).Hash | Should -Be $ReferenceHash

        $piped = Get-Item -LiteralPath $literal | Invoke-DareMerge -OutputLiteralPath (Join-Path $Work 'piped[1]')
        (Get-FileHash -LiteralPath (Join-Path $piped.Path 'model.safetensors')).Hash | Should -Be $ReferenceHash
    }

    It 'refuses a recipe or output path on another provider, and both output parameters at once' {
        { Invoke-DareMerge -LiteralPath 'Env:/PATH' -OutputPath (Join-Path $Work 'never') } | Should -Throw -ErrorId 'NotFileSystemPath,Dare.PowerShell.InvokeDareMergeCommand'
        { Invoke-DareMerge $Recipe -OutputLiteralPath 'Function:/never' } | Should -Throw -ErrorId 'NotFileSystemPath,Dare.PowerShell.InvokeDareMergeCommand'
        { Invoke-DareMerge $Recipe -OutputPath (Join-Path $Work 'a') -OutputLiteralPath (Join-Path $Work 'b') } | Should -Throw -ErrorId 'InvalidParameter,Dare.PowerShell.InvokeDareMergeCommand'
        Test-Path (Join-Path $Work 'never'), (Join-Path $Work 'a'), (Join-Path $Work 'b') | Should -Be @($false, $false, $false)
    }

    It 'reports every mistake of a recipe in one error, each with its line, and writes nothing' {
        $bad = Join-Path $Work 'bad.yml'
        Set-Content -LiteralPath $bad -Value "merge_method: ties`nbase_model: ./base`nmodels:`n  - model: ./math`n    parameters: { wieght: 1 }`n  - model: ./code`n    parameters: { weight: x }`nout_dtype: int8`n"
        $before = Get-FolderEntries $Work
        $record = $null
        try { Invoke-DareMerge $bad -OutputPath (Join-Path $Work 'bad') } catch { $record = $_ }
        $record.FullyQualifiedErrorId | Should -Be 'RecipeInvalid,Dare.PowerShell.InvokeDareMergeCommand'
        $lines = $record.Exception.Message -split "`n"
        $lines[0] | Should -BeLike '*bad.yml has 3 mistakes; nothing was written:'
        $lines[1] | Should -Match 'line 5, column 19 \(models\[0\]\.parameters\.wieght\):.*Did you mean .weight.'
        $lines[2] | Should -Match "line 7, column 27 \(models\[1\]\.parameters\.weight\): must be a finite number, not 'x'"
        $lines[3] | Should -Match "line 8, column 12 \(out_dtype\): 'int8' is not supported"
        Get-FolderEntries $Work | Should -Be $before
    }
}

Describe 'Invoke-DareMerge recipe limits' {
    It 'ends a 50,000-deep recipe (file and -Yaml), a self-containing YAML key and cyclic objects with RecipeInvalid; the host lives on' {
        $deep = Join-Path $Work 'deep.yml'
        [IO.File]::WriteAllText($deep, "merge_method: linear`nmodels: " + ('[' * 50000))
        (Get-Item $deep).Length | Should -BeGreaterThan 50000
        $script = @"
Import-Module '$(Join-Path $RepoRoot 'out/Dare/Dare.psd1')'
try { Invoke-DareMerge -LiteralPath '$deep' -OutputPath '$Work/deep-out' } catch { 'file: ' + `$_.FullyQualifiedErrorId + ' ' + `$_.Exception.Message }
try { Invoke-DareMerge -Yaml ([IO.File]::ReadAllText('$deep')) -OutputPath '$Work/deep-out' } catch { 'yaml: ' + `$_.FullyQualifiedErrorId + ' ' + `$_.Exception.Message }
try { Invoke-DareMerge -Yaml "? &k [*k]``n: 1" -OutputPath '$Work/deep-out' } catch { 'alias: ' + `$_.FullyQualifiedErrorId + ' ' + `$_.Exception.Message }
`$h = @{ merge_method = 'linear'; models = @(@{ model = './math'; parameters = @{ weight = 1 } }) }
`$h.models[0].parameters.again = `$h
try { Invoke-DareMerge -Recipe `$h -OutputPath '$Work/deep-out' } catch { 'cycle: ' + `$_.FullyQualifiedErrorId + ' ' + `$_.Exception.Message }
`$o = [pscustomobject]@{ merge_method = 'linear'; models = `$null }
`$o.models = @(`$o)
try { `$o | Invoke-DareMerge -OutputPath '$Work/deep-out' } catch { 'object: ' + `$_.FullyQualifiedErrorId + ' ' + `$_.Exception.Message }
'alive'
exit 0
"@
        $output = Invoke-InChildPwsh $script $Work
        $LASTEXITCODE | Should -Be 0
        $lines = @($output | ForEach-Object { "$_" })
        $lines | Where-Object { $_ -like 'file: *' } | Should -Match "^file: RecipeInvalid,.*deep\.yml, line 2, column 72: nests lists and mappings more than 64 levels deep"
        $lines | Where-Object { $_ -like 'yaml: *' } | Should -Match '^yaml: RecipeInvalid,.*YAML text, line 2, column 72: nests'
        $lines | Where-Object { $_ -like 'alias: *' } | Should -Match '^alias: RecipeInvalid,.*YAML text, line 1, column 3: has a mapping key that is a list or mapping'
        $lines | Where-Object { $_ -like 'cycle: *' } | Should -Match '^cycle: RecipeInvalid,.*recipe object \(models\[0\]\.parameters\.again\): contains itself'
        $lines | Where-Object { $_ -like 'object: *' } | Should -Match '^object: RecipeInvalid,.*recipe object \(models\[0\]\): contains itself'
        $lines[-1] | Should -Be 'alive'
        Test-Path (Join-Path $Work 'deep-out') | Should -BeFalse
    }

    It 'refuses a recipe over 4 MB: a file by its length, piped lines as they come' {
        $huge = Join-Path $Work 'huge.yml'
        $stream = [IO.File]::Create($huge)
        try { $stream.SetLength(50MB) } finally { $stream.Dispose() }
        $record = $null
        try { Invoke-DareMerge $huge -OutputPath (Join-Path $Work 'huge') } catch { $record = $_ }
        $record.FullyQualifiedErrorId | Should -Be 'RecipeInvalid,Dare.PowerShell.InvokeDareMergeCommand'
        $record.Exception.Message | Should -BeLike "*huge.yml: is too long ($(50MB) bytes); a recipe may be at most 4 MB*"

        # 2,000 lines of 4 KB (with the newline that joins them) would be 8 MB; the pipeline stops once 4 MB have come.
        $script:produced = 0
        $record = $null
        try { & { foreach ($i in 1..2000) { $script:produced++; '#' * 4095 } } | Invoke-DareMerge -OutputPath (Join-Path $Work 'huge') } catch { $record = $_ }
        $record.FullyQualifiedErrorId | Should -Be 'RecipeInvalid,Dare.PowerShell.InvokeDareMergeCommand'
        $record.Exception.Message | Should -BeLike 'YAML text: is too long*'
        $produced | Should -Be (4MB / 4096 + 1)
        Test-Path (Join-Path $Work 'huge') | Should -BeFalse
    }
}

Describe 'Invoke-DareMerge -SkipExisting' {
    BeforeAll {
        $script:Runs = Join-Path $Work 'runs'
        New-Item -ItemType Directory $Runs | Out-Null
        Copy-Item -LiteralPath $Batch -Destination $Runs
        foreach ($name in 'base', 'math', 'code') { New-Item -ItemType SymbolicLink -Path (Join-Path $Runs $name) -Target (Join-Path $Work $name) | Out-Null }
        $script:RunBatch = Join-Path $Runs 'batch.yml'
    }

    It 'resumes an interrupted batch: keeps the finished output (with its drawn seed) and writes the rest' {
        $null = Invoke-DareMerge $RunBatch
        $firstStamp = Get-Stamp (Join-Path $Runs 'first')
        $secondHash = (Get-FileHash (Join-Path $Runs 'second/model.safetensors')).Hash
        # An interruption during the second merge leaves no second folder (exports are atomic).
        Remove-Item -LiteralPath (Join-Path $Runs 'second') -Recurse

        $results = @(Invoke-DareMerge $RunBatch -SkipExisting -Verbose 4>&1)
        $verbose = @($results | Where-Object { $_ -is [Management.Automation.VerboseRecord] } | ForEach-Object Message)
        $written = @($results | Where-Object { $_ -isnot [Management.Automation.VerboseRecord] })

        $written.Path | Should -Be @((Join-Path $Runs 'second'))
        $verbose | Should -Contain "Skipped 'first': '$(Join-Path $Runs 'first')' already holds its export (-SkipExisting)."
        Get-Stamp (Join-Path $Runs 'first') | Should -Be $firstStamp
        # The second recipe read the kept first output, so it is the same model as before.
        (Get-FileHash (Join-Path $Runs 'second/model.safetensors')).Hash | Should -Be $secondHash

        # Nothing left to do: nothing is written.
        $again = @(Invoke-DareMerge $RunBatch -SkipExisting)
        $again | Should -HaveCount 0
        Get-Stamp (Join-Path $Runs 'first') | Should -Be $firstStamp
    }

    It 'refuses an output that holds another merge unless -Force' {
        $changed = Join-Path $Runs 'changed.yml'
        Set-Content -LiteralPath $changed -Value ((Get-Content -Raw $RunBatch) -replace 'weight: 1, density: 0.5', 'weight: 1, density: 0.6')
        $firstStamp = Get-Stamp (Join-Path $Runs 'first')
        $record = $null
        try { Invoke-DareMerge $changed -SkipExisting } catch { $record = $_ }
        $record.FullyQualifiedErrorId | Should -Be 'OutputExists,Dare.PowerShell.InvokeDareMergeCommand'
        $record.Exception.Message | Should -Match "line 7, column 17 \(output\.path\): -SkipExisting keeps only outputs of this very recipe, but '.*first' holds another model: its dare_recipe.yml describes a different merge"
        Get-Stamp (Join-Path $Runs 'first') | Should -Be $firstStamp

        $results = @(Invoke-DareMerge $changed -SkipExisting -Force)
        # Both are written: the first changed, so the second, made from it, is redone too.
        $results.Path | Should -Be @((Join-Path $Runs 'first'), (Join-Path $Runs 'second'))
        Get-Content -Raw (Join-Path $Runs 'first/dare_recipe.yml') | Should -Match 'drop_rate: 0\.4'
    }
}

Describe 'Invoke-DareMerge progress and verbose output' {
    It 'names the recipe and its place in the batch in the progress bar' {
        $folder = Join-Path $Work 'progress'
        New-Item -ItemType Directory $folder | Out-Null
        Copy-Item -LiteralPath $Batch -Destination $folder
        foreach ($name in 'base', 'math', 'code') { New-Item -ItemType SymbolicLink -Path (Join-Path $folder $name) -Target (Join-Path $Work $name) | Out-Null }
        $ps = [powershell]::Create()
        try {
            $null = $ps.AddScript("Import-Module '$(Join-Path $RepoRoot 'out/Dare/Dare.psd1')'; Invoke-DareMerge -LiteralPath '$(Join-Path $folder 'batch.yml')'").Invoke()
            $ps.Streams.Error | Should -HaveCount 0
            $activities = @($ps.Streams.Progress | ForEach-Object Activity | Select-Object -Unique)
        }
        finally { $ps.Dispose() }
        $activities | Should -Contain "Merging 'first' (1 of 2)"
        $activities | Should -Contain "Merging 'second' (2 of 2)"
    }

    It 'prints each verbose message once' {
        $messages = @(Invoke-DareMerge $Recipe -OutputPath (Join-Path $Work 'verbose') -Verbose 4>&1 |
            Where-Object { $_ -is [Management.Automation.VerboseRecord] } | ForEach-Object Message)
        $messages.Count | Should -BeGreaterThan 20
        @($messages | Group-Object | Where-Object Count -GT 1 | ForEach-Object Name) | Should -HaveCount 0
        @($messages | Where-Object { $_ -like "Merge 'ties(math+code)' into*" }) | Should -HaveCount 1
    }
}
