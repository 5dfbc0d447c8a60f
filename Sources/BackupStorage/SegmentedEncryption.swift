import BackupRules
import COpenSSL
import Foundation

/// The format blobs are encrypted in: AES-256-GCM over segments of 64 KiB,
/// each with a nonce that carries its index and marks the last one (the
/// STREAM construction of age and Tink's streaming AEAD), so that a blob is
/// written and read as a stream and any range of it is read by its segments
/// alone. An object is
///
///     magic "BKE1" | salt (16 random bytes) | nonce prefix (7 random bytes)
///     | segment 0 | segment 1 | … | last segment | address tag (32 bytes)
///
/// where each segment is its ciphertext followed by GCM's 16-byte tag; every
/// segment holds `segmentSize` bytes of content but the last, which holds 0
/// to `segmentSize` (an empty blob is one empty last segment). Segment `i`
/// is sealed with the nonce `prefix | i as 4 bytes big-endian | 1 if last
/// else 0`, under a key HKDF-SHA256 derives from the namespace's content
/// key and the object's salt. The address tag, an HMAC under a second key
/// so derived of the header and the blob's address, binds the object to
/// where it is kept: the address is known only once the content's hash is,
/// at the end of a stream, so the tag ends the object and a stream is
/// written front to back. An object copied under another address or into
/// another namespace, or whose header was changed, fails its tag (or, in
/// another namespace, its first segment); cutting segments off, reordering
/// them or adding some after the last fails a segment's tag.
public enum SegmentedEncryption {
    public static let magic = Array("BKE1".utf8)
    public static let segmentSize = 64 << 10
    public static let saltSize = 16
    public static let noncePrefixSize = 7
    public static let tagSize = 16
    public static let addressTagSize = 32
    public static let headerSize = magic.count + saltSize + noncePrefixSize
    static let sealedSegmentSize = segmentSize + tagSize

    /// How large the object of `size` bytes of content is.
    public static func sealedSize(ofContent size: UInt64) -> UInt64 {
        UInt64(headerSize) + size + UInt64(tagSize) * segmentCount(ofContent: size) + UInt64(addressTagSize)
    }

    /// How much content an object of `size` bytes holds; nil when no object is that long.
    public static func contentSize(ofSealed size: UInt64) -> UInt64? {
        guard size >= UInt64(headerSize + tagSize + addressTagSize) else { return nil }
        let body = size - UInt64(headerSize + addressTagSize)
        let whole = body / UInt64(sealedSegmentSize), rest = body % UInt64(sealedSegmentSize)
        // A last segment holds at least its tag; an object ending on a segment's edge ends with a full one.
        guard rest == 0 || rest >= UInt64(tagSize) else { return nil }
        let content = whole * UInt64(segmentSize) + (rest == 0 ? 0 : rest - UInt64(tagSize))
        return sealedSize(ofContent: content) == size ? content : nil
    }

    /// Segments of `size` bytes of content: at least one.
    static func segmentCount(ofContent size: UInt64) -> UInt64 {
        max(1, (size + UInt64(segmentSize) - 1) / UInt64(segmentSize))
    }

    /// Where segment `index` starts in the object, and how long it is sealed, for content of `size` bytes.
    public static func sealedRange(ofSegment index: UInt64, contentSize size: UInt64) -> Range<UInt64> {
        let start = UInt64(headerSize) + index * UInt64(sealedSegmentSize)
        let contentStart = index * UInt64(segmentSize)
        let length = min(UInt64(segmentSize), size - min(size, contentStart)) + UInt64(tagSize)
        return start..<start + length
    }

    /// The segments holding content bytes `range` of content of `size` bytes.
    public static func segments(holding range: Range<UInt64>, contentSize size: UInt64) -> ClosedRange<UInt64> {
        let last = segmentCount(ofContent: size) - 1
        let first = min(range.lowerBound / UInt64(segmentSize), last)
        return first...min(max(range.upperBound, 1) - 1, max(size, 1) - 1) / UInt64(segmentSize)
    }
}

/// Why sealed content does not open: named like a corrupt chunk.
public enum SealedContentError: Error, Equatable, CustomStringConvertible {
    /// The header is not this format's, or the object's size is no object's.
    case notSealed
    /// The address tag does not hold: another blob's or namespace's object, or a changed header or tag.
    case notThisBlob
    /// A segment's tag does not hold: changed, cut, moved, or of another object.
    case segmentDoesNotOpen(UInt64)

