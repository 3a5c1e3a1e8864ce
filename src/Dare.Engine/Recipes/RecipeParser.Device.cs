using Dare.Engine.Merge;

namespace Dare.Engine.Recipes;

public static partial class RecipeParser
{
    /// <summary>Dare extension device: where the merge math runs (cpu, cuda, cuda:N, torch-cpu; see <see cref="ComputeDevice"/>).</summary>
    private static ComputeDevice? ParseDevice(string? text, RecipeLocation? location)
    {
        if (text is null) return null;
        try
        {
            return ComputeDevice.Parse(text);
        }
        catch (DareException ex)
        {
            throw Error(DareErrorId.RecipeInvalid, DareErrorKind.InvalidData, location!, ex.Message);
        }
    }
}
