namespace Dare.Engine.Recipes;

/// <summary>A model entry's LoRA adapter as mergekit writes it.</summary>
public static partial class RecipeParser
{
    /// <summary>mergekit's model: &lt;model&gt;+&lt;adapter&gt; (one '+'; use lora: for a path that holds one).</summary>
    private static RecipeModelEntry WithLora(RecipeModelEntry entry)
    {
        var parts = entry.Model.Split('+');
        if (parts.Length == 1) return entry;
        if (parts.Length > 2 || parts.Any(string.IsNullOrWhiteSpace))
        {
            throw Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, entry.Location,
                $"'{entry.Model}' is not '<model>+<adapter>' (one '+' between two paths); for a path that holds a '+', write model: and lora: separately.");
        }
        return new RecipeModelEntry { Model = parts[0], Location = entry.Location, Parameters = entry.Parameters, Lora = parts[1], LoraLocation = entry.Location };
    }
}
