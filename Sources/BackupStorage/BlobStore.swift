import BackupRules
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Synchronization

/// A blob that is in the store.
public struct StoredBlob: Sendable, Equatable {
    public let hash: ContentHash
    public let size: UInt64
    /// False when the store already had this content and wrote nothing.
    public let written: Bool

    /// `written` is false for a blob known from the catalog, not just stored.
    public init(hash: ContentHash, size: UInt64, written: Bool = false) {
        self.hash = hash
        self.size = size
        self.written = written
    }
}

/// Failures of blob storage, each naming the path or blob concerned.
public enum BlobStoreError: ReportableError, CustomStringConvertible {
    case cannotRead(path: String, errno: Int32)
    case cannotWrite(path: String, errno: Int32)
    case missing(ContentHash)
    case corrupt(ContentHash, actual: ContentHash)
    case interrupted(path: String)

    public var description: String {
        switch self {
        case let .cannotRead(path, code): "cannot read \(path): \(String(cString: strerror(code)))"
        case let .cannotWrite(path, code): "cannot write \(path): \(String(cString: strerror(code)))"
        case let .missing(hash): "blob \(hash) is missing from the blob store"
        case let .corrupt(hash, actual): "blob \(hash) is corrupt: its content hashes to \(actual)"
        case let .interrupted(path): "reading \(path) was stopped"
        }
    }

    /// Missing and corrupt blobs are named by their hash, a failed read or
    /// write by the system's reason; the server's paths stay in its log.
    public var publicError: BackupError {
        switch self {
        case .missing, .corrupt: .dataLoss(description)
        case let .cannotWrite(_, code) where code == ENOSPC || code == EDQUOT:
            .resourceExhausted("the server's storage is full (\(String(cString: strerror(code)))); its log has the details")
        case let .cannotRead(_, code), let .cannotWrite(_, code):
            .internalFailure("the server could not use its storage (\(String(cString: strerror(code)))); its log has the details")
        case .interrupted: .aborted("reading the server's storage was stopped")
        }
    }

    public var logDetail: String { description }
}

/// Content-addressed storage of database dumps and file documents: each blob
/// is stored once under the SHA-256 of its content. The local folder is the
/// default backend; an object store can take its place behind this protocol.
///
/// Calls block on I/O: run them off event loops.
public protocol BlobStore: Sendable {
    /// Stores a copy of the content of an open file (a file document), read
    /// from its start and no further than `size` bytes (its size when it was
    /// opened), so a file that keeps growing cannot keep a backup reading;
    /// `name` names it in errors. Content the store has already is only
    /// read, not written again. Once `interruption` is set, reading stops
    /// within a chunk (its job was cancelled).
    func put(reading descriptor: Int32, upTo size: UInt64, name: String, interruption: Interruption?) throws -> StoredBlob
    /// Takes a file the caller made for the store (a database dump) into the
    /// store, moving rather than copying it where it can. The file is gone
    /// afterwards, whether the call succeeds or not.
    func adopt(_ path: String) throws -> StoredBlob
    /// A folder on the store's file system for files to be adopted.
    var scratchDirectory: String { get }
    /// Puts a blob's content at `path` (which must not exist) for backupd's
    /// own use, checked against its hash: a hard link where the store's file
    /// system allows, else a copy.
    func materialize(_ hash: ContentHash, at path: String) throws
    /// Puts a blob's content at `path` (which must not exist) as a new file
    /// of `owner` with its mode, for an app's file store: always a verified
    /// copy, so no file outside the store shares an inode with a blob.
    func place(_ hash: ContentHash, at path: String, owner: FileOwner) throws
    func contains(_ hash: ContentHash) -> Bool
    /// Streams a blob's content to `consume` a chunk at a time, never whole
    /// in memory, and checks at its end that the content still has its hash
    /// (`corrupt` if not); returns its size. Once `interruption` is set,
    /// reading stops within a chunk. Whatever reads a blob's content (an
    /// archive, a verification) reads it through here.
    func read(_ hash: ContentHash, interruption: Interruption?, _ consume: (UnsafeRawBufferPointer) throws -> Void) throws -> UInt64
    /// Re-reads a blob and checks that its content still has its hash.
    func verify(_ hash: ContentHash) throws -> UInt64
    /// Starts a blob whose content arrives as a stream (a member of an
    /// archive being read) and whose hash is known only at its end.
    func writer() throws -> any BlobWriter
    func remove(_ hash: ContentHash) throws
    /// Every blob the store holds that was last written or reused before
    /// `cutoff`, for finding those no catalog row knows: a blob a running job
    /// stored (or found there and reused) a moment ago may not be recorded yet.
    func storedHashes(unusedSince cutoff: Date) throws -> [ContentHash]
    /// Whether the store holds `hash`, marking it as reused now, so a
    /// collection that runs beside the job reusing it does not take it as
    /// an unrecorded leftover.
    func reuse(_ hash: ContentHash) -> Bool
}

