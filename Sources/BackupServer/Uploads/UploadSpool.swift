import BackupCatalog
import BackupCore
import BackupWire
import Foundation
import NIOConcurrencyHelpers
import NIOPosix

/// The folder where uploads are received, one file per upload (`ID.upload`),
/// written chunk by chunk at the offset the catalog says comes next and
/// hashed as it arrives, so an archive is never held in memory and never
/// read twice. A chunk's bytes count (in the catalog) only once written and
/// hashed: a call cut off, a full disk or a restart leaves an upload that
/// resumes from its count.
final class UploadSpool: Sendable {
    let directory: String
    private let catalog: Catalog
    private let threadPool: NIOThreadPool
    /// How long an upload may go without a chunk before it is abandoned.
    let lifetime: Duration
    /// The running hash of each upload this process has received into, with
    /// the bytes it covers; nil while a call holds it.
    private let hashes = NIOLockedValueBox<[String: RunningHash?]>([:])

    /// Free space the disk keeps beyond every unfinished upload.
    private let reservedDiskBytes: UInt64

    init(directory: String, catalog: Catalog, threadPool: NIOThreadPool, lifetime: Duration, reservedDiskBytes: UInt64) throws {
        try makeDirectories(directory)
        self.directory = directory
        self.catalog = catalog
        self.threadPool = threadPool
        self.lifetime = lifetime
        self.reservedDiskBytes = reservedDiskBytes
    }

    func path(of uploadID: String) -> String { "\(directory)/\(uploadID).upload" }

    /// Makes an upload's empty file, if the disk has room for its `size`
    /// beside the `others` bytes unfinished uploads announced (the refusal
    /// names this upload's size only); the file must not exist.
    func create(_ uploadID: String, size: UInt64, beside others: UInt64) throws {
        var info = statvfs()
        if statvfs(directory, &info) == 0, UInt64(info.f_bavail) * UInt64(info.f_frsize) < size + others + reservedDiskBytes {
            throw BackupError.resourceExhausted("the upload spool's disk has too little free space for an upload of \(size) bytes "
                                                + "(it keeps \(reservedDiskBytes) bytes free); try again later")
        }
        let fd = open(path(of: uploadID), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw BlobStoreError.cannotWrite(path: path(of: uploadID), errno: errno) }
        close(fd)
    }

