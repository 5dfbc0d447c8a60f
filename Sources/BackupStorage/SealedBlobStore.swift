import BackupRules
import Foundation
import NIOCore
import Synchronization

/// A namespace's view of the blob store, which keeps the namespace's content
/// encrypted (`SegmentedEncryption`) under the namespace's addresses of its
/// hashes. Callers name content by its hash, as with any store; the store
/// underneath sees only addresses that tell nobody without the namespace's
/// key what the content is or whether another namespace holds it, and
/// bytes nobody without that key reads. The same content in two namespaces
/// is two unrelated objects; within one it is kept once.
///
/// Content kept before encryption (as is, under its hash) is still read:
/// whole, checked against its hash, when no sealed object stands for it;
/// by range (which nothing checks), only when the catalog recorded it kept
/// as is (`read(_:at:length:)` of a `StoredBlob`). It is never reused: a
/// backup that meets it again stores it encrypted, and collection removes
/// the old copy once no backup refers to it.
public struct SealedBlobStore: BlobStore {
    public let inner: any BlobStore
    let keys: NamespaceKeys
    /// Objects a ranged read opened lately: a download reads an archive a
    /// range at a time, and its header and tag need reading only once.
    private let openers: RecentOpeners

    public init(_ inner: any BlobStore, keys: NamespaceKeys) {
        self.init(inner, keys: keys, openers: RecentOpeners())
    }

    private init(_ inner: any BlobStore, keys: NamespaceKeys, openers: RecentOpeners) {
        self.inner = inner
        self.keys = keys
        self.openers = openers
    }

    /// Where the store underneath keeps content of `hash`.
    public func address(of hash: ContentHash) -> ContentHash { keys.address(of: hash) }

    public func name(of hash: ContentHash) -> ContentHash { address(of: hash) }

    public var reuseClaims: ReuseClaims { inner.reuseClaims }

    public func asking(_ claims: ReuseClaims) -> any BlobStore {
        SealedBlobStore(inner.asking(claims), keys: keys, openers: openers)
    }

    public func writer() throws -> any BlobWriter {
        try SealingWriter(store: self, asked: nil)
    }

    /// Objects under names given to them, as the store underneath keeps them.
    public func objectWriter() throws -> any BlobWriter { try inner.objectWriter() }

    public func readObject(_ name: ContentHash, interruption: Interruption?, _ consume: (UnsafeRawBufferPointer) throws -> Void) throws -> UInt64 {
        try inner.readObject(name, interruption: interruption, consume)
    }

    /// Opens the object segment by segment as it streams in, checks its
    /// address tag at its end, and the content against its hash.
    public func read(_ hash: ContentHash, interruption: Interruption?, _ consume: (UnsafeRawBufferPointer) throws -> Void) throws -> UInt64 {
        let address = address(of: hash)
        guard let sealedSize = try inner.size(of: address) else {
            return try inner.read(hash, interruption: interruption, consume)
        }
        let hasher = SHA256Hasher()
        let stream = OpeningStream(keys: keys, sealedSize: sealedSize)
        do {
            _ = try inner.readObject(address, interruption: interruption) { chunk in
                try stream.take(chunk) { content in
                    hasher.update(content)
                    try consume(content)
                }
            }
            try stream.finish(address: address)
        } catch let error as SealedContentError {
            throw BlobStoreError.unreadable(hash, reason: error.description)
        }
        let actual = hasher.finish()
        guard actual == hash else { throw BlobStoreError.corrupt(hash, actual: actual) }
        return stream.contentSize
    }

    /// A range of the namespace's sealed object of `hash`: never of content
    /// kept as is, which a range read cannot check (someone who can write
    /// the store could put any bytes of the right length under a hash).
    public func read(_ hash: ContentHash, at offset: UInt64, length: Int) throws -> ByteBuffer {
        let address = address(of: hash)
        guard let sealedSize = try inner.size(of: address) else { throw BlobStoreError.missing(hash) }
        do {
            return try readRange(address, sealedSize: sealedSize, offset: offset, length: length)
        } catch is SealedContentError {
            // The object may have been written again since it was opened (with another salt): once more, read afresh.
            openers.forget(address)
            do {
                return try readRange(address, sealedSize: sealedSize, offset: offset, length: length)
            } catch let error as SealedContentError {
                throw BlobStoreError.unreadable(hash, reason: error.description)
            }
        }
    }