/// Blobs as files under a folder: `sha256/ab/cd/abcd…`. Each is written to a
/// temporary name, fsynced and renamed into place, so a blob that exists is
/// complete. The store is private to backupd's user: folders 0700, blobs
/// 0400 (read-only even to that user, so a hard link to one cannot be
/// written through into the store).
public struct LocalBlobStore: BlobStore {
    public let root: String
    static let chunkSize = 1 << 20
    static let folderMode: mode_t = 0o700
    static let blobMode: mode_t = 0o400

    /// Opens (or makes) the store. A store made by an earlier version with
    /// wider permissions is tightened first.
    public init(root: String) throws {
        self.root = root
        try makeDirectories(root + "/tmp")
        try makeDirectories(root + "/sha256")
        var info = stat()
        if stat(root, &info) == 0, info.st_mode & 0o777 != Self.folderMode {
            try applyOwnership(under: root, folders: FileOwner(mode: Self.folderMode), files: FileOwner(mode: Self.blobMode))
        }
    }

    /// Where a blob's file is (or would be).
    public func path(for hash: ContentHash) -> String {
        let hex = hash.hex
        return "\(root)/sha256/\(hex.prefix(2))/\(hex.dropFirst(2).prefix(2))/\(hex)"
    }

    public var scratchDirectory: String { root + "/tmp" }

    public func storedHashes(unusedSince cutoff: Date) throws -> [ContentHash] {
        var hashes: [ContentHash] = []
        let cutoffSeconds = cutoff.timeIntervalSince1970
        for first in try folderEntries(atPath: root + "/sha256") {
            for second in try folderEntries(atPath: "\(root)/sha256/\(first)") {
                hashes += try folderEntries(atPath: "\(root)/sha256/\(first)/\(second)").compactMap(ContentHash.init(hex:)).filter { hash in
                    var info = stat()
                    return lstat(path(for: hash), &info) == 0
                        && Double(info.st_mtim.tv_sec) + Double(info.st_mtim.tv_nsec) / 1e9 < cutoffSeconds
                }
            }
        }
        return hashes
    }

    public func reuse(_ hash: ContentHash) -> Bool {
        utimensat(AT_FDCWD, path(for: hash), nil, AT_SYMLINK_NOFOLLOW) == 0
    }

    public func put(reading descriptor: Int32, upTo limit: UInt64, name: String, interruption: Interruption?) throws -> StoredBlob {
        // Most documents are unchanged since the last backup: hash first, copy only what is new.
        let (hash, size) = try hashContent(of: descriptor, path: name, limit: limit, interruption: interruption)
        if reuse(hash) { return StoredBlob(hash: hash, size: size, written: false) }
        guard lseek(descriptor, 0, SEEK_SET) == 0 else { throw BlobStoreError.cannotRead(path: name, errno: errno) }
        return try copyIntoStore(descriptor, name: name, limit: limit, interruption: interruption)
    }

    public func adopt(_ path: String) throws -> StoredBlob {
        defer { unlink(path) }
        let (hash, size) = try hashFile(path)
        if reuse(hash) { return StoredBlob(hash: hash, size: size, written: false) }
        let fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { throw BlobStoreError.cannotRead(path: path, errno: errno) }
        defer { close(fd) }
        guard fchmod(fd, Self.blobMode) == 0 && fsync(fd) == 0 else { throw BlobStoreError.cannotWrite(path: path, errno: errno) }
        let final = self.path(for: hash)
        let folder = String(final[..<final.lastIndex(of: "/")!])
        try makeDirectories(folder)
        if rename(path, final) == 0 {
            syncDirectory(folder)
            return StoredBlob(hash: hash, size: size, written: true)
        }
        guard errno == EXDEV else { throw BlobStoreError.cannotWrite(path: final, errno: errno) }
        return try copyIntoStore(fd, name: path)  // another file system: copy instead
    }

