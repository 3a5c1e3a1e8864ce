# Every exported cmdlet has real help (from src/Dare.PowerShell/help/<Verb-Noun>.xml), not the syntax-only stub
# Get-Help makes up for a cmdlet without a help file.
BeforeDiscovery {
    . (Join-Path $PSScriptRoot 'TestHelpers.ps1')
    Import-DareTestModule
    # Every ErrorId the module can report: the engine's enum, and the two DareCmdlet gives to other exceptions.
    $script:errorIds = @([enum]::GetNames([Dare.Engine.DareErrorId])) + 'FileSystemError', 'UnexpectedError'
    $manifest = Import-PowerShellDataFile (Join-Path $PSScriptRoot '../Dare.psd1')
    $script:cmdlets = @($manifest.CmdletsToExport | Sort-Object | ForEach-Object { @{ Name = $_ } })
}

BeforeAll {
    . (Join-Path $PSScriptRoot 'TestHelpers.ps1')
    Import-DareTestModule
    $script:common = [System.Management.Automation.PSCmdlet]::CommonParameters + [System.Management.Automation.PSCmdlet]::OptionalCommonParameters
}

Describe 'Help for <Name>' -ForEach $cmdlets {
    BeforeAll {
        $help = Get-Help $Name -Full
        $command = Get-Command $Name
    }

    It 'has a help fragment in src/Dare.PowerShell/help' {
        Join-Path $PSScriptRoot "../src/Dare.PowerShell/help/$Name.xml" | Should -Exist
    }

    It 'has a synopsis that is prose, not the generated syntax line' {
        $help.Synopsis | Should -Not -BeNullOrEmpty
        $help.Synopsis.Trim() | Should -Not -BeLike "$Name *"
        $help.Synopsis.Trim() | Should -Not -Be $Name
    }

    It 'has a description' {
        ($help.description.Text -join '').Trim() | Should -Not -BeNullOrEmpty
    }

    It 'has at least one example with code and remarks' {
        $examples = @($help.examples.example)
        $examples.Count | Should -BeGreaterOrEqual 1
        foreach ($example in $examples) {
            $example.code | Should -Not -BeNullOrEmpty
            ($example.remarks.Text -join '').Trim() | Should -Not -BeNullOrEmpty
        }
    }

    It 'describes every parameter that is not a common parameter' {
        $documented = @{}
        foreach ($parameter in @($help.parameters.parameter)) {
            if ($parameter) { $documented[$parameter.name] = ($parameter.description.Text -join '').Trim() }
        }
        $undocumented = foreach ($name in $command.Parameters.Keys) {
            if ($name -in $common) { continue }
            if (-not $documented[$name]) { $name }
        }
        $undocumented | Should -BeNullOrEmpty -Because "every parameter of $Name needs a description in its help"
    }

    It 'documents only parameters the cmdlet has' {
        $stale = @($help.parameters.parameter) | Where-Object { $_ -and -not $command.Parameters.ContainsKey($_.name) } | ForEach-Object name
        $stale | Should -BeNullOrEmpty
    }

    It 'states the output type the cmdlet declares' {
        $declared = $command.OutputType.Name
        $documented = @($help.returnValues.returnValue | ForEach-Object { $_.type.name })
        if ($declared) { $documented | Should -Not -BeNullOrEmpty }
        foreach ($type in $declared) { $documented | Should -Contain $type }
    }
}

