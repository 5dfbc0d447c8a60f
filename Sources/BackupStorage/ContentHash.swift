import COpenSSL

/// The address of a blob: the SHA-256 of its content, shown as lowercase
/// hex. The 32 bytes are held inline rather than as text, as the manifest
/// of an upload of half a million documents holds as many of them.
public struct ContentHash: Hashable, Sendable, CustomStringConvertible {
    /// The digest's bytes, eight at a time, most significant first.
    private let words: (first: UInt64, second: UInt64, third: UInt64, fourth: UInt64)

    /// Accepts exactly 64 lowercase hex digits.
    public init?(hex: String) {
        var values: [UInt8] = []
        values.reserveCapacity(64)
        for byte in hex.utf8 {
            switch byte {
            case 48...57: values.append(byte - 48)
            case 97...102: values.append(byte - 87)
            default: return nil
            }
            guard values.count <= 64 else { return nil }
        }
        guard values.count == 64 else { return nil }
        self.init(digest: stride(from: 0, to: 64, by: 2).map { values[$0] << 4 | values[$0 + 1] })
    }

    /// The hash whose digest is these 32 bytes.
    init(digest: some Collection<UInt8>) {
        precondition(digest.count == 32, "a SHA-256 digest is 32 bytes")
        var words: [UInt64] = [0, 0, 0, 0]
        for (index, byte) in digest.enumerated() { words[index / 8] = words[index / 8] << 8 | UInt64(byte) }
        self.words = (words[0], words[1], words[2], words[3])
    }

    public static func == (lhs: Self, rhs: Self) -> Bool { lhs.words == rhs.words }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(words.first)
        hasher.combine(words.second)
        hasher.combine(words.third)
        hasher.combine(words.fourth)
    }

    /// 64 lowercase hex digits.
    public var hex: String {
        hexString([words.first, words.second, words.third, words.fourth].flatMap { word in
            (0..<8).reversed().map { UInt8(truncatingIfNeeded: word >> (8 * $0)) }
        })
    }

    public var description: String { hex }

    /// The SHA-256 of a byte sequence held in memory.
    public static func of(_ bytes: some Sequence<UInt8>) -> ContentHash {
        let hasher = SHA256Hasher()
        let array = Array(bytes)
        array.withUnsafeBytes { hasher.update($0) }
        return hasher.finish()
    }
}

/// Incremental SHA-256 through OpenSSL's EVP interface.
public final class SHA256Hasher {
    private let context: OpaquePointer

    public init() {
        context = EVP_MD_CTX_new()
        EVP_DigestInit_ex(context, EVP_sha256(), nil)
    }

    deinit { EVP_MD_CTX_free(context) }

    public func update(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, !bytes.isEmpty else { return }
        EVP_DigestUpdate(context, base, bytes.count)
    }

    public func finish() -> ContentHash {
        var digest = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        EVP_DigestFinal_ex(context, &digest, &length)
        return ContentHash(digest: digest.prefix(Int(length)))
    }
}

/// Cryptographic randomness from OpenSSL.
public enum Secure {
    /// `count` bytes from OpenSSL's CSPRNG.
    public static func randomBytes(_ count: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        precondition(RAND_bytes(&bytes, Int32(count)) == 1, "OpenSSL RAND_bytes failed")
        return bytes
    }
}

func hexString(_ bytes: some Sequence<UInt8>) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    for byte in bytes {
        out.append(digits[Int(byte >> 4)])
        out.append(digits[Int(byte & 0x0f)])
    }
    return String(decoding: out, as: UTF8.self)
}
