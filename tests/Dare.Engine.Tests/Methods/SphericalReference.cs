namespace Dare.Engine.Tests.Methods;

/// <summary>
/// mergekit 0.1.4's slerp, nuslerp, multislerp, karcher and model_stock written out plainly over whole arrays in
/// float64, step by step as mergekit's Python does them (no Gram matrices, no coefficients: nothing shared with the
/// implementation). Each returns the merged weights.
/// </summary>
internal static class SphericalReference
{
    private static double Norm(double[] v) => Math.Sqrt(v.Sum(x => x * x));
    private static double Dot(double[] a, double[] b) => a.Select((x, i) => x * b[i]).Sum();
    private static double[] Scale(double[] v, double s) => v.Select(x => x * s).ToArray();
    private static double[] Add(double[] a, double[] b) => a.Select((x, i) => x + b[i]).ToArray();
    private static double[] Sub(double[] a, double[] b) => a.Select((x, i) => x - b[i]).ToArray();

    /// <summary>slerp.py: normalize (only when the norm exceeds eps), dot, lerp above DOT_THRESHOLD, else the sine formula.</summary>
    public static double[] Slerp(double t, double[] v0, double[] v1)
    {
        double[] Normalize(double[] v) => Norm(v) > 1e-8 ? Scale(v, 1 / Norm(v)) : v;
        var dot = Dot(Normalize(v0), Normalize(v1));
        if (Math.Abs(dot) > 0.9995) return Add(Scale(v0, 1 - t), Scale(v1, t));
        var theta0 = Math.Acos(dot);
        var sinTheta0 = Math.Sin(theta0);
        var thetaT = theta0 * t;
        var s0 = Math.Sin(theta0 - thetaT) / sinTheta0;
        var s1 = Math.Sin(thetaT) / sinTheta0;
        return Add(Scale(v0, s0), Scale(v1, s1));
    }

    /// <summary>nuslerp.py's nuslerp on vectors (rows), then put back: flatten, rows of the last dimension, or (row_wise) columns along the first.</summary>
    public static double[] NuSlerp(double t, double[] v0, double[] v1, long[] shape, bool flatten, bool rowWise)
    {
        var n = v0.Length;
        // The element indices of each vector, as view(-1), the last dimension, or transpose(0, -1) lay them out.
        List<long[]> vectors;
        if (flatten || shape.Length < 2) vectors = new List<long[]> { Enumerable.Range(0, n).Select(i => (long)i).ToArray() };
        else if (!rowWise)
        {
            var cols = shape[^1];
            vectors = Enumerable.Range(0, (int)(n / cols)).Select(r => Enumerable.Range(0, (int)cols).Select(c => r * cols + c).ToArray()).ToList();
        }
        else
        {
            var rest = n / shape[0];
            vectors = Enumerable.Range(0, (int)rest).Select(c => Enumerable.Range(0, (int)shape[0]).Select(i => i * rest + c).ToArray()).ToList();
        }
        var result = new double[n];
        foreach (var indices in vectors)
        {
            var a = indices.Select(i => v0[i]).ToArray();
            var b = indices.Select(i => v1[i]).ToArray();
            var ua = Scale(a, 1 / Math.Max(Norm(a), 1e-7));
            var ub = Scale(b, 1 / Math.Max(Norm(b), 1e-7));
            var theta = Math.Acos(Math.Clamp(Dot(ua, ub), -1, 1));
            var sin = Math.Sin(theta);
            var merged = Math.Abs(sin) < 1e-8
                ? Add(Scale(a, 1 - t), Scale(b, t))
                : Scale(Add(Scale(a, Math.Sin((1 - t) * theta)), Scale(b, Math.Sin(t * theta))), 1 / sin);
            for (var k = 0; k < indices.Length; k++) result[indices[k]] = merged[k];
        }
        return result;
    }