    public var description: String {
        switch self {
        case .notSealed: "is not an encrypted blob of this format, or was cut"
        case .notThisBlob: "is not this blob's: another blob's or namespace's object, or its header or tag was changed"
        case .segmentDoesNotOpen(let index): "does not open at its segment \(index): changed, cut, moved, or another object's"
        }
    }
}

/// The keys a namespace's blobs are addressed and sealed with, derived
/// from its data key: what makes the same content in two namespaces two
/// unrelated objects, while a namespace's own copies share one.
public struct NamespaceKeys: Sendable {
    private let addressKey: Secret<[UInt8]>
    private let contentKey: Secret<[UInt8]>

    public static let dataKeySize = 32

    /// A new random data key for a namespace.
    public static func newDataKey() -> [UInt8] { Secure.randomBytes(dataKeySize) }

    public init(dataKey: [UInt8]) {
        precondition(dataKey.count == Self.dataKeySize, "a namespace's data key is 32 bytes")
        addressKey = Secret(HKDF.sha256(secret: dataKey, salt: [], info: Array("backupd blob address v1".utf8), count: 32))
        contentKey = Secret(HKDF.sha256(secret: dataKey, salt: [], info: Array("backupd blob content v1".utf8), count: 32))
    }

    /// Where the namespace keeps content of `hash`: an HMAC of the hash,
    /// which tells nobody without the key what the content is, or whether
    /// another namespace holds it.
    public func address(of hash: ContentHash) -> ContentHash {
        ContentHash(digest: Secure.hmacSHA256(key: addressKey.revealed, hash.digest))
    }

    /// The keys of the object whose header carries `salt`: its segments' and its address tag's.
    fileprivate func objectKeys(salt: ArraySlice<UInt8>) -> (segments: [UInt8], addressTag: [UInt8]) {
        let keys = HKDF.sha256(secret: contentKey.revealed, salt: Array(salt), info: Array("backupd object keys v1".utf8), count: 64)
        return (Array(keys.prefix(32)), Array(keys.suffix(32)))
    }
}

/// The tag binding an object's header to the blob's address.
private func addressTag(key: [UInt8], header: [UInt8], address: ContentHash) -> [UInt8] {
    Secure.hmacSHA256(key: key, header + address.digest)
}

/// Seals content as it comes, a segment at a time: `header` first, then
/// what `seal` hands on, then what `finish` hands on. The last segment is
/// held back until `finish`, which alone knows it is the last, and which
/// ends the object with its address tag.
public final class ContentSealer {
    private let cipher: AES256GCM.Sealer
    private let addressTagKey: [UInt8]
    private let noncePrefix: [UInt8]
    /// The segment being filled: its first `filled` bytes.
    private let pending = UnsafeMutableRawBufferPointer.allocate(byteCount: SegmentedEncryption.segmentSize, alignment: 16)
    private var filled = 0
    /// Sealed segments not yet handed on, its first `sealed` bytes: a
    /// call's segments go on together, so the object is written in pieces
    /// of up to a MiB rather than one per segment (profiled with a write per
    /// segment: the sealed store's writes of a backup's documents took 2.9
    /// times the CPU of the unsealed store's, which also hash what they write).
    private let output = UnsafeMutableRawBufferPointer.allocate(
        byteCount: ContentSealer.outputSegments * (SegmentedEncryption.segmentSize + SegmentedEncryption.tagSize), alignment: 16)
    private var sealed = 0
    static let outputSegments = 16
    private var index: UInt32 = 0
    /// What to write first.
    public let header: [UInt8]

    public init(keys: NamespaceKeys) {
        let salt = Secure.randomBytes(SegmentedEncryption.saltSize)
        noncePrefix = Secure.randomBytes(SegmentedEncryption.noncePrefixSize)
        let (key, addressTagKey) = keys.objectKeys(salt: salt[...])
        cipher = AES256GCM.Sealer(key: key)
        self.addressTagKey = addressTagKey
        header = SegmentedEncryption.magic + salt + noncePrefix
    }

    deinit {
        pending.deallocate()
        output.deallocate()
    }