    /// Copies an open file into the store under the hash of what was actually read.
    private func copyIntoStore(_ descriptor: Int32, name: String, limit: UInt64 = .max, interruption: Interruption? = nil) throws -> StoredBlob {
        let temporary = newScratchPath()
        let (hash, size) = try copyHashing(descriptor, name: name, to: temporary, owner: FileOwner(mode: Self.blobMode), limit: limit,
                                           interruption: interruption)
        return try takeIn(temporary, hash: hash, size: size)
    }

    /// A name for a file being written into the store.
    fileprivate func newScratchPath() -> String {
        "\(scratchDirectory)/\(base64URL(Secure.randomBytes(12))).partial"
    }

    /// Moves a complete, fsynced file of content `hash` into place, or drops
    /// it when the store has that content already; the file is gone afterwards.
    fileprivate func takeIn(_ temporary: String, hash: ContentHash, size: UInt64) throws -> StoredBlob {
        var keepTemporary = false
        defer { if !keepTemporary { unlink(temporary) } }
        if reuse(hash) { return StoredBlob(hash: hash, size: size, written: false) }
        let final = self.path(for: hash)
        let folder = String(final[..<final.lastIndex(of: "/")!])
        try makeDirectories(folder)
        guard rename(temporary, final) == 0 else { throw BlobStoreError.cannotWrite(path: final, errno: errno) }
        keepTemporary = true
        syncDirectory(folder)
        return StoredBlob(hash: hash, size: size, written: true)
    }

    public func writer() throws -> any BlobWriter {
        try LocalBlobWriter(store: self)
    }

    public func contains(_ hash: ContentHash) -> Bool {
        access(path(for: hash), F_OK) == 0
    }

    public func read(_ hash: ContentHash, interruption: Interruption?, _ consume: (UnsafeRawBufferPointer) throws -> Void) throws -> UInt64 {
        let path = self.path(for: hash)
        let fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { throw errno == ENOENT ? BlobStoreError.missing(hash) : BlobStoreError.cannotRead(path: path, errno: errno) }
        defer { close(fd) }
        let hasher = SHA256Hasher()
        var size: UInt64 = 0
        try readChunks(fd: fd, path: path, interruption: interruption) { chunk in
            hasher.update(chunk)
            size += UInt64(chunk.count)
            try consume(chunk)
        }
        let actual = hasher.finish()
        guard actual == hash else { throw BlobStoreError.corrupt(hash, actual: actual) }
        return size
    }

    public func verify(_ hash: ContentHash) throws -> UInt64 {
        try read(hash, interruption: nil) { _ in }
    }

    public func materialize(_ hash: ContentHash, at path: String) throws {
        _ = try verify(hash)
        if link(self.path(for: hash), path) == 0 { return }
        guard errno == EXDEV || errno == EPERM || errno == EMLINK else {
            throw BlobStoreError.cannotWrite(path: path, errno: errno)
        }
        try copyVerified(hash, to: path)
    }

    public func place(_ hash: ContentHash, at path: String, owner: FileOwner) throws {
        try copyVerified(hash, to: path, owner: owner)
    }

    private func copyVerified(_ hash: ContentHash, to path: String, owner: FileOwner = FileOwner(mode: 0o600)) throws {
        let source = self.path(for: hash)
        let input = open(source, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard input >= 0 else { throw errno == ENOENT ? BlobStoreError.missing(hash) : BlobStoreError.cannotRead(path: source, errno: errno) }
        defer { close(input) }
        let (actual, _) = try copyHashing(input, name: source, to: path, owner: owner)
        guard actual == hash else {
            unlink(path)
            throw BlobStoreError.corrupt(hash, actual: actual)
        }
    }

    public func remove(_ hash: ContentHash) throws {
        let path = self.path(for: hash)
        guard unlink(path) == 0 || errno == ENOENT else { throw BlobStoreError.cannotWrite(path: path, errno: errno) }
    }
}

/// Who owns a file that backupd writes, and its mode. `uid` and `gid` nil
/// keep backupd's own.
public struct FileOwner: Sendable, Equatable {
    public var uid: uid_t?
    public var gid: gid_t?
    public var mode: mode_t