# The parameter fields of the help are generated from the compiled cmdlets at build time (build/HelpBuilder.ps1);
# these tests read both sides independently: Get-Help's view of the help file, and Get-Command's and reflection's
# view of the cmdlet class.
Describe 'Help parameter fields of <Name> match the compiled cmdlet' -ForEach $cmdlets {
    BeforeAll {
        $command = Get-Command $Name
        $instance = [Activator]::CreateInstance($command.ImplementingType)
        $common = [System.Management.Automation.PSCmdlet]::CommonParameters
        $script:checked = foreach ($parameter in $command.Parameters.Values | Where-Object Name -notin $common) {
            $attributes = @($parameter.Attributes | Where-Object { $_ -is [System.Management.Automation.ParameterAttribute] })
            $pipeline = @(if ($attributes.ValueFromPipeline -contains $true) { 'ByValue' }; if ($attributes.ValueFromPipelineByPropertyName -contains $true) { 'ByPropertyName' })
            @{
                Parameter = $parameter
                Help = Get-Help $Name -Parameter $parameter.Name
                Pipeline = $(if ($pipeline) { "True ($($pipeline -join ', '))" } else { 'False' })
                Instance = $instance
            }
        }
    }

    It 'states each parameter''s type as the cmdlet declares it' {
        foreach ($case in $checked) {
            $type = $case.Parameter.ParameterType
            if ([Nullable]::GetUnderlyingType($type)) { $type = [Nullable]::GetUnderlyingType($type) }
            $case.Help.type.name | Should -Be $type.FullName -Because "-$($case.Parameter.Name) is a $type"
        }
    }

    It 'states pipeline input, aliases and wildcard support as the cmdlet declares them' {
        foreach ($case in $checked) {
            $p = $case.Parameter
            $case.Help.pipelineInput | Should -Be $case.Pipeline -Because "-$($p.Name)'s pipeline input"
            $aliases = if ($p.Aliases.Count) { $p.Aliases -join ', ' } else { 'none' }
            $case.Help.aliases | Should -Be $aliases -Because "-$($p.Name)'s aliases"
            $wildcards = [bool] ($p.Attributes | Where-Object { $_ -is [System.Management.Automation.SupportsWildcardsAttribute] })
            $case.Help.globbing | Should -Be $wildcards.ToString().ToLowerInvariant() -Because "-$($p.Name)'s wildcard support"
        }
    }

    It 'states whether each parameter is required, as in every parameter set' {
        foreach ($case in $checked) {
            $mandatory = -not ($case.Parameter.Attributes | Where-Object { $_ -is [System.Management.Automation.ParameterAttribute] -and -not $_.Mandatory })
            $case.Help.required | Should -Be $mandatory.ToString().ToLowerInvariant() -Because "-$($case.Parameter.Name)"
        }
    }

    It 'states a default for every parameter, the cmdlet''s own where its object holds one' {
        foreach ($case in $checked) {
            $p = $case.Parameter
            $case.Help.defaultValue | Should -Not -BeNullOrEmpty -Because "-$($p.Name) needs a stated default"
            $property = $command.ImplementingType.GetProperty($p.Name)
            if (-not $property -or $case.Help.required -eq 'true') { continue }
            $value = $property.GetValue($case.Instance)
            if ($value -is [System.Management.Automation.SwitchParameter]) { $value = $value.IsPresent }
            # Unset values (null, 0, false, empty) mean the cmdlet decides at run time; the help says how in words.
            if ($null -eq $value -or $value -is [Array] -or "$value" -in '', '0', 'False') { continue }
            $expected = if ($value -is [IFormattable]) { $value.ToString($null, [cultureinfo]::InvariantCulture) } else { "$value" }
            $case.Help.defaultValue | Should -Be $expected -Because "-$($p.Name) defaults to $expected in the cmdlet"
        }
    }

    It 'shows a syntax line per parameter set, with every parameter of that set' {
        $syntax = @((Get-Help $Name).syntax.syntaxItem)
        $sets = @($command.ParameterSets)
        $syntax.Count | Should -Be $sets.Count
        $common = [System.Management.Automation.PSCmdlet]::CommonParameters
        $documented = $syntax | ForEach-Object { (@($_.parameter) | Where-Object { $_ } | ForEach-Object name | Sort-Object) -join ',' }
        foreach ($set in $sets) {
            $names = ($set.Parameters.Name | Where-Object { $_ -notin $common } | Sort-Object) -join ','
            $documented | Should -Contain $names -Because "parameter set $($set.Name) has $names"
        }
    }

    It 'has an online link to a README section, the same as its HelpUri' {
        $command.HelpUri | Should -Match '^https://github\.com/dare-merge/dare#[a-z0-9-]+$'
        $online = @((Get-Help $Name).relatedLinks.navigationLink)[0]
        $online.uri | Should -Be $command.HelpUri
        # GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens.
        $anchors = Get-Content (Join-Path $PSScriptRoot '../README.md') | Where-Object { $_ -match '^#+ ' } |
            ForEach-Object { ($_ -replace '^#+ ', '').ToLowerInvariant() -replace '[^a-z0-9 -]', '' -replace ' ', '-' }
        $anchors | Should -Contain ($command.HelpUri -split '#')[1]
    }
}

Describe 'about_Dare' {
    BeforeAll {
        $script:topic = Get-Help about_Dare | Out-String
    }

    It 'is installed with the module and found by Get-Help' {
        Join-Path (Split-Path (Get-Module Dare).Path) 'en-US/about_Dare.help.txt' | Should -Exist
        $topic | Should -Match 'about_Dare'
        $topic | Should -Match 'CONCEPTS'
    }

    It 'explains every ErrorId the module reports: <_>' -ForEach $errorIds {
        $topic | Should -Match "(?m)^\s+$_\s"
    }

    It 'names every object type the cmdlets declare as output' {
        $types = (Get-Command -Module Dare).OutputType.Type | Where-Object { $_.Namespace -like 'Dare*' } | ForEach-Object FullName | Sort-Object -Unique
        $types | Should -Not -BeNullOrEmpty
        foreach ($type in $types) { $topic | Should -Match ([regex]::Escape($type)) }
    }

    It 'lists every merge_method the recipe reader accepts' {
        foreach ($method in 'linear', 'task_arithmetic', 'ties', 'dare_linear', 'dare_ties') { $topic | Should -Match "\b$method\b" }
    }
}