    /// Takes `bytes` of content; hands the segments they completed, sealed, to `emit`.
    public func seal(_ bytes: UnsafeRawBufferPointer, _ emit: (UnsafeRawBufferPointer) throws -> Void) rethrows {
        let size = SegmentedEncryption.segmentSize
        var rest = bytes
        while let source = rest.baseAddress, !rest.isEmpty {
            // A full segment is sealed only once more content follows it: until then it may be the last.
            if filled == size {
                try sealSegment(UnsafeRawBufferPointer(pending), last: false, emit)
                filled = 0
            }
            if filled == 0 && rest.count > size {
                // A whole segment of the caller's bytes, more following: sealed where it is, not copied first.
                try sealSegment(UnsafeRawBufferPointer(rebasing: rest[..<size]), last: false, emit)
                rest = UnsafeRawBufferPointer(rebasing: rest[size...])
                continue
            }
            let count = min(size - filled, rest.count)
            pending.baseAddress!.advanced(by: filled).copyMemory(from: source, byteCount: count)
            filled += count
            rest = UnsafeRawBufferPointer(rebasing: rest[count...])
        }
        try handOn(emit)
    }

    /// Seals what is held back as the last segment, followed by the tag
    /// of the blob kept at `address` (its content's, as the namespace addresses it).
    public func finish(address: ContentHash, _ emit: (UnsafeRawBufferPointer) throws -> Void) rethrows {
        try sealSegment(UnsafeRawBufferPointer(rebasing: pending[..<filled]), last: true, emit)
        filled = 0
        try handOn(emit)
        try addressTag(key: addressTagKey, header: header, address: address).withUnsafeBytes(emit)
    }

    /// Seals `content` as the next segment behind those not yet handed on (handing those on first when there is no room).
    private func sealSegment(_ content: UnsafeRawBufferPointer, last: Bool, _ emit: (UnsafeRawBufferPointer) throws -> Void) rethrows {
        precondition(index < UInt32.max, "a blob of more than 256 TiB")
        if output.count - sealed < content.count + SegmentedEncryption.tagSize { try handOn(emit) }
        let nonce = segmentNonce(noncePrefix, index: UInt64(index), last: last)
        sealed += cipher.seal(content, nonce: nonce, into: UnsafeMutableRawBufferPointer(rebasing: output[sealed...]))
        index += 1
    }

    private func handOn(_ emit: (UnsafeRawBufferPointer) throws -> Void) rethrows {
        guard sealed > 0 else { return }
        try emit(UnsafeRawBufferPointer(rebasing: output[..<sealed]))
        sealed = 0
    }
}

/// Opens an object's segments, in any order, each on its own: what
/// streaming and ranged reads need. Whether a segment is the last comes
/// from the object's size, so an object cut at a segment's edge fails at
/// what is now its last segment. A ranged read checks the address tag
/// first; a stream checks it when it reaches it, at the end (a segment
/// that opens is the namespace's content either way).
public struct ContentOpener: Sendable {
    private let key: Secret<[UInt8]>
    private let addressTagKey: Secret<[UInt8]>
    private let header: [UInt8]
    private let noncePrefix: [UInt8]
    /// How much content the object holds.
    public let contentSize: UInt64

    /// `header` is the object's first `SegmentedEncryption.headerSize` bytes; `sealedSize` its whole size.
    public init(keys: NamespaceKeys, header: [UInt8], sealedSize: UInt64) throws(SealedContentError) {
        guard header.count == SegmentedEncryption.headerSize, header.starts(with: SegmentedEncryption.magic),
              let contentSize = SegmentedEncryption.contentSize(ofSealed: sealedSize) else {
            throw .notSealed
        }
        let salt = header.dropFirst(SegmentedEncryption.magic.count).prefix(SegmentedEncryption.saltSize)
        let (segmentKey, addressTagKey) = keys.objectKeys(salt: salt)
        key = Secret(segmentKey)
        self.addressTagKey = Secret(addressTagKey)
        self.header = header
        noncePrefix = Array(header.dropFirst(SegmentedEncryption.magic.count + SegmentedEncryption.saltSize)
            .prefix(SegmentedEncryption.noncePrefixSize))
        self.contentSize = contentSize
    }

    /// Checks the object's last `SegmentedEncryption.addressTagSize` bytes:
    /// it is the one kept at `address`.
    public func checkAddress(_ address: ContentHash, tag: some Collection<UInt8>) throws(SealedContentError) {
        let expected = addressTag(key: addressTagKey.revealed, header: header, address: address)
        guard tag.count == expected.count, CRYPTO_memcmp(expected, Array(tag), expected.count) == 0 else { throw .notThisBlob }
    }

    /// Where the address tag starts in the object.
    public var addressTagOffset: UInt64 { SegmentedEncryption.sealedSize(ofContent: contentSize) - UInt64(SegmentedEncryption.addressTagSize) }

