import BackupCatalog
import BackupRules
import BackupStorage
import BackupWire
import Foundation
import NIOConcurrencyHelpers
import NIOPosix

/// Receives uploads: each call's chunks are written to a spool file of the
/// call's own (`UPLOAD.WRITER.upload`) in the order the catalog says comes
/// next and hashed as they arrive, so an archive is never held in memory.
/// A batch of written bytes counts (in the catalog) once it is a segment
/// in the blob store: a blob of its own, recorded as the upload's from its
/// first byte, and the call's file starts again empty. So the bytes counted
/// are wherever the store is, and a call cut off, a full disk, a restart or
/// the loss of this machine leaves an upload that any process sharing the
/// catalog and the store resumes from its count, or validates.
final class UploadSpool: Sendable {
    let directory: String
    private let catalog: Catalog
    private let stores: NamespaceStores
    private let threadPool: NIOThreadPool
    /// How long an upload may go without a chunk before it is abandoned.
    let lifetime: Duration
    private let clock: any ServiceClock
    /// The running hash of each upload whose last call ended here; a call
    /// takes it out while it sends (the catalog's writer lease keeps calls apart).
    private let hashes = NIOLockedValueBox<[String: RunningHash]>([:])

    /// Free space the disk keeps beyond every unfinished upload.
    private let reservedDiskBytes: UInt64

    init(directory: String, catalog: Catalog, stores: NamespaceStores, threadPool: NIOThreadPool, lifetime: Duration,
         reservedDiskBytes: UInt64, clock: any ServiceClock) throws {
        try FileSystem.makeFolders(directory)
        self.directory = directory
        self.catalog = catalog
        self.stores = stores
        self.threadPool = threadPool
        self.lifetime = lifetime
        self.reservedDiskBytes = reservedDiskBytes
        self.clock = clock
    }

    /// The spool file of one call (`writer`) of an upload: each call has its
    /// own, so a call whose lease ran out can never store what the next
    /// call writes as its own segment, nor disturb that call's file.
    func path(of uploadID: String, writer: String) -> String { "\(directory)/\(uploadID).\(writer).upload" }

    /// What the disk that keeps received bytes (the local blob store's, else
    /// the spool's) has free beyond its reserve (everything, when the disk
    /// cannot be asked).
    func usableDiskBytes() -> UInt64 {
        guard let free = FileSystem.freeBytes(in: stores.base.localFolder ?? directory) else { return .max }
        return free > reservedDiskBytes ? free - reservedDiskBytes : 0
    }

    /// Refuses a reserved upload unless the disk, with `usable` bytes free
    /// beyond its reserve, holds it beside what the others are still to
    /// receive (the refusal names this upload's size only).
    func requireRoom(for reservation: UploadReservation, usable: UInt64) throws(BackupError) {
        let size = reservation.upload.sizeBytes
        if usable < size + reservation.othersToCome {
            throw .resourceExhausted("the server's disk for uploads has too little free space for an upload of \(size) bytes "
                                     + "(it keeps \(reservedDiskBytes) bytes free); try again later")
        }
    }

