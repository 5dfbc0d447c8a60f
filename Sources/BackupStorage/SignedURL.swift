import BackupRules
import COpenSSL
import Foundation

/// Why a download URL opens nothing. Every case is a 403 with its
/// description as the body; none says which part of a signature was wrong.
public enum URLRefusal: Error, Equatable, CustomStringConvertible {
    case malformed
    case expired
    case unknownKey
    case badSignature

    public var description: String {
        switch self {
        case .malformed: "the link is not a signed download link (it needs expires, kid and sig)"
        case .expired: "the link has expired; ask for a new one"
        case .unknownKey: "the link was signed with a key this server no longer has; ask for a new one"
        case .badSignature: "the link's signature does not match"
        }
    }
}

/// The keys that sign and verify download URLs:
/// `/v1/downloads/ID/FILE?expires=UNIX&kid=KEY&sig=BASE64URL`, where `sig` is
/// HMAC-SHA256 over `GET`, the path and `expires`, each on a line of its own.
/// The newest key (listed last) signs; every listed key verifies. So keys
/// rotate without breaking a URL already handed out: add the new key last,
/// and drop the old one once the URLs it signed have expired.
public struct URLSigningKeys: Sendable {
    /// As the file lists them.
    public var keys: [NamedKey] { file.keys }
    /// The key new URLs are signed with: the one a `sign-with KEY_ID` line
    /// names, else the last listed. Naming it lets several processes learn
    /// a new key before any of them signs with it.
    public var signer: NamedKey { file.current }
    private let file: KeyFile

    /// Reads a key file (`KeyFile`'s format, with `sign-with`).
    public init(parsing text: String) throws(BackupError) {
        file = try KeyFile(parsing: text, kind: "download key", directive: "sign-with")
    }

    /// Reads the key file at `path`.
    public init(reading path: String) throws(BackupError) {
        file = try KeyFile(reading: path, kind: "download key", directive: "sign-with")
    }

    /// The query that makes `path` a URL valid until `expires` (Unix seconds).
    public func signedQuery(path: String, expires: Int64) -> String {
        "expires=\(expires)&kid=\(signer.id)&sig=\(base64URL(Self.signature(signer, path: path, expires: expires)))"
    }

    /// Checks a request for `path` with `query` at `now` (Unix seconds).
    /// HEAD is checked as the GET it precedes; the HTTP layer answers any
    /// other method before asking.
    public func verify(path: String, query: String, now: Int64) throws(URLRefusal) {
        var fields: [Substring: Substring] = [:]
        for pair in query.split(separator: "&", omittingEmptySubsequences: false) {
            guard fields.count < 3, let equals = pair.firstIndex(of: "="),
                  fields.updateValue(pair[pair.index(after: equals)...], forKey: pair[..<equals]) == nil else {
                throw .malformed
            }
        }
        // One spelling per URL: the fields in the order the server writes them, `expires` as it writes
        // numbers, `sig` as unpadded base64url, so a URL's text (in a log, a cache, a deny-list) names
        // exactly one link.
        guard fields.count == 3, let expiresText = fields["expires"], let kid = fields["kid"], let sigText = fields["sig"],
              query == "expires=\(expiresText)&kid=\(kid)&sig=\(sigText)",
              expiresText.count <= 18, expiresText.utf8.allSatisfy({ (48...57).contains($0) }), let expires = Int64(expiresText),
              String(expires) == expiresText,
              sigText.count == 43, sigText.utf8.allSatisfy({ Self.base64URLAlphabet.contains($0) }),
              let presented = decodeBase64(String(sigText)), presented.count == 32,
              base64URL(presented) == sigText else {
            throw .malformed
        }
        guard let key = file.key(kid) else { throw .unknownKey }
        let expected = Self.signature(key, path: path, expires: expires)
        // Constant time: how much of a forged signature matched must not show in the time taken.
        guard CRYPTO_memcmp(expected, presented, 32) == 0 else { throw .badSignature }
        guard now < expires else { throw .expired }
    }

    private static let base64URLAlphabet = Set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)

    private static func signature(_ key: NamedKey, path: String, expires: Int64) -> [UInt8] {
        Secure.hmacSHA256(key: key.secret.revealed, Array("GET\n\(path)\n\(expires)".utf8))
    }
}

