/// "namespace/name", how clients name an environment on their command lines.
public struct EnvironmentRef: Sendable {
    public let namespace: String
    public let name: String

    /// Both parts present, one slash between them; nil otherwise.
    public init?(_ text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else { return nil }
        namespace = String(parts[0])
        name = String(parts[1])
    }
}