    /// Receives one call's chunks of `upload` in order. The call holds the
    /// upload's writer lease in the catalog for as long as it sends (another
    /// call, in any process, is ABORTED meanwhile), and confirms it before
    /// each write, so no two calls ever write one upload. Each chunk opens
    /// the spool file, writes and closes it: a call waiting for its next
    /// chunk holds neither a descriptor nor a chunk. Written bytes count once
    /// stored as a segment, as `UploadReceipt` says: 64 MiB or a second's
    /// worth of at least 1 MiB at a time, and when the call ends (however it
    /// ends, the chunks it wrote whole count, but for a small tail past the
    /// upload's share of small segments). The
    /// last byte's arrival checks the SHA-256: a mismatch fails the upload
    /// with DATA_LOSS and removes its data.
    func receive<Chunks: AsyncSequence<UploadChunk, any Error>>(_ upload: Upload, chunks: Chunks) async throws {
        guard upload.state == .receiving else {
            throw BackupError.failedPrecondition("upload \(upload.id) is \(upload.state); chunks are taken only while it is receiving")
        }
        let writer = UUID().uuidString
        guard let (received, smallSegments) = try await catalog.claimUpload(id: upload.id, writer: writer, seconds: Self.leaseSeconds,
                                                                            smallSegmentBytes: UploadReceipt.smallestSegmentBytes) else {
            throw BackupError.aborted("another call is sending upload \(upload.id)'s chunks; one call at a time")
        }
        do {
            try await receive(upload, from: received, smallSegments: smallSegments, writer: writer, chunks: chunks)
        } catch {
            // A call cut off or cancelled lets go of its upload at once, so the client can resume without waiting out the lease.
            _ = try? await withoutCancellation { [catalog] in try await catalog.releaseUpload(id: upload.id, writer: writer) }
            throw error
        }
        // A deadline or a Cancel ends the chunks as if the client had half-closed, in a cancelled task: let go all the same.
        try await withoutCancellation { [catalog] in try await catalog.releaseUpload(id: upload.id, writer: writer) }
    }

    private func receive<Chunks: AsyncSequence<UploadChunk, any Error>>(_ upload: Upload, from start: UInt64, smallSegments: Int,
                                                                        writer: String, chunks: Chunks) async throws {
        guard start < upload.sizeBytes else {
            throw BackupError.failedPrecondition("upload \(upload.id) has received all its \(upload.sizeBytes) bytes; it takes no more chunks")
        }
        // This call's own file, gone when it ends: what it counted is in the store, what it did not is sent again.
        let path = self.path(of: upload.id, writer: writer)
        try await threadPool.runIfActive { _ = try LocalFile.create(path) }
        defer { FileSystem.remove(path) }
        // This process's running hash of the bytes so far, else (after a restart, or another process's chunks) one
        // made from the segments once a first chunk is taken: a call refused at its first chunk reads nothing.
        var hash = cachedHash(upload.id, covering: start)
        var receipt = UploadReceipt(uploadID: upload.id, size: upload.sizeBytes, counted: start, smallSegments: smallSegments, now: clock.now)
        var iterator = chunks.makeAsyncIterator()
        var refusal: (any Error)?
        while !receipt.isComplete {
            // In a scope of its own, so the chunk is let go before the next is awaited.
            let due: UploadReceipt.Count?
            do {
                guard let chunk = try await iterator.next() else { break }
                if let refused = receipt.chunk(uploadID: chunk.uploadID, offset: chunk.offset, length: chunk.data.count) { throw refused }
                guard try await catalog.renewUploadLease(id: upload.id, writer: writer, offset: receipt.counted, seconds: Self.leaseSeconds) else {
                    throw receipt.writerLeaseLost()
                }
                let running: RunningHash
                if let hash {
                    running = hash
                } else {
                    running = try await runningHash(of: upload, received: start)
                    hash = running
                }
                try await threadPool.runIfActive { [data = chunk.data, offset = chunk.offset, first = receipt.counted] in
                    try Self.write(data, to: path, at: offset - first, upload: offset)
                }
                chunk.data.withUnsafeBytes {
                    running.hasher.update($0)
                    running.segment.update($0)
                }
                running.covers += UInt64(chunk.data.count)
                due = receipt.written(now: clock.now)
            } catch {
                refusal = error
                break
            }
            if let due, let hash { try await count(upload, due, writer: writer, hash: hash, receipt: &receipt) }
        }
        // A call that ends, is refused or is cut off early keeps the chunks it wrote whole (counted even though
        // the call's task is cancelled); a refusal is then its answer. Nothing to count: no chunk was written.
        if let due = receipt.ended(now: clock.now), let hash { try await count(upload, due, writer: writer, hash: hash, receipt: &receipt) }
        // Kept for the next call, refused or not, so no call makes this process read the segments again.
        if let hash, !receipt.isComplete, hash.covers == receipt.counted { cache(upload.id, hash) }
        if let refusal { throw refusal }
        guard receipt.isComplete else { return }
        // Anything sent after the last byte is past the size.
        if let extra = try await iterator.next(),
           let refused = receipt.chunk(uploadID: extra.uploadID, offset: extra.offset, length: extra.data.count) {
            throw refused
        }
    }

