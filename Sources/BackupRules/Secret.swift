/// A credential held in memory: a signing key, a token, a password. Its
/// value leaves only through `revealed`, at the one place that needs it;
/// printing, interpolating, dumping, reflecting, logging or encoding it
/// (or any type that holds it) shows `<redacted>`. So a configuration
/// logged at the most verbose level, an error that quotes a setting, or a
/// crash report never carries a secret.
public struct Secret<Value: Sendable>: Sendable, CustomStringConvertible, CustomDebugStringConvertible,
    CustomReflectable, CustomLeafReflectable, Encodable
{
    private let value: Value

    public init(_ value: Value) {
        self.value = value
    }

    /// The secret itself, for the code that signs, hashes or connects with it.
    public var revealed: Value { value }

    public static var redactedText: String { "<redacted>" }

    public var description: String { Self.redactedText }
    public var debugDescription: String { Self.redactedText }
    public var customMirror: Mirror { Mirror(self, children: [], displayStyle: .struct) }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(Self.redactedText)
    }
}