    public init(uid: uid_t? = nil, gid: gid_t? = nil, mode: mode_t) {
        self.uid = uid
        self.gid = gid
        self.mode = mode
    }

    /// The owner of a folder, with the folder's mode (files take it without
    /// the execute bits).
    public init(ofFolder path: String) throws(BlobStoreError) {
        var info = stat()
        guard lstat(path, &info) == 0 else { throw .cannotRead(path: path, errno: errno) }
        self.init(uid: info.st_uid, gid: info.st_gid, mode: info.st_mode & 0o7777)
    }

    /// The same owner, with the mode a file in a folder of this owner gets.
    public var forFiles: FileOwner { FileOwner(uid: uid, gid: gid, mode: mode & 0o666) }

    /// Gives a folder or file (not a link, which is left as it is) this owner and mode.
    func apply(to path: String) throws(BlobStoreError) {
        if uid != nil || gid != nil {
            guard lchown(path, uid ?? uid_t.max, gid ?? gid_t.max) == 0 else { throw .cannotWrite(path: path, errno: errno) }
        }
        guard chmod(path, mode) == 0 else { throw .cannotWrite(path: path, errno: errno) }
    }

    /// Gives an open file this owner and mode.
    func apply(to descriptor: Int32, path: String) throws(BlobStoreError) {
        if uid != nil || gid != nil {
            guard fchown(descriptor, uid ?? uid_t.max, gid ?? gid_t.max) == 0 else { throw .cannotWrite(path: path, errno: errno) }
        }
        guard fchmod(descriptor, mode) == 0 else { throw .cannotWrite(path: path, errno: errno) }
    }
}

/// A blob being written from a stream: `write` each chunk, then `finish`
/// takes it into the store under the hash of what was written (hashed as it
/// was written, so content never passes twice). A writer dropped without
/// `finish` leaves nothing behind.
public protocol BlobWriter: AnyObject {
    func write(_ chunk: UnsafeRawBufferPointer) throws
    func finish() throws -> StoredBlob
}

/// The local store's `BlobWriter`: a scratch file renamed into place.
final class LocalBlobWriter: BlobWriter {
    private let store: LocalBlobStore
    private let path: String
    private let fd: Int32
    private let hasher = SHA256Hasher()
    private var size: UInt64 = 0
    private var done = false

    fileprivate init(store: LocalBlobStore) throws {
        self.store = store
        path = store.newScratchPath()
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw BlobStoreError.cannotWrite(path: path, errno: errno) }
    }

    func write(_ chunk: UnsafeRawBufferPointer) throws {
        try writeAll(fd: fd, chunk, path: path)
        hasher.update(chunk)
        size += UInt64(chunk.count)
    }

    func finish() throws -> StoredBlob {
        done = true
        defer { close(fd) }
        guard fchmod(fd, LocalBlobStore.blobMode) == 0, fsync(fd) == 0 else {
            unlink(path)
            throw BlobStoreError.cannotWrite(path: path, errno: errno)
        }
        return try store.takeIn(path, hash: hasher.finish(), size: size)
    }

    deinit {
        guard !done else { return }
        close(fd)
        unlink(path)
    }
}

