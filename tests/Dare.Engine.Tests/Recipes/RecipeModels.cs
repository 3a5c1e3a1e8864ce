using Dare.Engine.Merge;
using Dare.Engine.Safetensors;

namespace Dare.Engine.Tests.Recipes;

/// <summary>A small float32 Llama-shaped base and three fine-tunes in a temporary folder, shared by a test class.</summary>
public sealed class RecipeModels : IDisposable
{
    public RecipeModels()
    {
        Directory = Path.Combine(Path.GetTempPath(), $"dare-recipe-tests-{Guid.NewGuid():N}");
        System.IO.Directory.CreateDirectory(Directory);
        var shape = new LlamaShape(HiddenSize: 64, Layers: 2, VocabSize: 128);
        SyntheticModel.Write(Path.Combine(Directory, "base"), shape, seed: 1, dtype: SafetensorsDType.F32);
        Base = Checkpoint.Open(Path.Combine(Directory, "base"));
        var seed = 10;
        foreach (var name in new[] { "math", "code", "chat" })
        {
            SyntheticModel.Write(Path.Combine(Directory, name), shape, seed++, Base, dtype: SafetensorsDType.F32);
        }
        Math = Checkpoint.Open(Path.Combine(Directory, "math"));
        Code = Checkpoint.Open(Path.Combine(Directory, "code"));
        Chat = Checkpoint.Open(Path.Combine(Directory, "chat"));
    }

    public string Directory { get; }
    public Checkpoint Base { get; }
    public Checkpoint Math { get; }
    public Checkpoint Code { get; }
    public Checkpoint Chat { get; }

    public TaskVector Vector(Checkpoint fineTuned) => TaskVector.FromModels(Base, fineTuned);

    public void Dispose()
    {
        try { System.IO.Directory.Delete(Directory, recursive: true); }
        catch (IOException) { }
    }
}
