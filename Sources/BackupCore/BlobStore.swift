#if canImport(Glibc)
import Glibc
#endif

/// A blob that is in the store.
public struct StoredBlob: Sendable, Equatable {
    public let hash: ContentHash
    public let size: UInt64
    /// False when the store already had this content and wrote nothing.
    public let written: Bool
}

/// Failures of blob storage, each naming the path or blob concerned.
public enum BlobStoreError: Error, CustomStringConvertible {
    case cannotRead(path: String, errno: Int32)
    case cannotWrite(path: String, errno: Int32)
    case missing(ContentHash)
    case corrupt(ContentHash, actual: ContentHash)

    public var description: String {
        switch self {
        case let .cannotRead(path, code): "cannot read \(path): \(String(cString: strerror(code)))"
        case let .cannotWrite(path, code): "cannot write \(path): \(String(cString: strerror(code)))"
        case let .missing(hash): "blob \(hash) is missing from the blob store"
        case let .corrupt(hash, actual): "blob \(hash) is corrupt: its content hashes to \(actual)"
        }
    }
}

/// Content-addressed storage of database dumps and file documents: each blob
/// is stored once under the SHA-256 of its content. The local folder is the
/// default backend; an object store can take its place behind this protocol.
///
/// Calls block on I/O: run them off event loops.
public protocol BlobStore: Sendable {
    /// Stores a copy of a local file's content (a file document). Content
    /// the store has already is only read, not written again.
    func put(contentsOf path: String) throws -> StoredBlob
    /// Takes a file the caller made for the store (a database dump) into the
    /// store, moving rather than copying it where it can. The file is gone
    /// afterwards, whether the call succeeds or not.
    func adopt(_ path: String) throws -> StoredBlob
    /// A folder on the store's file system for files to be adopted.
    var scratchDirectory: String { get }
    /// Puts a blob's content at `path` (which must not exist), checked
    /// against its hash: a hard link where the store's file system allows,
    /// else a copy.
    func materialize(_ hash: ContentHash, at path: String) throws
    func contains(_ hash: ContentHash) -> Bool
    /// Re-reads a blob and checks that its content still has its hash.
    func verify(_ hash: ContentHash) throws -> UInt64
    func remove(_ hash: ContentHash) throws
}

/// Blobs as files under a folder: `sha256/ab/cd/abcd…`. Each is written to a
/// temporary name, fsynced and renamed into place, so a blob that exists is
/// complete. Blobs are read-only: a restored file hard-linked to one cannot
/// be written through into the store.
public struct LocalBlobStore: BlobStore {
    public let root: String
    static let chunkSize = 1 << 20

    public init(root: String) throws {
        self.root = root
        try makeDirectories(root + "/tmp")
        try makeDirectories(root + "/sha256")
    }

    /// Where a blob's file is (or would be).
    public func path(for hash: ContentHash) -> String {
        let hex = hash.hex
        return "\(root)/sha256/\(hex.prefix(2))/\(hex.dropFirst(2).prefix(2))/\(hex)"
    }

    public var scratchDirectory: String { root + "/tmp" }

    public func put(contentsOf path: String) throws -> StoredBlob {
        // Most documents are unchanged since the last backup: hash first, copy only what is new.
        let (hash, size) = try hashFile(path)
        if contains(hash) { return StoredBlob(hash: hash, size: size, written: false) }
        return try copyIntoStore(path)
    }