    /// <summary>multislerp.py: unit vectors over norm + eps, weighted mean, tangent projection, exponential map, mean norm.</summary>
    public static double[] MultiSlerp(double[][] tensors, double[] weight, bool normalizeWeights, double eps = 1e-8)
    {
        if (tensors.Length == 1) return tensors[0];
        var weights = normalizeWeights ? weight.Select(w => w / weight.Sum()).ToArray() : weight;
        var norms = tensors.Select(Norm).ToArray();
        var units = tensors.Select((v, i) => Scale(v, 1 / (norms[i] + eps))).ToArray();
        var mean = new double[tensors[0].Length];
        for (var i = 0; i < units.Length; i++) mean = Add(mean, Scale(units[i], weights[i]));
        var meanNorm = Norm(mean);
        if (meanNorm < eps)
        {
            if (tensors.Length == 2) return Add(Scale(tensors[0], weights[0]), Scale(tensors[1], weights[1]));
            throw new InvalidOperationException("antipodal");
        }
        mean = Scale(mean, 1 / meanNorm);
        var tangentResult = new double[mean.Length];
        for (var i = 0; i < units.Length; i++)
        {
            var tangent = Sub(units[i], Scale(mean, Dot(units[i], mean)));
            tangentResult = Add(tangentResult, Scale(tangent, weights[i]));
        }
        var tangentNorm = Norm(tangentResult) + eps;
        var result = Add(Scale(mean, Math.Cos(tangentNorm)), Scale(tangentResult, Math.Sin(tangentNorm) / tangentNorm));
        return Scale(result, norms.Select((m, i) => m * weights[i]).Sum());
    }

    /// <summary>karcher.py's karcher_merge_tensors with alphas 1/N.</summary>
    public static double[] Karcher(double[][] tensors, int maxIter = 10, double tol = 1e-5)
    {
        if (tensors.Length == 1) return tensors[0];
        var alphas = tensors.Select(_ => 1.0 / tensors.Length).ToArray();
        var norms = tensors.Select(Norm).ToArray();
        var units = tensors.Select((v, i) => norms[i] == 0 ? new double[v.Length] : Scale(v, 1 / norms[i])).ToArray();
        var valid = Enumerable.Range(0, tensors.Length).Where(i => norms[i] > tol).ToList();
        if (valid.Count == 0) return new double[tensors[0].Length];
        var alphaSum = valid.Sum(i => alphas[i]);
        var normalized = valid.Select(i => alphas[i] / alphaSum).ToList();
        var validUnits = valid.Select(i => units[i]).ToList();
        var u = new double[tensors[0].Length];
        for (var k = 0; k < validUnits.Count; k++) u = Add(u, Scale(validUnits[k], normalized[k]));
        var normU = Norm(u);
        u = normU < tol ? validUnits[0].ToArray() : Scale(u, 1 / normU);
        for (var iteration = 0; iteration < maxIter; iteration++)
        {
            var T = new double[u.Length];
            for (var k = 0; k < validUnits.Count; k++)
            {
                var dot = Math.Clamp(Dot(u, validUnits[k]), -1, 1);
                var theta = Math.Acos(dot);
                if (theta < tol) continue;
                T = Add(T, Scale(Sub(validUnits[k], Scale(u, dot)), normalized[k] * (theta / Math.Sin(theta))));
            }
            var normT = Norm(T);
            if (normT < tol) break;
            u = Add(Scale(u, Math.Cos(normT)), Scale(T, Math.Sin(normT) / normT));
            var uNorm = Norm(u);
            if (uNorm > tol) u = Scale(u, 1 / uNorm);
        }
        var s = alphas.Select((a, i) => a * norms[i]).Sum();
        return Scale(u, s);
    }

    /// <summary>model_stock.py: offsets from the base, mean pairwise cosine (per row when filter_wise), t, w_h = t·w_avg + (1 − t)·w₀.</summary>
    public static double[] ModelStock(double[] w0, double[][] ws, long[] shape, bool filterWise)
    {
        var n = w0.Length;
        var cols = filterWise && shape.Length >= 2 ? shape[^1] : n;
        var result = new double[n];
        for (long start = 0; start < n; start += cols)
        {
            var rowBase = w0.Skip((int)start).Take((int)cols).ToArray();
            var rows = ws.Select(w => w.Skip((int)start).Take((int)cols).ToArray()).ToArray();
            var offsets = rows.Select(r => Sub(r, rowBase)).ToArray();
            var cosines = new List<double>();
            for (var i = 0; i < offsets.Length; i++)
            {
                for (var j = i + 1; j < offsets.Length; j++)
                {
                    var normProduct = Norm(offsets[i]) * Norm(offsets[j]);
                    cosines.Add(Math.Clamp(Dot(offsets[i], offsets[j]) / Math.Max(normProduct, 1e-6), -1, 1));
                }
            }
            var cos = cosines.Average();
            var N = ws.Length;
            var t = N * cos / (1 + (N - 1) * cos);
            var average = new double[cols];
            foreach (var r in rows) average = Add(average, Scale(r, 1.0 / N));
            var merged = Add(Scale(average, t), Scale(rowBase, 1 - t));
            Array.Copy(merged, 0, result, start, cols);
        }
        return result;
    }
}