    /// The content of segment `index`, from its sealed bytes.
    public func open(segment index: UInt64, _ sealed: some Collection<UInt8>) throws(SealedContentError) -> [UInt8] {
        let last = SegmentedEncryption.segmentCount(ofContent: contentSize) - 1
        guard index <= last,
              let content = AES256GCM.open(Array(sealed), key: key.revealed, nonce: segmentNonce(noncePrefix, index: index, last: index == last)) else {
            throw .segmentDoesNotOpen(index)
        }
        return content
    }
}

private func segmentNonce(_ prefix: [UInt8], index: UInt64, last: Bool) -> [UInt8] {
    let counter = UInt32(truncatingIfNeeded: index)
    return prefix + [UInt8(counter >> 24), UInt8(truncatingIfNeeded: counter >> 16), UInt8(truncatingIfNeeded: counter >> 8),
                     UInt8(truncatingIfNeeded: counter), last ? 1 : 0]
}

/// AES-256-GCM from OpenSSL, one message at a time: the tag follows the ciphertext.
enum AES256GCM {
    /// One key's cipher context, keyed once and given a new nonce per
    /// message: an object's segments are sealed with no allocation and no
    /// key schedule each.
    final class Sealer {
        private let context: OpaquePointer

        init(key: [UInt8]) {
            guard let context = EVP_CIPHER_CTX_new(), EVP_EncryptInit_ex(context, EVP_aes_256_gcm(), nil, key, nil) == 1 else {
                preconditionFailure("OpenSSL AES-256-GCM failed to start")
            }
            self.context = context
        }

        deinit { EVP_CIPHER_CTX_free(context) }

        /// Seals `plaintext` into `out` (room for it and the tag); returns the sealed length.
        func seal(_ plaintext: UnsafeRawBufferPointer, nonce: [UInt8], into out: UnsafeMutableRawBufferPointer) -> Int {
            precondition(out.count >= plaintext.count + SegmentedEncryption.tagSize)
            var length: Int32 = 0, final: Int32 = 0
            let input = plaintext.baseAddress?.assumingMemoryBound(to: UInt8.self)
            let output = out.baseAddress!.assumingMemoryBound(to: UInt8.self)
            let done = EVP_EncryptInit_ex(context, nil, nil, nil, nonce) == 1
                && EVP_EncryptUpdate(context, output, &length, input, Int32(plaintext.count)) == 1
                && EVP_EncryptFinal_ex(context, output + Int(length), &final) == 1
                && EVP_CIPHER_CTX_ctrl(context, EVP_CTRL_AEAD_GET_TAG, Int32(SegmentedEncryption.tagSize), output + plaintext.count) == 1
            precondition(done && Int(length + final) == plaintext.count, "OpenSSL AES-256-GCM failed to seal")
            return plaintext.count + SegmentedEncryption.tagSize
        }
    }

    static func seal(_ plaintext: UnsafeRawBufferPointer, key: [UInt8], nonce: [UInt8]) -> [UInt8] {
        var sealed = [UInt8](repeating: 0, count: plaintext.count + SegmentedEncryption.tagSize)
        _ = sealed.withUnsafeMutableBytes { Sealer(key: key).seal(plaintext, nonce: nonce, into: $0) }
        return sealed
    }

    /// The plaintext, or nil when the tag does not hold.
    static func open(_ sealed: [UInt8], key: [UInt8], nonce: [UInt8]) -> [UInt8]? {
        guard sealed.count >= SegmentedEncryption.tagSize else { return nil }
        let count = sealed.count - SegmentedEncryption.tagSize
        let context = EVP_CIPHER_CTX_new()
        defer { EVP_CIPHER_CTX_free(context) }
        var plaintext = [UInt8](repeating: 0, count: max(count, 1))
        var tag = Array(sealed.suffix(SegmentedEncryption.tagSize))
        var length: Int32 = 0, final: Int32 = 0
        let opened = plaintext.withUnsafeMutableBufferPointer { out -> Bool in
            EVP_DecryptInit_ex(context, EVP_aes_256_gcm(), nil, key, nonce) == 1
                && EVP_DecryptUpdate(context, out.baseAddress, &length, sealed, Int32(count)) == 1
                && EVP_CIPHER_CTX_ctrl(context, EVP_CTRL_AEAD_SET_TAG, Int32(SegmentedEncryption.tagSize), &tag) == 1
                && EVP_DecryptFinal_ex(context, out.baseAddress! + Int(length), &final) == 1
        }
        return opened ? Array(plaintext.prefix(count)) : nil
    }
}

