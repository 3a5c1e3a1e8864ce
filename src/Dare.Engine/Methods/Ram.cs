namespace Dare.Engine.Merge;

/// <summary>
/// RAM, Reinforced Agent Merging (mergekit's ram and ramplus_tl, arXiv 2601.13572). Per entry, the inputs whose
/// |δᵢ| &gt; ε contribute: an entry only one input changes takes that input's δ whole (ramplus_tl: scaled by λᵢ), an entry
/// several change takes the mean of their δs, an entry none changes keeps the base. ramplus_tl's λᵢ = 1 + r·clamp(ρᵢ, 0, α)
/// with ρᵢ = (entries input i shares with others) / (entries it alone changes) over the whole tensor, so it takes a
/// counting pass first. No weights and no λ (as in mergekit).
/// </summary>
internal class RamMethod : MergeMethod
{
    /// <summary>Whether this is ramplus_tl (unique entries amplified by λᵢ).</summary>
    protected virtual bool Plus => false;

    public static ParameterSpec Epsilon { get; } = new("epsilon", ParameterKind.Number, ParameterScope.Merge,
        "A δ entry counts as a change only where |δ| > epsilon.")
    { CmdletName = "Epsilon", VariesByTensor = true, Range = NumberRange.NonNegative, Default = 1e-5 };

    public static ParameterSpec R { get; } = new("r", ParameterKind.Number, ParameterScope.Merge,
        "ramplus_tl: how much an input's unique entries are amplified per unit of its overlap ratio ρ (λ = 1 + r·clamp(ρ, 0, alpha)).")
    { CmdletName = "Amplification", VariesByTensor = true, Range = NumberRange.NonNegative, Default = 0.1 };

    public static ParameterSpec Alpha { get; } = new("alpha", ParameterKind.Number, ParameterScope.Merge,
        "ramplus_tl: the largest overlap ratio ρ that counts (λ = 1 + r·clamp(ρ, 0, alpha)).")
    { CmdletName = "OverlapCap", VariesByTensor = true, Range = NumberRange.NonNegative, Default = 0.2 };

    public override string Name => "ram";
    public override string DisplayName => "Ram";
    public override bool TakesTransforms => false;
    public override IReadOnlyList<ParameterSpec> Parameters { get; } = new[] { Epsilon };

    public override IReadOnlyList<RecipeForm> RecipeForms { get; } = new[]
    {
        new RecipeForm("ram", "Entries one model changes taken whole, shared ones averaged") { HasLambda = false },
    };

    internal override void Validate(MergeOptions options, int inputCount)
    {
        foreach (var spec in Parameters)
        {
            spec.Check(options.Setting(spec.Key) ?? throw new DareException(DareErrorId.InvalidParameter, DareErrorKind.InvalidArgument,
                $"{Name} needs {spec.Key} (-{spec.CmdletName})."));
        }
    }

    internal override string Step(MergeOptions options) =>
        $"Merge{DisplayName}({string.Join(", ", Parameters.Select(p => $"{p.Key}={options.Setting(p.Key)}"))})";

    internal override ITensorMerge CreateTensorMerge(MergeOptions? options, TensorMergeSetup setup)
    {
        var epsilon = (float)options!.Setting(Epsilon.Key)!.Resolve(setup.Position);
        if (!Plus) return new TensorMerge(epsilon, null, 0, 0);
        return new TensorMerge(epsilon, setup.Inputs.Count, options.Setting(R.Key)!.Resolve(setup.Position), options.Setting(Alpha.Key)!.Resolve(setup.Position));
    }

    internal override IDeviceMerge CreateDeviceMerge(MergeOptions? options, TensorMergeSetup setup)
    {
        var epsilon = (float)options!.Setting(Epsilon.Key)!.Resolve(setup.Position);
        if (!Plus) return new DeviceMerge(epsilon, null, 0, 0);
        return new DeviceMerge(epsilon, setup.Inputs.Count, options.Setting(R.Key)!.Resolve(setup.Position), options.Setting(Alpha.Key)!.Resolve(setup.Position));
    }

    /// <summary>ramplus_tl's λᵢ from each input's counts of shared and unique changed entries.</summary>
    private static float[] Lambdas(long[] shared, long[] unique, double r, double alpha) => Enumerable.Range(0, shared.Length).Select(i =>
    {
        // mergekit divides by max(unique, ε): with no unique entries any overlap gives the cap.
        var rho = unique[i] > 0 ? (double)shared[i] / unique[i] : shared[i] > 0 ? double.PositiveInfinity : 0;
        return (float)(1 + r * Math.Clamp(rho, 0, alpha));
    }).ToArray();

    /// <summary>
    /// The same merge on the tensor backend, with the combine's float32 operations in its order: Σ of the changed δᵢ in
    /// input order (an unchanged one adds +0, which changes no sum that starts at +0), an entry one input changes
    /// taking that δᵢ (× λᵢ), several their sum over their count. ramplus_tl counts on the device (exact integers).
    /// </summary>
    private sealed class DeviceMerge(float epsilon, int? plusInputs, double r, double alpha) : IDeviceMerge
    {
        private float[]? _lambdas;

