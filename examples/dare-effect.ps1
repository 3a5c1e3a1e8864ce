#!/usr/bin/env pwsh
<#
.SYNOPSIS
The DARE paper's effect, reproduced small: trains a tiny Llama-shaped model, fine-tunes two copies on two synthetic
tasks, and measures with Measure-Perplexity what DARE, plain dropping and the merges keep of each task.

.DESCRIPTION
Three synthetic "languages" over the letters a-z (one token per letter with the synthetic tokenizer.json):
  walk     a random walk on the 26-letter cycle, each step +1, -1, +2 or -2 (the "pretraining" text);
  ascend   task A: +1 on the cycle a..m (a b c ... m a b ...), deterministic;
  descend  task B: -2 on the cycle n..z (n y w ... ), deterministic.
A base model (New-SyntheticCheckpoint's random init) is trained on walk, then one copy is fine-tuned on ascend and
another on descend, with a small learning rate, so that each fine-tune is a small delta on the base, as in the paper.
The training loop is plain TorchSharp (C# compiled by Add-Type below) over Dare's own Llama forward pass
([Dare.Engine.Evaluation.LlamaForward]); the models are written as safetensors with Hugging Face names, so every
Dare cmdlet reads them. Then, with Dare's cmdlets only:
  A, DARE p=0.9      Invoke-DareDrop -DropRate 0.9 (survivors rescaled by 1/(1-p))
  A, DARE p=0.99     the same at 0.99
  A, drop 0.9 only   Invoke-DareDrop -DropRate 0.9 -Rescale None
  average(A, B)      Merge-Linear (weights 1, normalised: the mean of the two deltas)
  sum(A, B)          Merge-Linear -Normalize $false (task arithmetic with lambda 1: base + dA + dB)
  TIES(A, B)         Merge-Ties -KeepRatio 1 (TIES' sign election, no trimming, no DARE)
  DARE-TIES(A, B) p  Invoke-DareDrop -DropRate p | Merge-Ties -KeepRatio 1, for each p in -MergeDropRate
and measures each model's perplexity on held-out ascend and descend text (lower is better; 1 is perfect).
Retained is the share of the fine-tune's improvement over the base that a variant keeps, in log-perplexity:
(NLL(base) - NLL(variant)) / (NLL(base) - NLL(fine-tune)) on that variant's task.

.EXAMPLE
./examples/dare-effect.ps1 -OutputRoot ./dare-effect | Format-Table
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)] [string] $OutputRoot,
    [ValidateRange(16, 1024)] [int] $HiddenSize = 64,
    [ValidateRange(1, 100000)] [int] $PretrainSteps = 300,
    [ValidateRange(1, 100000)] [int] $FineTuneSteps = 100,
    [double] $PretrainRate = 3e-3,
    [double] $FineTuneRate = 1e-3,
    [int] $Seed = 1,
    [long] $DareSeed = 42,
    # Drop rates of the DARE-TIES merges of A and B.
    [double[]] $MergeDropRate = @(0.5, 0.9),
    # When given (.png or .svg): sweeps DARE on A alone (Invoke-DareSweep) and draws A's ascend NLL by drop rate.
    [string] $ChartPath
)

$ErrorActionPreference = 'Stop'
if (-not (Get-Module Dare)) { Import-Module (Join-Path $PSScriptRoot '../out/Dare/Dare.psd1') }

