import BackupRules
/// A bearer token's secret. The catalog keeps only its SHA-256 (`digest`),
/// so a leaked catalog does not leak working tokens.
public struct AccessTokenSecret: Sendable {
    static let prefix = "bkd_"

    /// Held as a `Secret`, so that printing or reflecting this value shows `<redacted>`.
    private let secret: Secret<String>

    /// The secret as its holder presents it: for the one answer that hands it out.
    public var text: String { secret.revealed }

    /// A new secret: the prefix and 32 random bytes, base64url without padding.
    public init() {
        secret = Secret(Self.prefix + base64URL(Secure.randomBytes(32)))
    }

    /// A secret a caller presented.
    public init(presented text: String) {
        secret = Secret(text)
    }

    /// What the catalog stores and looks a presented secret up by.
    public var digest: ContentHash { ContentHash.of(text.utf8) }
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

/// Base64 in the standard or URL alphabet, padded or not; nil for anything else.
func decodeBase64(_ text: String) -> [UInt8]? {
    var bits: UInt32 = 0
    var count = 0
    var out: [UInt8] = []
    var padding = 0
    for byte in text.utf8 {
        let value: UInt32
        switch byte {
        case 65...90: value = UInt32(byte - 65)
        case 97...122: value = UInt32(byte - 97 + 26)
        case 48...57: value = UInt32(byte - 48 + 52)
        case 43, 45: value = 62  // + or -
        case 47, 95: value = 63  // / or _
        case 61:  // =
            padding += 1
            continue
        default: return nil
        }
        guard padding == 0 else { return nil }  // data after padding
        bits = bits << 6 | value
        count += 6
        if count >= 8 {
            count -= 8
            out.append(UInt8(truncatingIfNeeded: bits >> UInt32(count)))
            bits &= (1 << UInt32(count)) - 1
        }
    }
    // Leftover bits must be zero and fewer than a byte, as an encoder leaves them.
    guard count < 6 || count == 0, bits == 0, padding <= 2 else { return nil }
    return out
}