        public void RunPasses(IDeviceChunkPasses passes)
        {
            if (plusInputs is not { } n) return;
            // Per input, its unique and shared changed entries, summed on the device and read once per tensor.
            TorchSharp.torch.Tensor? totals = null;
            try
            {
                passes.ForEachChunk((_, deltas) =>
                {
                    using var scope = TorchSharp.torch.NewDisposeScope();
                    var changed = deltas.Select(d => d.abs().gt(epsilon)).ToArray();
                    var contributors = Count(changed);
                    var (alone, several) = (contributors.eq(1L), contributors.gt(1L));
                    var counts = TorchSharp.torch.stack(changed.SelectMany(c => new[] { c.logical_and(alone).sum(), c.logical_and(several).sum() }));
                    if (totals is null) totals = counts.DetachFromDisposeScope();
                    else totals.add_(counts);
                });
                var read = totals?.cpu().data<long>().ToArray() ?? new long[2 * n];
                _lambdas = Lambdas(Enumerable.Range(0, n).Select(i => read[2 * i + 1]).ToArray(), Enumerable.Range(0, n).Select(i => read[2 * i]).ToArray(), r, alpha);
            }
            finally
            {
                totals?.Dispose();
            }
        }

        public TorchSharp.torch.Tensor Combine(long first, TorchSharp.torch.Tensor[] values)
        {
            var changed = values.Select(d => d.abs().gt(epsilon)).ToArray();
            var contributors = Count(changed);
            var sum = TorchSharp.torch.zeros_like(values[0]);
            var alone = TorchSharp.torch.zeros_like(values[0]);
            for (var i = 0; i < values.Length; i++)
            {
                var contribution = values[i].masked_fill(changed[i].logical_not(), 0f);
                sum.add_(contribution);
                alone.add_(_lambdas is null ? contribution : contribution.mul(_lambdas[i]));
            }
            var mean = sum.div(contributors.to_type(TorchSharp.torch.ScalarType.Float32));
            return mean.where(contributors.gt(1L), alone);
        }

        private static TorchSharp.torch.Tensor Count(TorchSharp.torch.Tensor[] changed)
        {
            var count = changed[0].to_type(TorchSharp.torch.ScalarType.Int64);
            for (var i = 1; i < changed.Length; i++) count = count.add(changed[i].to_type(TorchSharp.torch.ScalarType.Int64));
            return count;
        }
    }

    /// <summary>The per-tensor merge; <paramref name="plusInputs"/> is the input count for ramplus_tl (null for ram).</summary>
    private sealed class TensorMerge(float epsilon, int? plusInputs, double r, double alpha) : ITensorMerge
    {
        private float[]? _lambdas;

        public MagnitudeSelection? SampleWhileReading(int input) => null;
        public void PrepareChunk(long first, ChunkView[] deltas) { }
        public IBFloat16SinglePass? SinglePass => null;

        public unsafe void RunPasses(IChunkPasses passes)
        {
            if (plusInputs is not { } n) return;
            var shared = new long[n];
            var unique = new long[n];
            passes.ForEachChunk((_, deltas) =>
            {
                var pointers = ChunkView.FloatPointers(deltas);
                var count = deltas[0].Count;
                var ranges = Partition.Ranges(count);
                var partShared = new long[ranges.Length, n];
                var partUnique = new long[ranges.Length, n];
                Partition.Run(count, (part, start, end) =>
                {
                    for (var j = start; j < end; j++)
                    {
                        var contributors = 0;
                        for (var i = 0; i < n; i++) if (Math.Abs(((float*)pointers[i])[j]) > epsilon) contributors++;
                        if (contributors == 0) continue;
                        for (var i = 0; i < n; i++)
                        {
                            if (!(Math.Abs(((float*)pointers[i])[j]) > epsilon)) continue;
                            if (contributors == 1) partUnique[part, i]++;
                            else partShared[part, i]++;
                        }
                    }
                });
                for (var p = 0; p < ranges.Length; p++)
                {
                    for (var i = 0; i < n; i++)
                    {
                        shared[i] += partShared[p, i];
                        unique[i] += partUnique[p, i];
                    }
                }
            });
            _lambdas = Lambdas(shared, unique, r, alpha);
        }

        public unsafe void Combine(ChunkView[] deltas, CombineTarget target)
        {
            var pointers = ChunkView.FloatPointers(deltas);
            var lambdas = _lambdas;
            var eps = epsilon;
            Partition.Run(deltas[0].Count, (_, start, end) =>
            {
                for (var j = start; j < end; j++)
                {
                    var contributors = 0;
                    var sum = 0f;
                    var last = 0;
                    for (var i = 0; i < pointers.Length; i++)
                    {
                        var d = ((float*)pointers[i])[j];
                        if (!(Math.Abs(d) > eps)) continue;
                        contributors++;
                        sum += d;
                        last = i;
                    }
                    var merged = contributors switch
                    {
                        0 => 0f,
                        1 => lambdas is null ? sum : sum * lambdas[last],
                        _ => sum / contributors,
                    };
                    target.Store(merged, j);
                }
            });
        }
    }
}

/// <summary>ramplus_tl: RAM whose unique entries are scaled by each input's λᵢ = 1 + r·clamp(ρᵢ, 0, α) (see <see cref="RamMethod"/>).</summary>
internal sealed class RamPlusMethod : RamMethod
{
    protected override bool Plus => true;
    public override string Name => "ramplus_tl";
    public override string DisplayName => "RamPlusTL";
    public override IReadOnlyList<ParameterSpec> Parameters { get; } = new[] { Epsilon, R, Alpha };

    public override IReadOnlyList<RecipeForm> RecipeForms { get; } = new[]
    {
        new RecipeForm("ramplus_tl", "RAM with each model's unique entries amplified by its overlap ratio in the tensor") { HasLambda = false },
    };
}