    /// Receives one call's chunks of `upload` in order. One call at a time
    /// per upload in this process (ABORTED otherwise); the catalog's count
    /// keeps processes sharing it apart. The last byte's arrival checks the
    /// SHA-256: a mismatch fails the upload with DATA_LOSS and removes its data.
    func receive<Chunks: AsyncSequence<UploadChunk, any Error>>(_ upload: Upload, first: UploadChunk, rest: Chunks) async throws {
        guard upload.state == .receiving else {
            throw BackupError.failedPrecondition("upload \(upload.id) is \(upload.state); chunks are taken only while it is receiving")
        }
        var hash = try take(upload.id)
        var handedBack = false
        defer { if !handedBack { give(upload.id, hash) } }
        var received = upload.bytesReceived
        let fd = open(path(of: upload.id), O_RDWR | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { throw BackupError.failedPrecondition("upload \(upload.id) has no data here any more (it was removed)") }
        defer { close(fd) }
        if hash == nil || hash!.covers != received {
            // First chunks here since a restart, or since another process received some: hash what is on disk so far.
            hash = try await threadPool.runIfActive { [path = path(of: upload.id), received] in
                try Self.hashPrefix(fd, path: path, length: received)
            }
        }
        var chunk: UploadChunk? = first
        var iterator = rest.makeAsyncIterator()
        while let current = chunk {
            guard current.uploadID == upload.id else {
                throw BackupError.invalidArgument("a call sends the chunks of one upload; it began with \(upload.id), not \(current.uploadID)")
            }
            guard current.offset == received else {
                throw BackupError.outOfRange("chunk at offset \(current.offset), but upload \(upload.id) expects offset \(received)")
            }
            guard UInt64(current.data.count) <= upload.sizeBytes - received else {
                throw BackupError.outOfRange("chunk of \(current.data.count) bytes at offset \(received) goes past the upload's "
                                             + "announced size of \(upload.sizeBytes) bytes")
            }
            try await threadPool.runIfActive { [path = path(of: upload.id), data = current.data, offset = received] in
                try Self.write(data, to: fd, at: offset, path: path)
            }
            current.data.withUnsafeBytes { hash!.hasher.update($0) }
            hash!.covers += UInt64(current.data.count)
            guard try await catalog.recordReceived(uploadID: upload.id, from: received, to: hash!.covers, lifetime: lifetime) else {
                hash = nil
                throw BackupError.aborted("upload \(upload.id) received chunks from another call meanwhile; ask GetUpload where to go on")
            }
            received = hash!.covers
            chunk = try await iterator.next()
        }
        if received == upload.sizeBytes {
            let actual = hash!.hasher.finish().hex
            hash = nil
            guard actual == upload.sha256 else {
                let reason = "the archive's SHA-256 is \(actual), not the \(upload.sha256) announced; nothing was kept"
                try await catalog.failUpload(id: upload.id, reason: reason)
                remove([upload.id])
                handedBack = true
                throw BackupError.dataLoss(reason)
            }
        }
    }

    /// The running hash of an upload, for one call to own; ABORTED while another call has it.
    private func take(_ uploadID: String) throws(BackupError) -> RunningHash? {
        let (busy, held): (Bool, RunningHash?) = hashes.withLockedValue { hashes in
            if let entry = hashes[uploadID], entry == nil { return (true, nil) }
            defer { hashes[uploadID] = .some(nil) }
            return (false, hashes[uploadID] ?? nil)
        }
        guard !busy else { throw .aborted("another call is sending upload \(uploadID)'s chunks; one call at a time") }
        return held
    }

    private func give(_ uploadID: String, _ hash: RunningHash?) {
        hashes.withLockedValue { hashes in
            if let hash { hashes[uploadID] = .some(hash) } else { hashes[uploadID] = nil }
        }
    }

    /// Removes uploads' files and running hashes.
    func remove(_ uploadIDs: [String]) {
        for id in uploadIDs { unlink(path(of: id)) }
        hashes.withLockedValue { hashes in for id in uploadIDs { hashes[id] = nil } }
    }

    /// Removes every file but those of uploads still receiving; the folder is
    /// listed before the catalog is asked, so an upload started in between stays.
    func sweep(listing: [String], keeping receiving: Set<String>) -> Int {
        let gone = listing.filter { $0.hasSuffix(".upload") }.map { String($0.dropLast(".upload".count)) }.filter { !receiving.contains($0) }
        remove(gone)
        return gone.count
    }

    func listing() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: directory)
    }

    private static func write(_ data: [UInt8], to fd: Int32, at offset: UInt64, path: String) throws {
        var done = 0
        while done < data.count {
            let count = data.withUnsafeBytes { pwrite(fd, $0.baseAddress! + done, data.count - done, off_t(offset) + off_t(done)) }
            if count < 0 && errno == EINTR { continue }
            guard count >= 0 else {
                let code = errno
                if code == ENOSPC || code == EDQUOT {
                    throw BackupError.resourceExhausted("the upload spool's disk is full; the upload keeps what it received "
                                                       + "(\(offset) bytes) and resumes from there once there is room")
                }
                throw BlobStoreError.cannotWrite(path: path, errno: code)
            }
            done += count
        }
        guard fsync(fd) == 0 else { throw BlobStoreError.cannotWrite(path: path, errno: errno) }
    }

    private static func hashPrefix(_ fd: Int32, path: String, length: UInt64) throws -> RunningHash {
        let hash = RunningHash()
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        var done: UInt64 = 0
        while done < length {
            let want = Int(min(UInt64(buffer.count), length - done))
            let count = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress!, want, off_t(done)) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { throw BlobStoreError.cannotRead(path: path, errno: count == 0 ? EIO : errno) }
            buffer.withUnsafeBytes { hash.hasher.update(UnsafeRawBufferPointer(rebasing: $0.prefix(count))) }
            done += UInt64(count)
        }
        hash.covers = done
        return hash
    }
}

/// An upload's running SHA-256 and how many bytes it covers. The spool hands
/// it to one call at a time (`take`, `give`) and only that call touches it:
/// it moves between tasks but is never shared, which is why it may be sent.
private final class RunningHash: @unchecked Sendable {
    let hasher = SHA256Hasher()
    var covers: UInt64 = 0
}
