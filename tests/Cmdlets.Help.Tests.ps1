# Every exported cmdlet has real help (from src/Dare.PowerShell/help/<Verb-Noun>.xml), not the syntax-only stub
# Get-Help makes up for a cmdlet without a help file.
BeforeDiscovery {
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