    private func readRange(_ address: ContentHash, sealedSize: UInt64, offset: UInt64, length: Int) throws -> ByteBuffer {
        let opener = try opener(address, sealedSize: sealedSize)
        let end = min(opener.contentSize, offset + UInt64(max(0, length)))
        guard offset < end else { return ByteBuffer() }
        let segments = SegmentedEncryption.segments(holding: offset..<end, contentSize: opener.contentSize)
        let first = SegmentedEncryption.sealedRange(ofSegment: segments.lowerBound, contentSize: opener.contentSize).lowerBound
        let last = SegmentedEncryption.sealedRange(ofSegment: segments.upperBound, contentSize: opener.contentSize).upperBound
        let sealed = try inner.read(address, at: first, length: Int(last - first))
        guard sealed.readableBytes == Int(last - first) else { throw SealedContentError.notSealed }
        var content = ByteBuffer()
        content.reserveCapacity(Int(end - offset))
        for index in segments {
            let range = SegmentedEncryption.sealedRange(ofSegment: index, contentSize: opener.contentSize)
            let bytes = sealed.getBytes(at: sealed.readerIndex + Int(range.lowerBound - first), length: range.count) ?? []
            let opened = try opener.open(segment: index, bytes)
            let start = index * UInt64(SegmentedEncryption.segmentSize)
            let from = Int(max(offset, start) - start), to = Int(min(end, start + UInt64(opened.count)) - start)
            content.writeBytes(opened[from..<to])
        }
        return content
    }

    /// The opener of the object at `address`, its header read and its
    /// address tag checked (once, while it is among the recent ones).
    private func opener(_ address: ContentHash, sealedSize: UInt64) throws -> ContentOpener {
        if let known = openers.opener(address, sealedSize: sealedSize) { return known }
        let header = try inner.read(address, at: 0, length: SegmentedEncryption.headerSize)
        let opener = try ContentOpener(keys: keys, header: header.getBytes(at: header.readerIndex, length: header.readableBytes) ?? [],
                                       sealedSize: sealedSize)
        let tag = try inner.read(address, at: opener.addressTagOffset, length: SegmentedEncryption.addressTagSize)
        try opener.checkAddress(address, tag: tag.getBytes(at: tag.readerIndex, length: tag.readableBytes) ?? [])
        openers.remember(address, sealedSize: sealedSize, opener)
        return opener
    }

    public func contains(_ hash: ContentHash) throws -> Bool { try inner.contains(address(of: hash)) }

    /// A range of `blob` as the catalog recorded it: kept as is (named by
    /// its hash), or the namespace's sealed object, and nothing else.
    public func read(_ blob: StoredBlob, at offset: UInt64, length: Int) throws -> ByteBuffer {
        try keptAsIs(blob) ? inner.read(blob.hash, at: offset, length: length) : read(blob.hash, at: offset, length: length)
    }

    public func size(of blob: StoredBlob) throws -> UInt64? {
        try keptAsIs(blob) ? inner.size(of: blob.hash) : size(of: blob.hash)
    }

    /// Whether the catalog recorded `blob` as kept before encryption; a name
    /// that is neither that nor this namespace's is not the namespace's to read.
    private func keptAsIs(_ blob: StoredBlob) throws -> Bool {
        if blob.name == blob.hash { return true }
        guard blob.name == address(of: blob.hash) else {
            throw BlobStoreError.unreadable(blob.hash, reason: "it is recorded under a name that is not this namespace's")
        }
        return false
    }

