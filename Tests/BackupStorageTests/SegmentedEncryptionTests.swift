@testable import BackupStorage
import BackupRules
import Foundation
import Testing

/// The pieces blobs will be encrypted with (issue 23): the primitives
/// against their standards' vectors, then the segmented format as a stream,
/// by ranges, and against every way of tampering with an object.
@Suite struct SegmentedEncryptionTests {
    private func bytes(_ hex: String) -> [UInt8] {
        stride(from: 0, to: hex.count, by: 2).map { UInt8(hex.dropFirst($0).prefix(2), radix: 16)! }
    }

    @Test func hkdfMatchesRFC5869() {
        let ikm = [UInt8](repeating: 0x0b, count: 22)
        #expect(HKDF.sha256(secret: ikm, salt: Array(0...12), info: Array(0xf0...0xf9), count: 42)
                == bytes("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"))
        #expect(HKDF.sha256(secret: ikm, salt: [], info: [], count: 42)
                == bytes("8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"))
    }

    @Test func keyWrapMatchesRFC3394AndRefusesAnotherKey() {
        let kek = Array(UInt8(0)...UInt8(31))
        let key = bytes("00112233445566778899aabbccddeeff000102030405060708090a0b0c0d0e0f")
        let wrapped = KeyWrap.wrap(key, with: kek)
        #expect(wrapped == bytes("28c9f404c4b810f4cbccb35cfb87f8263f5786e2d80ed326cbc7f0e71a99f43bfb988b9b7a02dd21"))
        #expect(KeyWrap.unwrap(wrapped, with: kek) == key)
        #expect(KeyWrap.unwrap(wrapped, with: Array(UInt8(1)...UInt8(32))) == nil)
        var changed = wrapped
        changed[9] ^= 1
        #expect(KeyWrap.unwrap(changed, with: kek) == nil)
        #expect(KeyWrap.unwrap(Array(wrapped.dropLast(8)), with: kek) == nil)
    }

    @Test func aesGCMMatchesTheSpecificationsVectors() {
        // Test cases 13 and 14 of McGrew and Viega's GCM specification: a zero key and nonce.
        let key = [UInt8](repeating: 0, count: 32), nonce = [UInt8](repeating: 0, count: 12)
        #expect([UInt8]().withUnsafeBytes { AES256GCM.seal($0, key: key, nonce: nonce) } == bytes("530f8afbc74536b9a963b4f1c4cb738b"))
        let sealed = [UInt8](repeating: 0, count: 16).withUnsafeBytes { AES256GCM.seal($0, key: key, nonce: nonce) }
        #expect(sealed == bytes("cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919"))
        #expect(AES256GCM.open(sealed, key: key, nonce: nonce) == [UInt8](repeating: 0, count: 16))
    }

    let keys = NamespaceKeys(dataKey: NamespaceKeys.newDataKey())
    let address = ContentHash.of(Array("some content".utf8))

    /// `content` sealed as a stream, fed in pieces of `piece` bytes, front to back.
    private func sealed(_ content: [UInt8], piece: Int = 10_000) -> [UInt8] {
        let sealer = ContentSealer(keys: keys)
        var object = sealer.header
        for start in stride(from: 0, to: content.count, by: piece) {
            content[start..<min(start + piece, content.count)].withUnsafeBytes { sealer.seal($0) { object += $0 } }
        }
        sealer.finish(address: address) { object += $0 }
        return object
    }

    /// The content of `object`, its address checked and then opened segment by segment.
    private func opened(_ object: [UInt8], keys: NamespaceKeys? = nil, address: ContentHash? = nil) throws(SealedContentError) -> [UInt8] {
        let opener = try ContentOpener(keys: keys ?? self.keys, header: Array(object.prefix(SegmentedEncryption.headerSize)),
                                       sealedSize: UInt64(object.count))
        try opener.checkAddress(address ?? self.address, tag: object.suffix(SegmentedEncryption.addressTagSize))
        var content: [UInt8] = []
        for index in 0..<SegmentedEncryption.segmentCount(ofContent: opener.contentSize) {
            let range = SegmentedEncryption.sealedRange(ofSegment: index, contentSize: opener.contentSize)
            content += try opener.open(segment: index, object[Int(range.lowerBound)..<Int(range.upperBound)])
        }
        return content
    }

    @Test(arguments: [0, 1, 65_535, 65_536, 65_537, 3 * 65_536, 3 * 65_536 + 5])
    func contentOfAnySizeSealsAsAStreamAndOpens(_ size: Int) throws {
        let content = Secure.randomBytes(size)
        // Pieces larger than a segment are sealed where they are; smaller ones gather in the sealer first.
        for piece in [1_000, 65_536, 100_000, 1 << 20] {
            let object = sealed(content, piece: piece)
            #expect(UInt64(object.count) == SegmentedEncryption.sealedSize(ofContent: UInt64(size)))
            #expect(SegmentedEncryption.contentSize(ofSealed: UInt64(object.count)) == UInt64(size))
            #expect(try opened(object) == content)
        }
        // Sealed twice, the same content makes two different objects: each has a salt and nonce prefix of its own.
        #expect(sealed(content) != sealed(content))
    }

    @Test func aRangeIsReadFromItsSegmentsAlone() throws {
        let size = 5 * 65_536 + 123
        let content = Secure.randomBytes(size)
        let object = sealed(content)
        let opener = try ContentOpener(keys: keys, header: Array(object.prefix(SegmentedEncryption.headerSize)), sealedSize: UInt64(object.count))
        for range in [0..<1, 65_535..<65_537, 100_000..<300_000, size - 1..<size, 0..<size] {
            let segments = SegmentedEncryption.segments(holding: UInt64(range.lowerBound)..<UInt64(range.upperBound), contentSize: UInt64(size))
            var read: [UInt8] = []
            for index in segments {
                let sealedRange = SegmentedEncryption.sealedRange(ofSegment: index, contentSize: UInt64(size))
                read += try opener.open(segment: index, object[Int(sealedRange.lowerBound)..<Int(sealedRange.upperBound)])
            }
            let offset = Int(segments.lowerBound) * SegmentedEncryption.segmentSize
            #expect(Array(read[(range.lowerBound - offset)..<(range.upperBound - offset)]) == Array(content[range]), "\(range)")
        }
    }

    @Test func everyTamperingIsNamed() throws {
        let segment = SegmentedEncryption.segmentSize + SegmentedEncryption.tagSize
        let content = Secure.randomBytes(3 * SegmentedEncryption.segmentSize + 100)
        let object = sealed(content)
        func refusal(_ object: [UInt8], keys: NamespaceKeys? = nil, address: ContentHash? = nil) -> SealedContentError? {
            do {
                _ = try opened(object, keys: keys, address: address)
                return nil
            } catch {
                return error
            }
        }
        var flipped = object
        flipped[SegmentedEncryption.headerSize + segment + 7] ^= 0x20
        #expect(refusal(flipped) == .segmentDoesNotOpen(1))
        var magic = object
        magic[0] ^= 1
        #expect(refusal(magic) == .notSealed)
        // Salt, nonce prefix or the address tag itself.
        for place in [SegmentedEncryption.magic.count + 1, SegmentedEncryption.magic.count + SegmentedEncryption.saltSize + 2,
                      object.count - 1] {
            var header = object
            header[place] ^= 1
            #expect(refusal(header) == .notThisBlob, "a change at \(place) of the header or tag")
        }
        // Cut at a segment's edge, its tag moved along: what is now the last segment was not sealed as the last.
        let cut = Array(object.prefix(SegmentedEncryption.headerSize + 3 * segment) + object.suffix(SegmentedEncryption.addressTagSize))
        #expect(refusal(cut) == .segmentDoesNotOpen(2))
        #expect(refusal(Array(object.dropLast(1))) != nil)
        #expect(refusal(Array(object.prefix(SegmentedEncryption.headerSize + 5))) == .notSealed)
        // Two segments swapped.
        let first = SegmentedEncryption.headerSize
        let swapped = Array(object[..<first]) + Array(object[(first + segment)..<(first + 2 * segment)])
            + Array(object[first..<(first + segment)]) + Array(object[(first + 2 * segment)...])
        #expect(refusal(swapped) == .segmentDoesNotOpen(0))
        // Segments added after the last.
        #expect(refusal(Array(object.dropLast(SegmentedEncryption.addressTagSize)) + Array(object[first..<(first + segment)])
                        + Array(object.suffix(SegmentedEncryption.addressTagSize))) != nil)
        // The object under another address (another blob's), or read with another namespace's keys.
        #expect(refusal(object, address: ContentHash.of(Array("other".utf8))) == .notThisBlob)
        #expect(refusal(object, keys: NamespaceKeys(dataKey: NamespaceKeys.newDataKey())) == .notThisBlob)
        #expect(try opened(object) == content)
    }

    @Test func addressesAreTheNamespacesOwn() {
        let hash = ContentHash.of(Array("the same document".utf8))
        let other = NamespaceKeys(dataKey: NamespaceKeys.newDataKey())
        #expect(keys.address(of: hash) == keys.address(of: hash))
        #expect(keys.address(of: hash) != other.address(of: hash) && keys.address(of: hash) != hash)
    }

    @Test func storageKeysWrapWithTheOneInUseAndUnwrapWithAnyListed() throws {
        let (old, new) = (Data(Secure.randomBytes(32)).base64EncodedString(), Data(Secure.randomBytes(32)).base64EncodedString())
        let before = try StorageKeys(parsing: "old = \(old)\n")
        let dataKey = NamespaceKeys.newDataKey()
        let (keyID, wrapped) = before.wrap(dataKey)
        #expect(keyID == "old")
        // Step one of a rotation: the new key listed everywhere, the old one still wrapping.
        let listed = try StorageKeys(parsing: "old = \(old)\nnew = \(new)\nwrap-with old\n")
        #expect(listed.wrap(dataKey).keyID == "old")
        // Step two: the new key wraps; what the old one wrapped still unwraps.
        let rotated = try StorageKeys(parsing: "old = \(old)\nnew = \(new)\n")
        #expect(try rotated.unwrap(wrapped, keyID: "old") == dataKey)
        let rewrapped = rotated.wrap(dataKey)
        #expect(rewrapped.keyID == "new")
        #expect(try rotated.unwrap(rewrapped.wrapped, keyID: "new") == dataKey)
        #expect(throws: BackupError.self) { try StorageKeys(parsing: "new = \(new)\n").unwrap(wrapped, keyID: "old") }
        #expect(throws: BackupError.self) { try StorageKeys(parsing: "old = \(new)\n").unwrap(wrapped, keyID: "old") }
        #expect(throws: BackupError.self) { try StorageKeys(parsing: "old = \(old)\nwrap-with other\n") }
    }
}
