import BackupRules
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import NIOCore

/// Blobs as files under a folder: `sha256/ab/cd/abcd…`. Each is written to a
/// temporary name, fsynced and renamed into place, so a blob that exists is
/// complete. The store is private to backupd's user: folders 0700, blobs
/// 0400 (read-only even to that user, so a hard link to one cannot be
/// written through into the store).
public struct LocalBlobStore: BlobStore {
    public let root: String
    public private(set) var reuseClaims = ReuseClaims.unasked

    public func asking(_ claims: ReuseClaims) -> any BlobStore {
        var store = self
        store.reuseClaims = claims
        return store
    }
    static let folderMode: mode_t = 0o700
    static let blobMode: mode_t = 0o400

    /// Opens (or makes) the store. A store made by an earlier version with
    /// wider permissions is tightened first.
    public init(root: String) throws {
        self.root = root
        try FileSystem.makeFolders(scratchDirectory)
        try FileSystem.makeFolders(root + "/sha256")
        if try FileOwner(ofFolder: root).mode & 0o777 != Self.folderMode {
            try OpenFolder(root).applyOwnership(folders: FileOwner(mode: Self.folderMode), files: FileOwner(mode: Self.blobMode))
        }
    }

    public var localFolder: String? { root }

    /// Where a blob's file is (or would be).
    public func path(for hash: ContentHash) -> String {
        let hex = hash.hex
        return "\(root)/sha256/\(hex.prefix(2))/\(hex.dropFirst(2).prefix(2))/\(hex)"
    }

    /// Where blobs are written before they are renamed into place: a file
    /// made here can be adopted without a copy.
    public var scratchDirectory: String { root + "/tmp" }

    public func storedHashes(unusedSince cutoff: Date) throws -> [ContentHash] {
        var hashes: [ContentHash] = []
        let cutoffSeconds = cutoff.timeIntervalSince1970
        // Only the store's own layout is read: anything else found there (it should hold nothing else) is left alone.
        func folders(in folder: String) throws -> [String] {
            try FileSystem.names(in: folder).filter { $0.utf8.count == 2 && FileSystem.entry(at: "\(folder)/\($0)") == .folder }
        }
        for first in try folders(in: root + "/sha256") {
            for second in try folders(in: "\(root)/sha256/\(first)") {
                hashes += try FileSystem.names(in: "\(root)/sha256/\(first)/\(second)").compactMap(ContentHash.init(hex:)).filter { hash in
                    FileSystem.modified(path(for: hash)).map { $0 < cutoffSeconds } ?? false
                }
            }
        }
        return hashes
    }

    public func reuse(_ hash: ContentHash) -> Bool {
        FileSystem.touch(path(for: hash))
    }

    /// Moves the file into place rather than copying it, when it is on the
    /// store's file system.
    public func adopt(_ path: String) throws -> StoredBlob {
        defer { FileSystem.remove(path) }
        let (hash, size) = try LocalFile.open(path).contentHash()
        return try adopt(path, as: StoredBlob(hash: hash, size: size))
    }

    public func adopt(_ path: String, as blob: StoredBlob) throws -> StoredBlob {
        defer { FileSystem.remove(path) }
        let (hash, size) = (blob.hash, blob.size)
        if reuses(blob) { return StoredBlob(hash: hash, size: size, written: false) }
        let file = try LocalFile.open(path)
        try file.apply(FileOwner(mode: Self.blobMode))
        try file.sync()
        do {
            return try takeIn(path, hash: hash, size: size)
        } catch BlobStoreError.cannotWrite(_, EXDEV) {
            try file.rewind()  // another file system: copy instead
            let writer = try writer()
            try file.readChunks { try writer.write($0) }
            return try writer.finish()
        }
    }

    /// Moves a complete, fsynced file of content `hash` into place, or drops
    /// it when the store has that content already; the file is gone
    /// afterwards, unless the rename failed.
    fileprivate func takeIn(_ temporary: String, hash: ContentHash, size: UInt64) throws -> StoredBlob {
        if reuses(StoredBlob(hash: hash, size: size)) {
            FileSystem.remove(temporary)
            return StoredBlob(hash: hash, size: size, written: false)
        }
        return try move(temporary, to: hash, size: size)
    }