/// HKDF with SHA-256 (RFC 5869): several independent keys from one secret.
public enum HKDF {
    public static func sha256(secret: [UInt8], salt: [UInt8], info: [UInt8], count: Int) -> [UInt8] {
        precondition(count <= 255 * 32, "HKDF-SHA256 gives at most 8160 bytes")
        let pseudorandomKey = Secure.hmacSHA256(key: salt.isEmpty ? [UInt8](repeating: 0, count: 32) : salt, secret)
        var output: [UInt8] = [], block: [UInt8] = []
        var counter: UInt8 = 1
        while output.count < count {
            block = Secure.hmacSHA256(key: pseudorandomKey, block + info + [counter])
            output += block
            counter &+= 1
        }
        return Array(output.prefix(count))
    }
}

/// AES-256 key wrap (RFC 3394) from OpenSSL: a namespace's data key kept
/// in the catalog under a master key, its integrity checked on unwrapping.
public enum KeyWrap {
    public static func wrap(_ key: [UInt8], with wrappingKey: [UInt8]) -> [UInt8] {
        let wrapped = run(key, wrappingKey: wrappingKey, encrypt: true)
        precondition(wrapped != nil, "OpenSSL AES key wrap failed")
        return wrapped!
    }

    /// The key, or nil when `wrapped` was not wrapped with `wrappingKey` (or was changed).
    public static func unwrap(_ wrapped: [UInt8], with wrappingKey: [UInt8]) -> [UInt8]? {
        guard wrapped.count >= 24, wrapped.count % 8 == 0 else { return nil }
        return run(wrapped, wrappingKey: wrappingKey, encrypt: false)
    }

    private static func run(_ input: [UInt8], wrappingKey: [UInt8], encrypt: Bool) -> [UInt8]? {
        let context = EVP_CIPHER_CTX_new()
        defer { EVP_CIPHER_CTX_free(context) }
        EVP_CIPHER_CTX_set_flags(context, Int32(EVP_CIPHER_CTX_FLAG_WRAP_ALLOW))
        var output = [UInt8](repeating: 0, count: input.count + 16)
        var length: Int32 = 0, final: Int32 = 0
        let done = output.withUnsafeMutableBufferPointer { out -> Bool in
            EVP_CipherInit_ex(context, EVP_aes_256_wrap(), nil, wrappingKey, nil, encrypt ? 1 : 0) == 1
                && EVP_CipherUpdate(context, out.baseAddress, &length, input, Int32(input.count)) > 0
                && EVP_CipherFinal_ex(context, out.baseAddress! + Int(length), &final) == 1
        }
        return done ? Array(output.prefix(Int(length + final))) : nil
    }
}

/// The master keys that wrap namespaces' data keys (`--storage-keys`),
/// kept apart from the store: `KeyFile`'s format, the key in use named by
/// `wrap-with` (else the last listed). The one in use wraps; any listed
/// unwraps, so rotating is adding a key, making it the one in use and
/// wrapping the namespaces' keys again, no blob re-encrypted.
public struct StorageKeys: Sendable {
    public let file: KeyFile

    public init(parsing text: String) throws(BackupError) {
        file = try KeyFile(parsing: text, kind: "storage key", directive: "wrap-with")
    }

    public init(reading path: String) throws(BackupError) {
        file = try KeyFile(reading: path, kind: "storage key", directive: "wrap-with")
    }

    /// A data key wrapped with the key in use, and that key's id.
    public func wrap(_ dataKey: [UInt8]) -> (keyID: String, wrapped: [UInt8]) {
        (file.current.id, KeyWrap.wrap(dataKey, with: Array(file.current.secret.revealed.prefix(32))))
    }

    /// A data key wrapped with key `keyID`; errors say which key is missing or does not unwrap it.
    public func unwrap(_ wrapped: [UInt8], keyID: String) throws(BackupError) -> [UInt8] {
        guard let key = file.key(keyID) else {
            throw .failedPrecondition("a namespace's data key is wrapped with storage key \(keyID), which the storage key file does not list")
        }
        guard let dataKey = KeyWrap.unwrap(wrapped, with: Array(key.secret.revealed.prefix(32))) else {
            throw .dataLoss("a namespace's data key does not unwrap with storage key \(keyID): the key or the wrapped data key was changed")
        }
        return dataKey
    }
}
