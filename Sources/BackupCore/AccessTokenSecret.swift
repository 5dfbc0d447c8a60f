/// Bearer token secrets. The catalog keeps only their SHA-256, so a leaked
/// catalog does not leak working tokens.
public enum AccessTokenSecret {
    static let prefix = "bkd_"

    /// A new secret: the prefix and 32 random bytes, base64url without padding.
    public static func generate() -> String {
        prefix + base64URL(Secure.randomBytes(32))
    }

    /// What the catalog stores and looks a presented secret up by.
    public static func hash(_ secret: String) -> ContentHash {
        ContentHash.of(secret.utf8)
    }
}

/// RFC 4648 base64url without padding.
public func base64URL(_ bytes: [UInt8]) -> String {
    let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
    var out: [UInt8] = []
    var index = 0
    while index < bytes.count {
        let chunk = bytes[index..<min(index + 3, bytes.count)]
        let value = chunk.enumerated().reduce(UInt32(0)) { $0 | UInt32($1.element) << (16 - 8 * UInt32($1.offset)) }
        for position in 0...chunk.count {
            out.append(alphabet[Int((value >> (18 - 6 * UInt32(position))) & 0x3f)])
        }
        index += 3
    }
    return String(decoding: out, as: UTF8.self)
}