    /// The content size of the namespace's sealed object of `hash`; nil
    /// when there is none (content kept as is is sized by its `StoredBlob`).
    public func size(of hash: ContentHash) throws -> UInt64? {
        guard let sealedSize = try inner.size(of: address(of: hash)) else { return nil }
        guard let size = SegmentedEncryption.contentSize(ofSealed: sealedSize) else {
            throw BlobStoreError.unreadable(hash, reason: SealedContentError.notSealed.description)
        }
        return size
    }

    public func reuse(_ hash: ContentHash) -> Bool { inner.reuse(address(of: hash)) }

    public func remove(_ hash: ContentHash) throws { try inner.remove(address(of: hash)) }

    public func remove(all hashes: [ContentHash]) -> (removed: [ContentHash], failure: (any Error)?) {
        let byAddress = Dictionary(hashes.map { (address(of: $0), $0) }, uniquingKeysWith: { first, _ in first })
        let (removed, failure) = inner.remove(all: Array(byAddress.keys))
        return (removed.compactMap { byAddress[$0] }, failure)
    }

    public func dropAbandonedWrites(startedBefore cutoff: Date) throws -> Int { try inner.dropAbandonedWrites(startedBefore: cutoff) }

    /// The names the store underneath holds: addresses, which only the
    /// catalog's rows match (collection goes by those).
    public func storedHashes(unusedSince cutoff: Date) throws -> [ContentHash] { try inner.storedHashes(unusedSince: cutoff) }

    /// Hashes the file first and seals only content the namespace lacks.
    public func put(reading file: LocalFile, upTo limit: UInt64, interruption: Interruption?) throws -> StoredBlob {
        let (hash, size) = try file.contentHash(limit: limit, interruption: interruption)
        let address = address(of: hash)
        if inner.reuses(StoredBlob(hash: address, size: size)) { return StoredBlob(hash: hash, size: size, name: address) }
        try file.rewind()
        let writer = try SealingWriter(store: self, asked: address)
        try file.readChunks(limit: limit, interruption: interruption) { try writer.write($0) }
        return try writer.finish()
    }

    /// Seals the file's content (an archive, an upload's segment) unless
    /// the namespace holds it; content that is not `blob` is refused.
    public func adopt(_ path: String, as blob: StoredBlob) throws -> StoredBlob {
        defer { FileSystem.remove(path) }
        let address = address(of: blob.hash)
        if inner.reuses(StoredBlob(hash: address, size: blob.size)) { return StoredBlob(hash: blob.hash, size: blob.size, name: address) }
        let writer = try SealingWriter(store: self, asked: address)
        try LocalFile.open(path).readChunks(limit: blob.size, interruption: nil) { try writer.write($0) }
        let stored = try writer.finish()
        guard stored.hash == blob.hash else { throw BlobStoreError.corrupt(blob.hash, actual: stored.hash) }
        return stored
    }

    public var rangeReadSize: Int { inner.rangeReadSize }

    public var localFolder: String? { inner.localFolder }
}

/// Content sealed as it is written, hashed in the same pass, and kept under
/// its address once the hash is known, unless the namespace holds it.
final class SealingWriter: BlobWriter {
    private let store: SealedBlobStore
    private let object: any BlobWriter
    private let sealer: ContentSealer
    private let hasher = SHA256Hasher()
    private var size: UInt64 = 0
    /// The address the caller already asked the store about.
    private let asked: ContentHash?

    init(store: SealedBlobStore, asked: ContentHash?) throws {
        self.store = store
        self.asked = asked
        object = try store.inner.objectWriter()
        sealer = ContentSealer(keys: store.keys)
        try sealer.header.withUnsafeBytes { try object.write($0) }
    }

    func write(_ chunk: UnsafeRawBufferPointer) throws {
        hasher.update(chunk)
        size += UInt64(chunk.count)
        try sealer.seal(chunk) { try object.write($0) }
    }