/// Copies at most `limit` bytes of an open file from its current offset to a
/// new file `target` of `owner`, fsynced, returning the hash and size of what
/// was copied. A failed copy leaves no `target` behind.
private func copyHashing(_ input: Int32, name: String, to target: String, owner: FileOwner,
                         limit: UInt64 = .max, interruption: Interruption? = nil) throws -> (ContentHash, UInt64) {
    let output = open(target, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
    guard output >= 0 else { throw BlobStoreError.cannotWrite(path: target, errno: errno) }
    var complete = false
    defer {
        close(output)
        if !complete { unlink(target) }
    }
    try owner.apply(to: output, path: target)
    let hasher = SHA256Hasher()
    var size: UInt64 = 0
    try readChunks(fd: input, path: name, limit: limit, interruption: interruption) { chunk in
        hasher.update(chunk)
        try writeAll(fd: output, chunk, path: target)
        size += UInt64(chunk.count)
    }
    guard fsync(output) == 0 else { throw BlobStoreError.cannotWrite(path: target, errno: errno) }
    complete = true
    return (hasher.finish(), size)
}

/// The SHA-256 and size of a file's content, read once.
private func hashFile(_ path: String) throws -> (ContentHash, UInt64) {
    let fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
    guard fd >= 0 else { throw BlobStoreError.cannotRead(path: path, errno: errno) }
    defer { close(fd) }
    return try hashContent(of: fd, path: path)
}

/// The SHA-256 and size of at most `limit` bytes of an open file's content
/// from its current offset.
private func hashContent(of fd: Int32, path: String, limit: UInt64 = .max, interruption: Interruption? = nil) throws -> (ContentHash, UInt64) {
    let hasher = SHA256Hasher()
    var size: UInt64 = 0
    try readChunks(fd: fd, path: path, limit: limit, interruption: interruption) { chunk in
        hasher.update(chunk)
        size += UInt64(chunk.count)
    }
    return (hasher.finish(), size)
}

/// Reads a file in chunks until its end or `limit` bytes, or until `interruption` is set.
private func readChunks(fd: Int32, path: String, limit: UInt64 = .max, interruption: Interruption? = nil,
                        _ body: (UnsafeRawBufferPointer) throws -> Void) throws {
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: LocalBlobStore.chunkSize, alignment: 16)
    defer { buffer.deallocate() }
    var remaining = limit
    while remaining > 0 {
        if interruption?.isSet == true { throw BlobStoreError.interrupted(path: path) }
        let count = read(fd, buffer.baseAddress, Int(min(UInt64(buffer.count), remaining)))
        if count < 0 {
            if errno == EINTR { continue }
            throw BlobStoreError.cannotRead(path: path, errno: errno)
        }
        if count == 0 { return }
        remaining -= UInt64(count)
        try body(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
    }
}

/// Writes all of `bytes` to `fd` (retrying what a signal interrupted);
/// `path` names the file in the error.
public func writeAll(fd: Int32, _ bytes: UnsafeRawBufferPointer, path: String) throws {
    var offset = 0
    while offset < bytes.count {
        let written = write(fd, bytes.baseAddress! + offset, bytes.count - offset)
        if written < 0 {
            if errno == EINTR { continue }
            throw BlobStoreError.cannotWrite(path: path, errno: errno)
        }
        offset += written
    }
}

/// `mkdir -p`; folders it makes get `mode` (less the umask).
public func makeDirectories(_ path: String, mode: mode_t = 0o700) throws {
    var current = path.hasPrefix("/") ? "" : "."
    for component in path.split(separator: "/") {
        current += "/" + component
        if mkdir(current, mode) != 0 && errno != EEXIST {
            throw BlobStoreError.cannotWrite(path: current, errno: errno)
        }
    }
}

/// Gives every folder under `root` (and `root`) the owner and mode of
/// `folders`, and every regular file those of `files`, without following
/// links; anything else is left alone. `root` comes last: a walk cut short
/// is done again (the blob store is tightened at the next start), and a tree
/// that stays private to backupd until its root is handed over cannot be
/// changed by the new owner while the walk runs (a restore's staging folder).
public func applyOwnership(under root: String, folders: FileOwner, files: FileOwner) throws {
    var info = stat()
    guard lstat(root, &info) == 0 else { throw BlobStoreError.cannotRead(path: root, errno: errno) }
    switch info.st_mode & S_IFMT {
    case S_IFDIR:
        guard let folder = opendir(root) else { throw BlobStoreError.cannotRead(path: root, errno: errno) }
        defer { closedir(folder) }
        while let entry = readdir(folder) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
            guard name != ".", name != ".." else { continue }
            try applyOwnership(under: root + "/" + name, folders: folders, files: files)
        }
        try folders.apply(to: root)
    case S_IFREG:
        try files.apply(to: root)
    default:
        break
    }
}

private func syncDirectory(_ path: String) {
    let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard fd >= 0 else { return }
    fsync(fd)
    close(fd)
}

/// A flag that work on a thread, which task cancellation cannot reach, looks
/// at between chunks: set when the job it serves is cancelled.
public final class Interruption: Sendable {
    private let flag = Mutex(false)

    public init() {}

    public func set() { flag.withLock { $0 = true } }

    public var isSet: Bool { flag.withLock { $0 } }
}
