import BackupRules

/// A wire message with a field that can carry a credential (a database URL's
/// password, a bearer token, a new token's secret). Printed, interpolated or
/// dumped by `debugPrint`, it shows every field but hides the credential, so
/// a message that reaches a log line or an error text never carries one.
protocol RedactedWhenPrinted: CustomStringConvertible, CustomDebugStringConvertible {
    /// How a field is shown, credentials hidden; nil shows it as it is.
    func printed(field: String, value: Any) -> String?
}

extension RedactedWhenPrinted {
    public var description: String {
        let fields = Mirror(reflecting: self).children.map { child in
            let label = child.label ?? "_"
            return "\(label): " + (printed(field: label, value: child.value) ?? String(reflecting: child.value))
        }
        return "\(Self.self)(\(fields.joined(separator: ", ")))"
    }

    public var debugDescription: String { description }
}

/// The database URL of an environment or of a request that places one: hidden whole, as a password may be
/// spelled in it in more ways than a pattern can know (clients are shown it through libpq's own parsing).
private func printedDatabaseURL(field: String, value: Any) -> String? {
    field == "databaseURL" ? Secret<String>.redactedText : nil
}

extension Environment: RedactedWhenPrinted {
    func printed(field: String, value: Any) -> String? { printedDatabaseURL(field: field, value: value) }
}

extension RegisterEnvironmentRequest: RedactedWhenPrinted {
    func printed(field: String, value: Any) -> String? { printedDatabaseURL(field: field, value: value) }
}

extension UpdateEnvironmentRequest: RedactedWhenPrinted {
    func printed(field: String, value: Any) -> String? { printedDatabaseURL(field: field, value: value) }
}

extension MetadataEntry: RedactedWhenPrinted {
    /// An authorization entry's value is a bearer token.
    func printed(field: String, value: Any) -> String? {
        field == "value" && key.lowercased() == "authorization" ? Secret<String>.redactedText : nil
    }
}

extension CreateTokenResponse: RedactedWhenPrinted {
    func printed(field: String, value: Any) -> String? {
        field == "secret" ? Secret<String>.redactedText : nil
    }
}
