import BackupRules
import Foundation
import NIOCore
import Synchronization

/// Blobs as objects of an S3-compatible store, under `sha256-HEX` in the
/// location's prefix, so that any backupd process sharing the catalog and
/// the bucket reads what another stored.
///
/// Content of known hash goes straight to its final key: in one PUT up to
/// `partSize`, else as a multipart upload of `partSize` parts, `partsInFlight`
/// of them sent at once and the upload aborted if anything fails; an object
/// exists under its key only once complete. Content streamed in (a member
/// of an uploaded archive) is staged first: its key is its hash, known only
/// at its end. Every part is signed with its SHA-256, which the store checks.
/// Reads go a `partSize` range at a time, the next range fetched while the
/// last is consumed, each range tried again on its own if it breaks off, and
/// the whole checked against the hash.
///
/// An object store cannot mark a blob reused (its time is when it was
/// stored): a collection that finds an unrecorded blob a running job has
/// just reused claims it, and that job fails as one whose blob was
/// collected, to be run again. Unrecorded blobs are what failed jobs left.
///
/// With `objectLock`, the bucket (made with object lock, so versioned)
/// keeps each object's versions: removing a blob removes its versions,
/// which the store refuses for one it retains (`RetainingStore`).
public struct ObjectBlobStore: BlobStore {
    public let client: ObjectStoreClient
    /// Where streamed content is staged; on this machine, not shared (the
    /// work folder's scratch, swept of what dead jobs left).
    public let scratchDirectory: String
    public let partSize: Int
    public let partsInFlight: Int
    /// How backups are retained (`--s3-object-lock`); nil when they are not.
    public let objectLock: ObjectLockMode?
    /// The multipart uploads this process has under way, which its
    /// collections never take for abandoned whatever the store says of
    /// their age (moto says 2010 of every one).
    let ownUploads = OwnUploads()
    public private(set) var reuseClaims = ReuseClaims.unasked

    public func asking(_ claims: ReuseClaims) -> any BlobStore {
        var store = self
        store.reuseClaims = claims
        return store
    }
    static let keyPrefix = "sha256-"

    public init(client: ObjectStoreClient, scratchDirectory: String, partSize: Int = 8 << 20, partsInFlight: Int = 3,
                objectLock: ObjectLockMode? = nil) throws {
        precondition(partSize > 0, "a part has bytes")
        self.client = client
        self.objectLock = objectLock
        self.scratchDirectory = scratchDirectory
        self.partSize = partSize
        self.partsInFlight = max(1, partsInFlight)
        try FileSystem.makeFolders(scratchDirectory)
    }

    /// The key a blob is stored under, relative to the location's prefix.
    public func key(_ hash: ContentHash) -> String { Self.keyPrefix + hash.hex }

    public func writer() throws -> any BlobWriter {
        ObjectBlobWriter(store: self)
    }

    public func objectWriter() throws -> any BlobWriter {
        ObjectBlobWriter(store: self)
    }

    public func readObject(_ name: ContentHash, interruption: Interruption?, _ consume: (UnsafeRawBufferPointer) throws -> Void) throws -> UInt64 {
        let key = key(name), client = client, step = UInt64(partSize)
        func fetch(_ offset: UInt64) -> Task<(bytes: ByteBuffer, objectSize: UInt64)?, any Error> {
            Task { try await client.read(key, range: offset...(offset + step - 1)) }
        }
        var pending = fetch(0)
        defer { pending.cancel() }
        var offset: UInt64 = 0
        while true {
            let task = pending
            guard let (bytes, objectSize) = try waitFor({ try await task.value }) else { throw BlobStoreError.missing(name) }
            offset += UInt64(bytes.readableBytes)
            let more = offset < objectSize
            if more {
                guard bytes.readableBytes > 0 else {
                    throw ObjectStoreError.unexpected(operation: "reading \(key)", reason: "an empty range before the object's end")
                }
                pending = fetch(offset)
            }
            if interruption?.isSet == true { throw BlobStoreError.interrupted(path: key) }
            try bytes.withUnsafeReadableBytes { try consume($0) }
            if !more { break }
        }
        return offset
    }