    /// Renames a complete, fsynced file into place under `name`.
    fileprivate func move(_ temporary: String, to hash: ContentHash, size: UInt64) throws -> StoredBlob {
        let final = self.path(for: hash)
        let folder = String(final[..<final.lastIndex(of: "/")!])
        try FileSystem.makeFolders(folder)
        try FileSystem.rename(temporary, to: final)
        FileSystem.syncFolder(folder)
        return StoredBlob(hash: hash, size: size, written: true)
    }

    public func writer() throws -> any BlobWriter {
        LocalBlobWriter(store: self, hashing: true)
    }

    public func objectWriter() throws -> any BlobWriter {
        LocalBlobWriter(store: self, hashing: false)
    }

    public func contains(_ hash: ContentHash) -> Bool {
        FileSystem.entry(at: path(for: hash)) != nil
    }

    public func size(of hash: ContentHash) -> UInt64? {
        guard case let .file(size) = FileSystem.entry(at: path(for: hash)) else { return nil }
        return size
    }

    /// The file is opened for each read and closed again: a reader holds no
    /// descriptor between reads, and one whose blob was removed meanwhile
    /// finds it missing at its next read.
    public func read(_ hash: ContentHash, at offset: UInt64, length: Int) throws -> ByteBuffer {
        guard let file = try LocalFile.openIfPresent(path(for: hash)) else { throw BlobStoreError.missing(hash) }
        var buffer = ByteBuffer()
        try buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { space in
            try file.read(into: UnsafeMutableRawBufferPointer(rebasing: space[0..<length]), at: offset)
        }
        return buffer
    }

    /// What a fast client's socket takes between reads (64 KiB cost a
    /// quarter of nginx's pace, 128 KiB a fifth).
    public var rangeReadSize: Int { 256 * 1024 }

    public func readObject(_ name: ContentHash, interruption: Interruption?, _ consume: (UnsafeRawBufferPointer) throws -> Void) throws -> UInt64 {
        guard let file = try LocalFile.openIfPresent(path(for: name)) else { throw BlobStoreError.missing(name) }
        var size: UInt64 = 0
        try file.readChunks(interruption: interruption) { chunk in
            size += UInt64(chunk.count)
            try consume(chunk)
        }
        return size
    }

    /// A hard link where the store's file system allows, else a copy; checked
    /// against the hash either way.
    public func materialize(_ hash: ContentHash, at path: String) throws {
        _ = try verify(hash)
        if try FileSystem.link(self.path(for: hash), to: path) { return }
        try place(hash, at: path, owner: FileOwner(mode: 0o600))
    }

    public func remove(_ hash: ContentHash) throws {
        try FileSystem.removeIfPresent(path(for: hash))
    }

    /// None to drop: the scratch folder is the work folder's, which the
    /// job runner sweeps of what dead jobs left.
    public func dropAbandonedWrites(startedBefore cutoff: Date) throws -> Int { 0 }
}

/// The local store's `BlobWriter`: a scratch file renamed into place. The
/// first bytes are held in memory and the file made only once they exceed
/// `heldBytes`, and content the store already holds is dropped before it is
/// ever synced: a small document seen before (an upload of many empty or
/// repeated files) costs no file at all.
final class LocalBlobWriter: BlobWriter {
    private let store: LocalBlobStore
    private let staged: StagedContent
    static let heldBytes = 256 << 10

    fileprivate init(store: LocalBlobStore, hashing: Bool) {
        self.store = store
        staged = StagedContent(heldBytes: Self.heldBytes, scratchDirectory: store.scratchDirectory, hashing: hashing)
    }

    func write(_ chunk: UnsafeRawBufferPointer) throws {
        try staged.write(chunk)
    }

    func finish() throws -> StoredBlob {
        let hash = staged.finishHash()
        if store.reuses(StoredBlob(hash: hash, size: staged.size)) {
            staged.discard()
            return StoredBlob(hash: hash, size: staged.size, written: false)
        }
        return try keep { try store.takeIn($0, hash: hash, size: staged.size) }
    }

    func finish(as name: ContentHash) throws -> StoredBlob {
        try keep { try store.move($0, to: name, size: staged.size) }
    }

    /// Makes the content a read-only, synced file and hands it to `place`.
    private func keep(_ place: (String) throws -> StoredBlob) throws -> StoredBlob {
        let file = try staged.spill()
        try file.apply(FileOwner(mode: LocalBlobStore.blobMode))
        try file.sync()
        let blob = try place(file.path)
        staged.release()
        return blob
    }
}