# The training loop, in C# for speed and because TorchSharp's overloads read badly from PowerShell. It compiles
# against the module's own TorchSharp and engine; at run time those references resolve to the copies the module loaded.
if (-not ('DareExample.TinyTrainer' -as [type])) {
    $dependencies = Join-Path (Split-Path (Get-Module Dare).Path) 'dependencies'
    Add-Type -ReferencedAssemblies 'System.Linq', 'System.Collections', 'System.Runtime.Numerics', (Join-Path $dependencies 'TorchSharp.dll'), (Join-Path $dependencies 'Dare.Engine.dll') `
        -CompilerOptions '-nowarn:CS1701' -TypeDefinition @'
using System;
using System.Collections.Generic;
using System.Linq;
using Dare.Engine.Evaluation;
using Dare.Engine.Safetensors;
using TorchSharp;
using static TorchSharp.torch;

namespace DareExample
{
    public static class TinyTrainer
    {
        /// <summary>A sequence of <paramref name="length"/> letters of one of the example's languages.</summary>
        public static string Sample(string language, Random random, int length)
        {
            var letters = new char[length];
            int state;
            switch (language)
            {
                case "walk":
                    state = random.Next(26);
                    int[] steps = { 1, -1, 2, -2 };
                    for (var i = 0; i < length; i++) { letters[i] = (char)('a' + state); state = ((state + steps[random.Next(4)]) % 26 + 26) % 26; }
                    break;
                case "ascend":
                    state = random.Next(13);
                    for (var i = 0; i < length; i++) { letters[i] = (char)('a' + state); state = (state + 1) % 13; }
                    break;
                case "descend":
                    state = random.Next(13);
                    for (var i = 0; i < length; i++) { letters[i] = (char)('n' + state); state = (state + 11) % 13; }
                    break;
                default:
                    throw new ArgumentException("Unknown language " + language);
            }
            return new string(letters);
        }

        /// <summary>
        /// Trains every tensor of the model in <paramref name="source"/> with Adam on next-token prediction over
        /// sequences of <paramref name="language"/>, and writes the result to <paramref name="destination"/> as
        /// float32 safetensors with the source's config and tokenizer. Returns the mean loss of the last 10 steps.
        /// </summary>
        public static double Train(string source, string destination, string language, int steps, double rate, int seed, int batch = 16, int length = 32)
        {
            var model = Checkpoint.Open(source);
            var config = LlamaConfig.FromCheckpoint(model);
            var vocab = (int)model.Find("model.embed_tokens.weight").Shape[0];
            torch.manual_seed(seed);
            var random = new Random(seed);
            var parameters = new Dictionary<string, TorchSharp.Modules.Parameter>();
            using (var reader = new TensorReader())
            {
                foreach (var info in model.Tensors)
                {
                    using var stored = reader.Read(info);
                    parameters[info.Name] = nn.Parameter(stored.to_type(ScalarType.Float32).clone());
                }
            }
            var losses = new List<double>();
            using (var optimizer = optim.Adam(parameters.Values, rate))
            {
                var (cos, sin) = LlamaForward.Rotary(config, length, ScalarType.Float32, CPU);
                Func<string, Tensor> weight = name => parameters.TryGetValue(name, out var p) ? p : null;
                for (var step = 0; step < steps; step++)
                {
                    using var scope = NewDisposeScope();
                    var ids = new long[batch * (length + 1)];
                    for (var b = 0; b < batch; b++)
                    {
                        var text = Sample(language, random, length + 1);
                        for (var i = 0; i <= length; i++) ids[b * (length + 1) + i] = SyntheticTokenizer.Id(text[i], vocab);
                    }
                    var all = tensor(ids, new long[] { batch, length + 1 });
                    var hidden = LlamaForward.Embed(all.narrow(1, 0, length), parameters["model.embed_tokens.weight"]);
                    for (var layer = 0; layer < config.Layers; layer++) hidden = LlamaForward.DecoderLayer(hidden, layer, config, weight, cos, sin);
                    var head = parameters.TryGetValue("lm_head.weight", out var h) ? h : parameters["model.embed_tokens.weight"];
                    var logits = LlamaForward.Logits(LlamaForward.RmsNorm(hidden, parameters["model.norm.weight"], config.RmsNormEps), head);
                    var loss = nn.functional.cross_entropy(logits.view(-1, vocab), all.narrow(1, 1, length).reshape(-1));
                    optimizer.zero_grad();
                    loss.backward();
                    optimizer.step();
                    losses.Add(loss.item<float>());
                }
                cos.Dispose();
                sin.Dispose();
            }
            var plan = model.Tensors.Select(t => new PlannedTensor(t.Name, SafetensorsDType.F32, t.Shape)).ToList();
            using (var writer = CheckpointWriter.Create(destination, plan, new CheckpointWriteOptions { CopySideFilesFrom = model.Directory, ConfigDType = SafetensorsDType.F32, Force = true }))
            {
                foreach (var info in model.Tensors)
                {
                    using var values = parameters[info.Name].detach().contiguous();
                    writer.WriteTensor(info.Name, values);
                }
                writer.Commit();
            }
            foreach (var p in parameters.Values) p.Dispose();
            return losses.Skip(Math.Max(0, losses.Count - 10)).Average();
        }
    }
}
'@
}

New-Item -ItemType Directory -Force $OutputRoot | Out-Null
$OutputRoot = (Resolve-Path -LiteralPath $OutputRoot).ProviderPath
function Join-Output([string] $Name) { Join-Path $OutputRoot $Name }

# Models: a random init (with config.json and the character tokenizer.json), the pretrained base, two fine-tunes.
$vocab = 3 + 26 + 3 # <unk> <s> </s>, a-z, and a few spare characters
$null = New-SyntheticCheckpoint (Join-Output 'init') -HiddenSize $HiddenSize -Layers 2 -VocabSize $vocab -DType float32 -Seed $Seed -Force
$null = [DareExample.TinyTrainer]::Train((Join-Output 'init'), (Join-Output 'base'), 'walk', $PretrainSteps, $PretrainRate, $Seed)
$null = [DareExample.TinyTrainer]::Train((Join-Output 'base'), (Join-Output 'ascend'), 'ascend', $FineTuneSteps, $FineTuneRate, $Seed + 1)
$null = [DareExample.TinyTrainer]::Train((Join-Output 'base'), (Join-Output 'descend'), 'descend', $FineTuneSteps, $FineTuneRate, $Seed + 2)

# Held-out text for each task: other random starts than training used (another seed), one sequence per line.
$texts = @{}
foreach ($task in 'ascend', 'descend') {
    $random = [Random]::new(1000 + $Seed)
    $texts[$task] = Join-Output "$task.txt"
    Set-Content -LiteralPath $texts[$task] (1..16 | ForEach-Object { [DareExample.TinyTrainer]::Sample($task, $random, 33) })
}

# The variants, made with Dare's cmdlets.
$base = Join-Output 'base'
$a = Get-TaskVector $base (Join-Output 'ascend')
$b = Get-TaskVector $base (Join-Output 'descend')
$variants = [ordered]@{
    'base'             = @{ Task = $null; Path = $base }
    'A (ascend)'       = @{ Task = 'ascend'; Path = Join-Output 'ascend' }
    'B (descend)'      = @{ Task = 'descend'; Path = Join-Output 'descend' }
    'A, DARE p=0.9'    = @{ Task = 'ascend'; Plan = { $a | Invoke-DareDrop -DropRate 0.9 -Seed $DareSeed } }
    'A, DARE p=0.99'   = @{ Task = 'ascend'; Plan = { $a | Invoke-DareDrop -DropRate 0.99 -Seed $DareSeed } }
    'A, drop 0.9 only' = @{ Task = 'ascend'; Plan = { $a | Invoke-DareDrop -DropRate 0.9 -Seed $DareSeed -Rescale None } }
    'average(A, B)'    = @{ Task = 'both'; Plan = { $a, $b | Merge-Linear } }
    'sum(A, B)'        = @{ Task = 'both'; Plan = { $a, $b | Merge-Linear -Normalize $false } }
    'TIES(A, B)'       = @{ Task = 'both'; Plan = { $a, $b | Merge-Ties -KeepRatio 1 } }
}
foreach ($rate in $MergeDropRate) {
    $variants["DARE-TIES(A, B) p=$rate"] = @{ Task = 'both'; Plan = { $a, $b | Invoke-DareDrop -DropRate $rate -Seed $DareSeed | Merge-Ties -KeepRatio 1 }.GetNewClosure() }
}
$index = 0
foreach ($entry in $variants.GetEnumerator()) {
    if ($entry.Value.Plan) {
        $entry.Value.Path = (& $entry.Value.Plan | Export-Safetensors (Join-Output ('variant-{0}' -f $index++)) -DType float32 -Force).Path
    }
}

$measure = { param($Model, $Task) (Measure-Perplexity -LiteralModel $Model -LiteralPath $texts[$Task] -ContextLength 32).NegativeLogLikelihood }
$baseNll = @{ ascend = & $measure $base 'ascend'; descend = & $measure $base 'descend' }
$tunedNll = @{ ascend = & $measure (Join-Output 'ascend') 'ascend'; descend = & $measure (Join-Output 'descend') 'descend' }
foreach ($entry in $variants.GetEnumerator()) {
    $nll = @{ ascend = & $measure $entry.Value.Path 'ascend'; descend = & $measure $entry.Value.Path 'descend' }
    $retained = @{}
    foreach ($task in 'ascend', 'descend') { $retained[$task] = ($baseNll[$task] - $nll[$task]) / ($baseNll[$task] - $tunedNll[$task]) }
    [pscustomobject]@{
        Model             = $entry.Key
        AscendPerplexity  = [math]::Round([math]::Exp($nll.ascend), 3)
        DescendPerplexity = [math]::Round([math]::Exp($nll.descend), 3)
        AscendRetained    = [math]::Round($retained.ascend, 3)
        DescendRetained   = [math]::Round($retained.descend, 3)
    }
}

if ($ChartPath) {
    # A's held-out negative log-likelihood (log-perplexity) by drop rate: DARE on one fine-tune, through the sweep.
    $nllOnAscend = { param($ModelPath) & $measure $ModelPath 'ascend' }.GetNewClosure()
    $null = Invoke-DareSweep $base (Join-Output 'ascend') -DropRate 0.5, 0.7, 0.8, 0.9, 0.95, 0.99 -Method dare_linear -Seed $DareSeed `
        -Evaluator $nllOnAscend -ChartPath $ChartPath
}