    public func contains(_ hash: ContentHash) throws -> Bool {
        try size(of: hash) != nil
    }

    public func size(of hash: ContentHash) throws -> UInt64? {
        let key = key(hash), client = client
        return try waitFor { try await client.size(of: key) }
    }

    public func read(_ hash: ContentHash, at offset: UInt64, length: Int) throws -> ByteBuffer {
        let key = key(hash), client = client
        guard length > 0 else { return ByteBuffer() }
        guard let (bytes, _) = try waitFor({ try await client.read(key, range: offset...(offset + UInt64(length) - 1)) }) else {
            throw BlobStoreError.missing(hash)
        }
        return bytes
    }

    /// A part: one request per part keeps a reader near the store's pace.
    public var rangeReadSize: Int { partSize }

    /// Sent from the file without hashing it first; the parts are hashed as
    /// they go, and content that is not `blob` is refused before completion.
    public func adopt(_ path: String, as blob: StoredBlob) throws -> StoredBlob {
        defer { FileSystem.remove(path) }
        if reuses(blob) { return StoredBlob(hash: blob.hash, size: blob.size, written: false) }
        let file = try LocalFile.open(path)
        try send(blob.hash, size: blob.size) { upload in try file.readChunks(limit: blob.size, interruption: nil) { try upload.write($0) } }
        return StoredBlob(hash: blob.hash, size: blob.size, written: true)
    }

    /// A store that cannot be asked holds nothing to reuse: writing the
    /// content then fails with the store's reason.
    public func reuse(_ hash: ContentHash) -> Bool { (try? contains(hash)) ?? false }

    public func remove(_ hash: ContentHash) throws {
        if let failure = remove(all: [hash]).failure { throw failure }
    }

    /// A thousand keys a request (S3's DeleteObjects); with object lock,
    /// every version of each key, listed first.
    public func remove(all hashes: [ContentHash]) -> (removed: [ContentHash], failure: (any Error)?) {
        var removed: [ContentHash] = []
        let client = client, locked = objectLock != nil
        for start in stride(from: 0, to: hashes.count, by: 1000) {
            let batch = Array(hashes[start..<min(start + 1000, hashes.count)])
            let keys = batch.map(key)
            do {
                let refused = try waitFor { try await (locked ? Self.deleteVersions(of: keys, client) : client.delete(keys)) }
                if let first = refused.first {
                    let kept = Set(refused.map(\.key))
                    removed += batch.filter { !kept.contains(key($0)) }
                    return (removed, ObjectStoreError.refused(operation: "removing \(first.key)", status: 200, code: "", message: first.reason))
                }
                removed += batch
            } catch {
                return (removed, error)
            }
        }
        return (removed, nil)
    }

    /// Removes every version of `keys` (a thousand a request), eight keys'
    /// versions listed at a time; returns the keys of versions the store refused.
    private static func deleteVersions(of keys: [String], _ client: ObjectStoreClient) async throws -> [(key: String, reason: String)] {
        let versions = try await concurrently(keys, inFlight: 8) { key in
            try await client.versions(prefix: key).filter { $0.key == key }
        }.flatMap { $0 }
        var refused: [(key: String, reason: String)] = []
        for start in stride(from: 0, to: versions.count, by: 1000) {
            refused += try await client.delete(versions: Array(versions[start..<min(start + 1000, versions.count)]))
        }
        return refused
    }

    public func storedHashes(unusedSince cutoff: Date) throws -> [ContentHash] {
        let client = client
        return try waitFor { try await client.list(prefix: Self.keyPrefix) }.compactMap { object in
            object.lastModified < cutoff ? ContentHash(hex: String(object.key.dropFirst(Self.keyPrefix.count))) : nil
        }
    }

