using System.Text;

namespace Dare.Engine.Merge;

/// <summary>
/// The pieces of a SentencePiece tokenizer.model, in id order. The file is a protobuf ModelProto whose field 1 repeats
/// SentencePiece messages { 1: piece (string), 2: score (float), 3: type (enum) }; a piece's id is its position. Every
/// other field (trainer and normalizer specs) is skipped by its wire type, so this small reader needs no protobuf library.
/// </summary>
internal static class SentencePieceModel
{
    public const string FileName = "tokenizer.model";

    // Readers of real models meet files of a few MB; anything far larger is not a tokenizer.
    private const long MaxBytes = 256L << 20;

    /// <summary>The pieces of <paramref name="path"/>; a malformed file is TokenizerInvalid naming it and the byte offset.</summary>
    public static IReadOnlyList<string> ReadPieces(string path)
    {
        var length = new FileInfo(path).Length;
        if (length > MaxBytes) throw Invalid(path, $"it is {length} bytes, more than a SentencePiece model holds");
        var data = File.ReadAllBytes(path);
        var pieces = new List<string>();
        var position = 0;
        while (position < data.Length)
        {
            var (field, wireType) = Tag(data, ref position, path);
            if (field == 1 && wireType == 2)
            {
                var message = LengthDelimited(data, ref position, path);
                pieces.Add(PieceOf(data, message.Start, message.End, path, pieces.Count));
            }
            else Skip(data, ref position, wireType, path);
        }
        if (pieces.Count == 0) throw Invalid(path, "it holds no pieces (protobuf field 1 of ModelProto)");
        return pieces;
    }

    /// <summary>The piece string (field 1) of one SentencePiece message.</summary>
    private static string PieceOf(byte[] data, int start, int end, string path, int index)
    {
        string? piece = null;
        var position = start;
        while (position < end)
        {
            var (field, wireType) = Tag(data, ref position, path);
            if (field == 1 && wireType == 2)
            {
                var text = LengthDelimited(data, ref position, path);
                piece = Encoding.UTF8.GetString(data, text.Start, text.End - text.Start);
            }
            else Skip(data, ref position, wireType, path);
            if (position > end) throw Invalid(path, $"piece {index} runs past its message at byte {end}");
        }
        return piece ?? throw Invalid(path, $"piece {index} has no text");
    }

    private static (int Field, int WireType) Tag(byte[] data, ref int position, string path)
    {
        var tag = Varint(data, ref position, path);
        return ((int)(tag >> 3), (int)(tag & 7));
    }

    private static ulong Varint(byte[] data, ref int position, string path)
    {
        ulong value = 0;
        for (var shift = 0; shift < 64; shift += 7)
        {
            if (position >= data.Length) throw Invalid(path, $"a number is cut off at byte {position}");
            var b = data[position++];
            value |= (ulong)(b & 0x7F) << shift;
            if ((b & 0x80) == 0) return value;
        }
        throw Invalid(path, $"a number at byte {position} is longer than 10 bytes");
    }

    private static (int Start, int End) LengthDelimited(byte[] data, ref int position, string path)
    {
        var length = Varint(data, ref position, path);
        if (length > (ulong)(data.Length - position)) throw Invalid(path, $"a field of {length} bytes at byte {position} runs past the end of the file");
        var start = position;
        position += (int)length;
        return (start, position);
    }

    private static void Skip(byte[] data, ref int position, int wireType, string path)
    {
        switch (wireType)
        {
            case 0:
                Varint(data, ref position, path);
                break;
            case 1 or 5:
                var size = wireType == 1 ? 8 : 4;
                if (position + size > data.Length) throw Invalid(path, $"a fixed-size field at byte {position} runs past the end of the file");
                position += size;
                break;
            case 2:
                LengthDelimited(data, ref position, path);
                break;
            default:
                throw Invalid(path, $"wire type {wireType} at byte {position} is not protobuf's (or groups, which SentencePiece does not use)");
        }
    }

    private static DareException Invalid(string path, string reason) =>
        new(DareErrorId.TokenizerInvalid, DareErrorKind.InvalidData, $"'{path}' is not a SentencePiece model Dare can read: {reason}.") { FilePath = path };
}