    /// Counts a batch the receipt says is due, or ends the call when the
    /// upload is this call's no more. A count once begun runs to its end even
    /// when the call's deadline or a Cancel comes meanwhile (seen in a test:
    /// a batch due just as the deadline passed failed its fsync as cancelled,
    /// and chunks written whole went uncounted).
    private func count(_ upload: Upload, _ due: UploadReceipt.Count, writer: String, hash: RunningHash,
                       receipt: inout UploadReceipt) async throws {
        let recorded = try await withoutCancellation { try await self.count(upload, due, writer: writer, hash: hash) }
        guard recorded else { throw receipt.writerLeaseLost() }
        receipt.counted(to: due.to, now: clock.now)
    }

    /// Stores the bytes written past `due.from` (the spool file) as the
    /// upload's next segment and counts them in the catalog; false when the
    /// upload is no longer this writer's. The segment is recorded before it
    /// is stored, so a collection keeps it, and counted after. The last
    /// byte counts only once the whole archive's hash is checked: a
    /// complete upload is a verified one.
    private func count(_ upload: Upload, _ due: UploadReceipt.Count, writer: String, hash: RunningHash) async throws -> Bool {
        let (path, store) = (self.path(of: upload.id, writer: writer), try await stores.store(for: upload.namespace))
        if due.complete { try await checkHash(upload, hash) }
        let segmentHash = hash.endSegment()
        let segment = StoredBlob(hash: segmentHash, size: due.to - due.from, name: store.name(of: segmentHash))
        guard try await catalog.recordUploadSegment(uploadID: upload.id, writer: writer, first: due.from, blob: segment) else { return false }
        try await threadPool.runIfActive {
            // A chunk whose write failed may have left bytes past those counted.
            try FileSystem.truncate(path, to: segment.size)
            _ = try store.adopt(path, as: segment)
            if !due.complete { try Self.startSegment(path) }
        }
        return try await catalog.recordReceived(uploadID: upload.id, writer: writer, from: due.from, to: due.to, lifetime: lifetime)
    }

    /// The running hash of an upload's first `received` bytes, read back
    /// from its segments in the store. A segment the store lost or holds
    /// damaged fails the upload, naming it: nothing can resume it.
    private func runningHash(of upload: Upload, received: UInt64) async throws -> RunningHash {
        let segments = try await catalog.uploadSegments(uploadID: upload.id, received: received)
        let store = try await stores.store(for: upload.namespace)
        do {
            return try await threadPool.runIfActive { try Self.hash(segments, in: store) }
        } catch let damage as BlobStoreError {
            switch damage {
            case .corrupt, .missing, .unreadable: break
            default: throw damage
            }
            let reason = "what it received is damaged in the server's storage (\(damage)); nothing was kept, upload the archive again"
            try await catalog.failUpload(id: upload.id, reason: reason)
            remove([upload.id])
            throw BackupError.dataLoss(reason)
        }
    }

    /// Compares a received upload's hash with the one announced; a mismatch
    /// fails the upload with DATA_LOSS and removes its data.
    private func checkHash(_ upload: Upload, _ hash: RunningHash) async throws {
        let actual = hash.hasher.finish().hex
        guard actual != upload.sha256 else { return }
        let reason = "the archive's SHA-256 is \(actual), not the \(upload.sha256) announced; nothing was kept"
        try await catalog.failUpload(id: upload.id, reason: reason)
        remove([upload.id])
        throw BackupError.dataLoss(reason)
    }

    /// How long a call holds an upload without sending a chunk before another call may take it over.
    static let leaseSeconds = 60

    /// The running hash this process kept for an upload, if it covers exactly `bytes`; taken out of the cache.
    private func cachedHash(_ uploadID: String, covering bytes: UInt64) -> RunningHash? {
        hashes.withLockedValue { hashes in
            defer { hashes[uploadID] = nil }
            return hashes[uploadID].flatMap { $0.covers == bytes ? $0 : nil }
        }
    }