    /// Aborts multipart uploads of blobs started before `cutoff` and never
    /// finished: what a process that died mid-upload left, which the store
    /// would otherwise keep (and bill) for ever. This process's own uploads
    /// under way are left alone.
    public func dropAbandonedWrites(startedBefore cutoff: Date) throws -> Int {
        let client = client, own = ownUploads
        return try waitFor {
            var dropped = 0
            for (upload, started) in try await client.unfinishedUploads(prefix: Self.keyPrefix) where started < cutoff && !own.contains(upload.id) {
                try await client.abortUpload(upload)
                dropped += 1
            }
            return dropped
        }
    }

    public func put(reading file: LocalFile, upTo limit: UInt64, interruption: Interruption?) throws -> StoredBlob {
        let (hash, size) = try file.contentHash(limit: limit, interruption: interruption)
        if reuses(StoredBlob(hash: hash, size: size)) { return StoredBlob(hash: hash, size: size, written: false) }
        try file.rewind()
        do {
            try send(hash, size: size) { upload in try file.readChunks(limit: size, interruption: interruption) { try upload.write($0) } }
        } catch ObjectUploadChange.contentChanged {
            // The file changed since it was hashed: store what it holds now, hashed as it is read.
            try file.rewind()
            let writer = ObjectBlobWriter(store: self)
            try file.readChunks(limit: limit, interruption: interruption) { try writer.write($0) }
            return try writer.finish()
        }
        return StoredBlob(hash: hash, size: size, written: true)
    }

    /// Sends content of known `hash` and `size`, which `push` writes, to the
    /// key of `name` (its hash's unless given); an upload that fails is
    /// aborted, leaving nothing under the key.
    func send(_ hash: ContentHash, as name: ContentHash? = nil, size: UInt64, _ push: (ObjectUpload) throws -> Void) throws {
        let upload = ObjectUpload(store: self, key: key(name ?? hash), hash: hash, size: size)
        do {
            try push(upload)
            try upload.finish()
        } catch {
            upload.abandon()
            throw error
        }
    }
}

/// The ids of the multipart uploads a process has under way.
final class OwnUploads: Sendable {
    private let ids = Mutex(Set<String>())
    func insert(_ id: String) { ids.withLock { _ = $0.insert(id) } }
    func remove(_ id: String) { ids.withLock { _ = $0.remove(id) } }
    func contains(_ id: String) -> Bool { ids.withLock { $0.contains(id) } }
}

/// The content sent is not the content hashed (a file that changed in between).
enum ObjectUploadChange: Error { case contentChanged }

/// One object being sent: parts of `partSize` bytes as they fill, several
/// in flight, or one PUT for content of at most one part.
final class ObjectUpload {
    private let store: ObjectBlobStore
    private let key: String
    private let hash: ContentHash
    private let size: UInt64
    private let hasher = SHA256Hasher()
    private var part: ByteBuffer
    private var sent: UInt64 = 0
    private var multipart: MultipartUpload?
    private var inFlight: [Task<UploadedPart, any Error>] = []
    private var parts: [UploadedPart] = []

    init(store: ObjectBlobStore, key: String, hash: ContentHash, size: UInt64) {
        self.store = store
        self.key = key
        self.hash = hash
        self.size = size
        part = ByteBufferAllocator().buffer(capacity: Int(min(size, UInt64(store.partSize))))
    }

    func write(_ chunk: UnsafeRawBufferPointer) throws {
        hasher.update(chunk)
        var rest = chunk
        while !rest.isEmpty {
            let taken = min(rest.count, store.partSize - part.readableBytes)
            part.writeBytes(UnsafeRawBufferPointer(rebasing: rest[..<taken]))
            rest = UnsafeRawBufferPointer(rebasing: rest[taken...])
            if part.readableBytes == store.partSize, size > UInt64(store.partSize) { try sendPart() }
        }
    }

