# examples/dare-effect.ps1: the DARE paper's qualitative claims on a tiny model trained from scratch (fixed seeds).
# Which claims hold at this size is recorded in README.md ("The paper's effect, reproduced small"); the ones that do
# not (DARE-TIES at p = 0.9 against averaging) are shown in the table and not asserted.
BeforeAll {
    . (Join-Path $PSScriptRoot 'TestHelpers.ps1')
    Import-DareTestModule
    $script:rows = @{}
    foreach ($row in & (Join-Path $PSScriptRoot '../examples/dare-effect.ps1') -OutputRoot (Join-Path $TestDrive 'effect')) { $rows[$row.Model] = $row }
}

Describe 'examples/dare-effect.ps1' {
    It 'fine-tunes each copy into its task: perplexity on it falls well below the base''s' {
        $rows['A (ascend)'].AscendPerplexity | Should -BeLessThan ($rows['base'].AscendPerplexity / 2)
        $rows['B (descend)'].DescendPerplexity | Should -BeLessThan ($rows['base'].DescendPerplexity / 2)
    }

    It 'keeps most of the fine-tune''s gain after dropping 90% of its delta with rescaling' {
        $rows['A, DARE p=0.9'].AscendRetained | Should -BeGreaterThan 0.5
    }

    It 'loses it when dropping 99%, and when dropping 90% without rescaling' {
        $rows['A, DARE p=0.99'].AscendRetained | Should -BeLessThan 0.5
        $rows['A, drop 0.9 only'].AscendRetained | Should -BeLessThan 0.5
        $rows['A, drop 0.9 only'].AscendRetained | Should -BeLessThan $rows['A, DARE p=0.9'].AscendRetained
    }

    It 'keeps both tasks better with DARE-TIES (p = 0.5) than with plain averaging' {
        $rows['DARE-TIES(A, B) p=0.5'].AscendPerplexity | Should -BeLessThan $rows['average(A, B)'].AscendPerplexity
        $rows['DARE-TIES(A, B) p=0.5'].DescendPerplexity | Should -BeLessThan $rows['average(A, B)'].DescendPerplexity
    }
}
