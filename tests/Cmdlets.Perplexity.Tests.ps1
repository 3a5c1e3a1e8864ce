# Measure-Perplexity end to end on generated checkpoints (the forward pass itself is checked against a plain
# re-implementation in tests/Dare.Engine.Tests/Evaluation).
BeforeAll {
    . (Join-Path $PSScriptRoot 'TestHelpers.ps1')
    Import-DareTestModule
    $script:root = Join-Path $TestDrive 'perplexity'
    $size = @{ HiddenSize = 32; Layers = 2; VocabSize = 64; DType = 'float32' }
    $script:base = New-SyntheticCheckpoint (Join-Path $root 'base') @size -Seed 5
    $script:tuned = New-SyntheticCheckpoint -LiteralPath (Join-Path $root '[v2] tuned') -BaseModel $base -Seed 6 -DeltaScale 0.05
    $script:text = Join-Path $root 'heldout.txt'
    # 40 characters the synthetic tokenizer knows, one token each; whitespace only separates words.
    Set-Content -LiteralPath $text 'the quick brown fox jumps over the lazy dog'
    $script:tokenCount = ('the quick brown fox jumps over the lazy dog' -replace '\s', '').Length
}

Describe 'Measure-Perplexity' {
    It 'scores every token after the first of each window with the model tokenizer' {
        $result = Measure-Perplexity $base.Path -TextPath $text
        $result | Should -BeOfType Dare.Engine.Evaluation.PerplexityResult
        $tokenCount | Should -Be 35
        $result.Windows | Should -Be 1
        $result.Tokens | Should -Be ($tokenCount - 1)
        $result.ContextLength | Should -Be 2048 # the config says 4096; the default is capped
        $result.TextPath | Should -Be $text
        $result.Perplexity | Should -Be ([math]::Exp($result.NegativeLogLikelihood))
    }

    It 'gives about the vocabulary size for a model with small random weights (near-uniform logits)' {
        # Weights ~ N(0, 0.02²): logits have a spread of about 0.02·√32 ≈ 0.1, so perplexity is within a few % of 64.
        (Measure-Perplexity $base.Path -TextPath $text).Perplexity | Should -BeGreaterThan 60
        (Measure-Perplexity $base.Path -TextPath $text).Perplexity | Should -BeLessThan 68
    }

    It 'cuts the text into non-overlapping windows of -ContextLength tokens and honours -MaxTokens' {
        $windows = Measure-Perplexity $base.Path -TextPath $text -ContextLength 8
        $windows.Windows | Should -Be 5 # 8+8+8+8+3
        $windows.Tokens | Should -Be ($tokenCount - 5)
        $capped = Measure-Perplexity $base.Path -TextPath $text -MaxTokens 10 -ContextLength 8
        $capped.Tokens | Should -Be (7 + 1)
        $capped.Windows | Should -Be 2
    }

    It 'agrees between float32 and bfloat16 to about two digits' {
        $single = Measure-Perplexity $tuned -TextPath $text
        $half = Measure-Perplexity -LiteralModel $tuned.Path -TextPath $text -DType bfloat16
        $half.DType | Should -Be 'bfloat16'
        [math]::Abs($half.NegativeLogLikelihood - $single.NegativeLogLikelihood) | Should -BeLessThan 0.05
    }

    It 'measures every piped model, literal paths included, and tells a fine-tune from its base' {
        $results = @($base, (Get-Item -LiteralPath $tuned.Path)) | Measure-Perplexity -LiteralPath $text
        $results.Model | Should -Be @('base', '[v2] tuned')
        $results[0].Perplexity | Should -Not -Be $results[1].Perplexity
    }

    It 'refuses <Case> with <ErrorId>' -ForEach @(
        @{ Case = 'a model without tokenizer files'; ErrorId = 'TokenizerNotFound'; Prepare = { param($folder) Remove-Item (Join-Path $folder 'tokenizer.json') } }
        @{ Case = 'an architecture it does not implement'; ErrorId = 'ArchitectureUnsupported'; Prepare = {
            param($folder) $file = Join-Path $folder 'config.json'; (Get-Content -Raw $file) -replace '"llama"', '"gpt_neox"' | Set-Content $file } }
        @{ Case = 'a WordPiece tokenizer.json'; ErrorId = 'TokenizerUnsupported'; Prepare = {
            param($folder) $file = Join-Path $folder 'tokenizer.json'; (Get-Content -Raw $file) -replace '"BPE"', '"WordPiece"' | Set-Content $file } }
    ) {
        $folder = Join-Path $TestDrive ("broken-" + [guid]::NewGuid().ToString('N'))
        Copy-Item -Recurse $base.Path $folder
        & $Prepare $folder
        $err = $null
        Measure-Perplexity $folder -TextPath $text -ErrorVariable err -ErrorAction SilentlyContinue | Should -BeNullOrEmpty
        $err[0].FullyQualifiedErrorId | Should -Match "^$ErrorId,"
        if ($ErrorId -eq 'ArchitectureUnsupported') { "$($err[0])" | Should -Match 'gpt_neox' }
        if ($ErrorId -eq 'TokenizerUnsupported') { "$($err[0])" | Should -Match 'WordPiece' }
    }

    It 'takes -Device as the exports spell it: torch-cpu scores as cpu, cuda here is DeviceUnavailable, an unknown name fails binding' {
        (Measure-Perplexity $base -TextPath $text -ContextLength 16 -Device torch-cpu).Perplexity | Should -Be (Measure-Perplexity $base -TextPath $text -ContextLength 16).Perplexity
        { Measure-Perplexity $base -TextPath $text -Device cuda:2 -ErrorAction Stop } |
            Should -Throw -ErrorId 'DeviceUnavailable,Dare.PowerShell.MeasurePerplexityCommand' -ExpectedMessage "*'cuda:2'*"
        { Measure-Perplexity $base -TextPath $text -Device mps } | Should -Throw -ErrorId 'ParameterArgumentValidationError,Dare.PowerShell.MeasurePerplexityCommand'
    }

    It 'refuses a text path that matches several files' {
        Set-Content (Join-Path $root 'second.txt') 'abc'
        { Measure-Perplexity $base.Path -TextPath (Join-Path $root '*.txt') -ErrorAction Stop } | Should -Throw -ErrorId 'InvalidParameter,Dare.PowerShell.MeasurePerplexityCommand'
    }

    It 'shows a result as Model, Perplexity, NLL, Tokens, Windows, Context, DType and Elapsed' {
        $lines = @((Measure-Perplexity $base -TextPath $text -ContextLength 16 | Out-String -Width 200) -split "`r?`n" | Where-Object { $_.Trim() })
        ($lines[0] -split '\s+' | Where-Object { $_ }) | Should -Be @('Model', 'Perplexity', 'NLL', 'Tokens', 'Windows', 'Context', 'DType', 'Elapsed')
        $lines[2] | Should -Match '^base\s+\d+(\.\d+)?\s+\d\.\d{3}\s+32\s+3\s+16\s+float32\s+\d+\.\d s$'
    }
}