    private func sendPart() throws {
        let client = store.client
        if multipart == nil {
            let key = self.key
            let upload = try waitFor { try await client.startUpload(key) }
            store.ownUploads.insert(upload.id)
            multipart = upload
        }
        let upload = multipart!, number = parts.count + inFlight.count + 1, bytes = part
        sent += UInt64(bytes.readableBytes)
        part = ByteBufferAllocator().buffer(capacity: store.partSize)
        inFlight.append(Task { try await client.uploadPart(upload, number: number, bytes) })
        if inFlight.count >= store.partsInFlight { try awaitOldestPart() }
    }

    private func awaitOldestPart() throws {
        let task = inFlight.removeFirst()
        parts.append(try waitFor { try await task.value })
    }

    func finish() throws {
        guard sent + UInt64(part.readableBytes) == size, hasher.finish() == hash else { throw ObjectUploadChange.contentChanged }
        let client = store.client, key = self.key, hash = self.hash, size = self.size
        guard multipart != nil else {
            let bytes = part
            try waitFor { try await client.put(key, bytes, sha256: hash) }
            return
        }
        if part.readableBytes > 0 { try sendPart() }
        while !inFlight.isEmpty { try awaitOldestPart() }
        let upload = multipart!, parts = self.parts
        try waitFor { try await client.completeUpload(upload, parts: parts, size: size) }
        store.ownUploads.remove(upload.id)
        multipart = nil
    }

    /// Stops the parts still in flight and aborts the upload (a collection
    /// aborts it later if this cannot).
    func abandon() {
        inFlight.forEach { $0.cancel() }
        guard let upload = multipart else { return }
        let client = store.client, tasks = inFlight
        _ = try? waitFor {
            for task in tasks { _ = try? await task.value }
            try await client.abortUpload(upload)
        }
        store.ownUploads.remove(upload.id)
    }
}

/// The object store's `BlobWriter`: content staged (up to a part in memory,
/// the rest in a scratch file) until its hash is known, then sent to its key
/// unless the store holds it already.
final class ObjectBlobWriter: BlobWriter {
    private let store: ObjectBlobStore
    private let staged: StagedContent

    init(store: ObjectBlobStore) {
        self.store = store
        staged = StagedContent(heldBytes: store.partSize, scratchDirectory: store.scratchDirectory)
    }

    func write(_ chunk: UnsafeRawBufferPointer) throws {
        try staged.write(chunk)
    }

    func finish() throws -> StoredBlob {
        let hash = staged.finishHash(), size = staged.size
        if store.reuses(StoredBlob(hash: hash, size: size)) {
            staged.discard()
            return StoredBlob(hash: hash, size: size, written: false)
        }
        return try send(hash)
    }

    func finish(as name: ContentHash) throws -> StoredBlob {
        try send(staged.finishHash(), as: name)
    }

    private func send(_ hash: ContentHash, as name: ContentHash? = nil) throws -> StoredBlob {
        try store.send(hash, as: name, size: staged.size) { upload in try staged.readBack { try upload.write($0) } }
        staged.discard()
        return StoredBlob(hash: name ?? hash, size: staged.size, written: true)
    }
}

extension ObjectStoreError: ReportableError {
    /// What the store said, which names the operation and the object but
    /// no credential or signature.
    public var publicError: BackupError { .unavailable("the server's storage failed: \(description)") }
    public var logDetail: String { description }
}

extension ObjectBlobStore: RetainingStore {
    public var retaining: (any RetainingStore)? { objectLock == nil ? nil : self }

    public func retain(_ name: ContentHash, until date: Date) async throws {
        guard let objectLock else { return }
        try await client.retain(key(name), until: date, mode: objectLock)
    }

    public func retainedUntil(_ name: ContentHash) async throws -> Date? { try await client.retention(of: key(name))?.until }

    public func canRetain() async throws -> Bool { try await client.objectLockEnabled() }
}