    func finish() throws -> StoredBlob {
        let hash = hasher.finish()
        let address = store.address(of: hash)
        if address != asked, store.inner.reuses(StoredBlob(hash: address, size: size)) {
            return StoredBlob(hash: hash, size: size, name: address)
        }
        try sealer.finish(address: address) { try object.write($0) }
        _ = try object.finish(as: address)
        return StoredBlob(hash: hash, size: size, written: true, name: address)
    }

    /// Sealed content is kept under its address alone.
    func finish(as name: ContentHash) throws -> StoredBlob {
        preconditionFailure("sealed content is kept under its namespace's address of its hash")
    }
}

/// Reads an object as it streams in: its header, then each segment opened
/// as soon as it is whole, then its address tag, checked at `finish`.
final class OpeningStream {
    private let keys: NamespaceKeys
    private let sealedSize: UInt64
    private var opener: ContentOpener?
    /// Bytes not yet used, from object offset `pendingStart`.
    private var pending: [UInt8] = []
    private var pendingStart: UInt64 = 0
    private var received: UInt64 = 0
    private var index: UInt64 = 0
    /// The content of the segments the last chunk completed.
    private var opened: [UInt8] = []

    init(keys: NamespaceKeys, sealedSize: UInt64) {
        self.keys = keys
        self.sealedSize = sealedSize
        pending.reserveCapacity(2 * (SegmentedEncryption.segmentSize + SegmentedEncryption.tagSize))
    }

    var contentSize: UInt64 { opener?.contentSize ?? 0 }

    func take(_ chunk: UnsafeRawBufferPointer, _ emit: (UnsafeRawBufferPointer) throws -> Void) throws {
        received += UInt64(chunk.count)
        guard received <= sealedSize else { throw SealedContentError.notSealed }
        pending.append(contentsOf: chunk)
        if opener == nil {
            guard pending.count >= SegmentedEncryption.headerSize else { return }
            opener = try ContentOpener(keys: keys, header: Array(pending[..<SegmentedEncryption.headerSize]), sealedSize: sealedSize)
        }
        guard let opener else { return }
        let segments = SegmentedEncryption.segmentCount(ofContent: opener.contentSize)
        var used = 0
        // The segments a chunk completes go on together: a reader writing a file writes in pieces of up to a
        // MiB rather than one per segment, as `ContentSealer` hands on what it seals.
        opened.removeAll(keepingCapacity: true)
        while index < segments {
            let range = SegmentedEncryption.sealedRange(ofSegment: index, contentSize: opener.contentSize)
            let end = Int(range.upperBound - pendingStart)
            guard end <= pending.count else { break }
            opened += try opener.open(segment: index, pending[Int(range.lowerBound - pendingStart)..<end])
            used = end
            index += 1
        }
        if !opened.isEmpty { try opened.withUnsafeBytes { try emit($0) } }
        if used > 0 {
            pending.removeFirst(used)
            pendingStart += UInt64(used)
        }
    }

    /// Checks that the whole object came and that it is the one kept at `address`.
    func finish(address: ContentHash) throws {
        guard let opener, received == sealedSize, index == SegmentedEncryption.segmentCount(ofContent: opener.contentSize) else {
            throw SealedContentError.notSealed
        }
        try opener.checkAddress(address, tag: pending)
    }
}

/// The openers of objects a ranged read opened lately, a few dozen at most.
final class RecentOpeners: Sendable {
    private let openers = Mutex<[ContentHash: (sealedSize: UInt64, opener: ContentOpener)]>([:])
    static let kept = 64

    func opener(_ address: ContentHash, sealedSize: UInt64) -> ContentOpener? {
        openers.withLock { $0[address].flatMap { $0.sealedSize == sealedSize ? $0.opener : nil } }
    }

    func remember(_ address: ContentHash, sealedSize: UInt64, _ opener: ContentOpener) {
        openers.withLock {
            if $0.count >= Self.kept { $0.removeAll(keepingCapacity: true) }
            $0[address] = (sealedSize, opener)
        }
    }

    func forget(_ address: ContentHash) {
        _ = openers.withLock { $0.removeValue(forKey: address) }
    }
}