    public func adopt(_ path: String) throws -> StoredBlob {
        defer { unlink(path) }
        let (hash, size) = try hashFile(path)
        if contains(hash) { return StoredBlob(hash: hash, size: size, written: false) }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw BlobStoreError.cannotRead(path: path, errno: errno) }
        let synced = fchmod(fd, 0o444) == 0 && fsync(fd) == 0
        close(fd)
        guard synced else { throw BlobStoreError.cannotWrite(path: path, errno: errno) }
        let final = self.path(for: hash)
        let folder = String(final[..<final.lastIndex(of: "/")!])
        try makeDirectories(folder)
        if rename(path, final) == 0 {
            syncDirectory(folder)
            return StoredBlob(hash: hash, size: size, written: true)
        }
        guard errno == EXDEV else { throw BlobStoreError.cannotWrite(path: final, errno: errno) }
        return try copyIntoStore(path)  // another file system: copy instead
    }

    /// Copies a file into the store under the hash of what was actually read.
    private func copyIntoStore(_ path: String) throws -> StoredBlob {
        let temporary = "\(scratchDirectory)/\(base64URL(Secure.randomBytes(12))).partial"
        let (hash, size) = try copyHashing(path, to: temporary, mode: 0o444)
        var keepTemporary = false
        defer { if !keepTemporary { unlink(temporary) } }
        if contains(hash) { return StoredBlob(hash: hash, size: size, written: false) }
        let final = self.path(for: hash)
        let folder = String(final[..<final.lastIndex(of: "/")!])
        try makeDirectories(folder)
        guard rename(temporary, final) == 0 else { throw BlobStoreError.cannotWrite(path: final, errno: errno) }
        keepTemporary = true
        syncDirectory(folder)
        return StoredBlob(hash: hash, size: size, written: true)
    }

    public func contains(_ hash: ContentHash) -> Bool {
        access(path(for: hash), F_OK) == 0
    }

    public func verify(_ hash: ContentHash) throws -> UInt64 {
        let path = self.path(for: hash)
        guard contains(hash) else { throw BlobStoreError.missing(hash) }
        let (actual, size) = try hashFile(path)
        guard actual == hash else { throw BlobStoreError.corrupt(hash, actual: actual) }
        return size
    }

    public func materialize(_ hash: ContentHash, at path: String) throws {
        _ = try verify(hash)
        if link(self.path(for: hash), path) == 0 { return }
        guard errno == EXDEV || errno == EPERM || errno == EMLINK else {
            throw BlobStoreError.cannotWrite(path: path, errno: errno)
        }
        try copyVerified(hash, to: path)
    }

    private func copyVerified(_ hash: ContentHash, to path: String) throws {
        let (actual, _) = try copyHashing(self.path(for: hash), to: path, mode: 0o644)
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

/// Copies `source` to a new file `target`, fsynced, returning the hash and
/// size of what was copied. A failed copy leaves no `target` behind.
private func copyHashing(_ source: String, to target: String, mode: mode_t) throws -> (ContentHash, UInt64) {
    let input = open(source, O_RDONLY | O_CLOEXEC)
    guard input >= 0 else { throw BlobStoreError.cannotRead(path: source, errno: errno) }
    defer { close(input) }
    let output = open(target, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
    guard output >= 0 else { throw BlobStoreError.cannotWrite(path: target, errno: errno) }
    var complete = false
    defer {
        close(output)
        if !complete { unlink(target) }
    }
    let hasher = SHA256Hasher()
    var size: UInt64 = 0
    try readChunks(fd: input, path: source) { chunk in
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
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw BlobStoreError.cannotRead(path: path, errno: errno) }
    defer { close(fd) }
    let hasher = SHA256Hasher()
    var size: UInt64 = 0
    try readChunks(fd: fd, path: path) { chunk in
        hasher.update(chunk)
        size += UInt64(chunk.count)
    }
    return (hasher.finish(), size)
}

private func readChunks(fd: Int32, path: String, _ body: (UnsafeRawBufferPointer) throws -> Void) throws {
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: LocalBlobStore.chunkSize, alignment: 16)
    defer { buffer.deallocate() }
    while true {
        let count = read(fd, buffer.baseAddress, buffer.count)
        if count < 0 {
            if errno == EINTR { continue }
            throw BlobStoreError.cannotRead(path: path, errno: errno)
        }
        if count == 0 { return }
        try body(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
    }
}

private func writeAll(fd: Int32, _ bytes: UnsafeRawBufferPointer, path: String) throws {
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

/// `mkdir -p`.
public func makeDirectories(_ path: String) throws {
    var current = path.hasPrefix("/") ? "" : "."
    for component in path.split(separator: "/") {
        current += "/" + component
        if mkdir(current, 0o755) != 0 && errno != EEXIST {
            throw BlobStoreError.cannotWrite(path: current, errno: errno)
        }
    }
}

private func syncDirectory(_ path: String) {
    let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard fd >= 0 else { return }
    fsync(fd)
    close(fd)
}
