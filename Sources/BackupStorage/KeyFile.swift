import BackupRules
import Foundation

/// A secret named by the id that refers to it where it is used (a signed
/// URL's `kid`, a wrapped namespace key's master key).
public struct NamedKey: Sendable {
    public let id: String
    let secret: Secret<[UInt8]>
}

/// A file of named secrets, as operators keep download and storage keys:
/// one `KEY_ID = SECRET` a line, the secret in base64 (standard or URL
/// alphabet) of at least 32 bytes, and at most one `DIRECTIVE KEY_ID` line
/// naming the key in use (else the last listed), so that several processes
/// can learn a new key before any of them uses it. Blank lines and lines
/// starting with `#` are ignored. Errors name the line and never repeat a
/// secret.
public struct KeyFile: Sendable {
    /// As the file lists them.
    public let keys: [NamedKey]
    /// The key new work uses; every listed key still reads old work.
    public let current: NamedKey

    /// Shortest secret accepted: as long as an HMAC-SHA256's output and an AES-256 key.
    public static let minimumSecretBytes = 32

    /// `kind` names the file in errors ("download key"); `directive` is the
    /// word of the line naming the key in use ("sign-with").
    public init(parsing text: String, kind: String, directive: String) throws(BackupError) {
        var keys: [NamedKey] = []
        var named: (id: String, line: Int)?
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: " \t\r")
            guard !line.isEmpty, !line.hasPrefix("#") else { continue }
            if line == directive || line.hasPrefix(directive + " ") || line.hasPrefix(directive + "\t") {
                guard named == nil else { throw .invalidArgument("\(kind) line \(index + 1) repeats \(directive)") }
                let id = line.dropFirst(directive.count).trimmingCharacters(in: " \t")
                guard !id.isEmpty, !id.contains(where: { $0 == " " || $0 == "\t" }) else {
                    throw .invalidArgument("\(kind) line \(index + 1): \(directive) takes the id of a key listed in the file")
                }
                named = (id, index + 1)
                continue
            }
            guard let equals = line.firstIndex(of: "=") else {
                throw .invalidArgument("\(kind) line \(index + 1) is not KEY_ID = SECRET")
            }
            let id = line[..<equals].trimmingCharacters(in: " \t")
            let encoded = line[line.index(after: equals)...].trimmingCharacters(in: " \t")
            guard !id.isEmpty, id.utf8.count <= 64, id.utf8.allSatisfy(Self.isIDByte) else {
                throw .invalidArgument("\(kind) line \(index + 1): the key id must be 1 to 64 of A-Z a-z 0-9 - _ .")
            }
            guard let secret = decodeBase64(encoded), secret.count >= Self.minimumSecretBytes else {
                // Neither the id nor the secret is repeated: a line missing its id has the secret where the id goes.
                throw .invalidArgument("\(kind) line \(index + 1): the secret must be base64 of at least \(Self.minimumSecretBytes) bytes")
            }
            guard !keys.contains(where: { $0.id == id }) else {
                throw .invalidArgument("\(kind) line \(index + 1) repeats a key id listed above")
            }
            keys.append(NamedKey(id: id, secret: Secret(secret)))
        }
        guard let last = keys.last else { throw .invalidArgument("the \(kind) file lists no key") }
        self.keys = keys
        if let named {
            guard let key = keys.first(where: { $0.id == named.id }) else {
                // The value is not repeated: a secret pasted there would reach the log.
                throw .invalidArgument("\(kind) line \(named.line): \(directive) names a key id the file does not list")
            }
            current = key
        } else {
            current = last
        }
    }

    /// Reads the key file at `path`, of at most `maximumKeyFileBytes`; errors
    /// name the file, and the line where one is wrong.
    public init(reading path: String, kind: String, directive: String) throws(BackupError) {
        let bytes = try readSmallFile(path, "the \(kind) file")
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw .invalidArgument("the \(kind) file \(path) is not UTF-8 text")
        }
        do {
            try self.init(parsing: text, kind: kind, directive: directive)
        } catch {
            throw .invalidArgument("\(path): \(error.description)")
        }
    }

    /// The key of `id`, if listed.
    public func key(_ id: some StringProtocol) -> NamedKey? { keys.first { $0.id == id } }

    private static func isIDByte(_ byte: UInt8) -> Bool {
        (48...57).contains(byte) || (65...90).contains(byte) || (97...122).contains(byte) || byte == 45 || byte == 95 || byte == 46
    }
}

extension Substring {
    fileprivate func trimmingCharacters(in set: String) -> String {
        String(drop { set.contains($0) }.reversed().drop { set.contains($0) }.reversed())
    }
}