    private func cache(_ uploadID: String, _ hash: RunningHash) {
        hashes.withLockedValue { $0[uploadID] = hash }
    }

    /// Removes uploads' files and running hashes.
    func remove(_ uploadIDs: [String]) {
        let ids = Set(uploadIDs)
        for name in (try? FileSystem.names(in: directory)) ?? [] where Self.uploadID(ofFile: name).map(ids.contains) == true {
            FileSystem.remove("\(directory)/\(name)")
        }
        hashes.withLockedValue { hashes in for id in uploadIDs { hashes[id] = nil } }
    }

    /// The upload ids of the spool's files.
    func listedUploads() throws -> [String] {
        Array(Set(try FileSystem.names(in: directory).compactMap(Self.uploadID(ofFile:))))
    }

    /// The upload a spool file (`UPLOAD.WRITER.upload`) belongs to.
    private static func uploadID(ofFile name: String) -> String? {
        guard name.hasSuffix(".upload"), let dot = name.firstIndex(of: ".") else { return nil }
        return String(name[..<dot])
    }

    /// Removes the files of `listed` uploads neither receiving nor being validated, and of
    /// ids the catalog does not know once they are a minute old (a younger
    /// one may belong to a start whose transaction has not committed yet).
    func sweep(listed: [String], unfinished: Set<String>, known: Set<String>) -> Int {
        let minuteAgo = Date().addingTimeInterval(-60).timeIntervalSince1970
        let names = (try? FileSystem.names(in: directory)) ?? []
        let gone = listed.filter { id in
            guard !unfinished.contains(id) else { return false }
            guard !known.contains(id) else { return true }
            return names.filter { Self.uploadID(ofFile: $0) == id }
                .allSatisfy { (FileSystem.modified("\(directory)/\($0)") ?? 0) < minuteAgo }
        }
        remove(gone)
        return gone.count
    }

    /// Writes a chunk (the upload's bytes from `upload`) at `offset` of the
    /// spool file, opened for it alone.
    private static func write(_ data: [UInt8], to path: String, at offset: UInt64, upload: UInt64) throws {
        do {
            try data.withUnsafeBytes { try openData(path, writing: true).write($0, at: offset) }
        } catch BlobStoreError.cannotWrite(_, let code) where code == ENOSPC || code == EDQUOT {
            throw BackupError.resourceExhausted("the upload spool's disk is full; the upload keeps what it received "
                                               + "(\(upload) bytes) and resumes from there once there is room")
        }
    }

    /// An empty spool file for the next segment's chunks.
    private static func startSegment(_ path: String) throws {
        FileSystem.remove(path)
        _ = try LocalFile.create(path)
    }

    /// The running hash of the bytes an upload's segments hold, read back from the store.
    private static func hash(_ segments: [StoredBlob], in store: any BlobStore) throws -> RunningHash {
        let hash = RunningHash()
        try ConcatenatedBlobs(segments, in: store).forEachChunk { hash.hasher.update($0) }
        hash.covers = segments.reduce(0) { $0 + $1.size }
        return hash
    }

    /// The upload's file, or a refusal saying its data is gone.
    private static func openData(_ path: String, writing: Bool = false) throws -> LocalFile {
        guard let file = try LocalFile.openIfPresent(path, writing: writing) else {
            throw BackupError.failedPrecondition("the upload's data is gone (it expired or failed)")
        }
        return file
    }
}

/// An upload's running SHA-256 and how many bytes it covers, with the hash
/// of the segment being written. One call at a time takes it out of the
/// spool's cache (`cachedHash`) and puts it back (`cache`); only that call
/// touches it meanwhile: it moves between tasks but is never shared, which
/// is why it may be sent.
private final class RunningHash: @unchecked Sendable {
    let hasher = SHA256Hasher()
    var covers: UInt64 = 0
    private(set) var segment = SHA256Hasher()

    /// The hash of the segment written since the last, and a new one begun.
    func endSegment() -> ContentHash {
        defer { segment = SHA256Hasher() }
        return segment.finish()
    }
}
