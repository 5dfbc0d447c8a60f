import BackupRules
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import NIOCore
import Synchronization

/// Failures of blob storage, each naming the path or blob concerned.
public enum BlobStoreError: ReportableError, CustomStringConvertible {
    case cannotRead(path: String, errno: Int32)
    case cannotWrite(path: String, errno: Int32)
    case missing(ContentHash)
    case corrupt(ContentHash, actual: ContentHash)
    /// Kept encrypted, the blob does not open (`SealedContentError` says why).
    case unreadable(ContentHash, reason: String)
    case interrupted(path: String)

    public var description: String {
        switch self {
        case let .cannotRead(path, code): "cannot read \(path): \(String(cString: strerror(code)))"
        case let .cannotWrite(path, code): "cannot write \(path): \(String(cString: strerror(code)))"
        case let .missing(hash): "blob \(hash) is missing from the blob store"
        case let .corrupt(hash, actual): "blob \(hash) is corrupt: its content hashes to \(actual)"
        case let .unreadable(hash, reason): "blob \(hash) is corrupt: it \(reason)"
        case let .interrupted(path): "reading \(path) was stopped"
        }
    }

    /// Missing and corrupt blobs are named by their hash, a failed read or
    /// write by the system's reason; the server's paths stay in its log.
    public var publicError: BackupError {
        switch self {
        case .missing, .corrupt, .unreadable: .dataLoss(description)
        case let .cannotWrite(_, code) where code == ENOSPC || code == EDQUOT:
            .resourceExhausted("the server's storage is full (\(String(cString: strerror(code)))); its log has the details")
        case let .cannotRead(_, code), let .cannotWrite(_, code):
            .internalFailure("the server could not use its storage (\(String(cString: strerror(code)))); its log has the details")
        case .interrupted: .aborted("reading the server's storage was stopped")
        }
    }

    public var logDetail: String { description }

    /// The system's error number of a failed read or write (EIO otherwise).
    public var errorNumber: Int32 {
        switch self {
        case let .cannotRead(_, code), let .cannotWrite(_, code): code
        default: EIO
        }
    }
}

/// A job's say before a store lets the copy it holds stand for content the
/// job is storing: the catalog marks the content used at once, so a
/// collection running beside the job cannot take that copy between the
/// store's answer and the job's record of its batch (on an object store
/// that window was many requests long, and a nightly backup reuses almost
/// everything). The mark falls after the job began, so collection keeps
/// the copy until the job ends: the job asks the store and the catalog
/// once per content, however many of its documents or chunks repeat it.
/// A copy a collection is already removing is waited out before anything
/// is written in its place: content is stored under its hash, so a copy
/// written before that collection is done would go with the old one.
/// A store used outside a job (`unasked`) asks only itself.
public final class ReuseClaims: Sendable {
    private let mark: (@Sendable (StoredBlob) throws -> Void)?
    private let marked = Mutex<Set<ContentHash>>([])
    /// Contents the caller marked used in one statement: their reuse asks the store, not the catalog.
    private let markedInBulk = Mutex<Set<ContentHash>>([])
    /// Contents whose mark failed: written without asking again (a store
    /// asks before and after writing), so a wait that ran out is waited once.
    private let unmarked = Mutex<Set<ContentHash>>([])
    /// Contents remembered as marked; past them each reuse asks again.
    static let remembered = 65_536

    /// `mark` records `blob` used; while a collection is removing the
    /// store's copy it waits until the collection is done. It throws when
    /// the catalog is out of reach or the collection never ends.
    public init(_ mark: (@Sendable (StoredBlob) throws -> Void)?) {
        self.mark = mark
    }

    public static let unasked = ReuseClaims(nil)

    /// Takes `names` as marked: the caller marked them used in one
    /// statement after its job began (`BlobLedger.markForReuse`), so a reuse
    /// of one asks only the store, once (a round trip to the catalog per
    /// document: a night's 3,252 unchanged documents took 4.29 s in make
    /// bench, 0.69 s before reuses asked the catalog).
    public func markedInBulk(_ names: some Sequence<ContentHash>) {
        markedInBulk.withLock { marked in
            for name in names where marked.count < Self.remembered { marked.insert(name) }
        }
    }

    /// Whether the copy `held` says the store has may stand for `blob`. The
    /// store is asked first, so content it lacks leaves no catalog row (a
    /// store out of reach catalogs nothing), and asked again once marked:
    /// a whole collection (claim, remove, forget) may have run between the
    /// first look and the mark, and from the mark on the copy is kept. A
    /// mark that fails (the catalog out of reach) reuses nothing: the
    /// content is written, and the job's record fails with the catalog's
    /// reason.
    func reuses(_ blob: StoredBlob, held: (ContentHash) -> Bool) -> Bool {
        if marked.withLock({ $0.contains(blob.hash) }) { return true }
        guard held(blob.hash) else { return false }
        guard let mark else { return true }
        // Marked before this look: the copy the store holds now is kept.
        if markedInBulk.withLock({ $0.contains(blob.hash) }) {
            marked.withLock { if $0.count < Self.remembered { $0.insert(blob.hash) } }
            return true
        }
        guard !unmarked.withLock({ $0.contains(blob.hash) }) else { return false }
        guard (try? mark(blob)) != nil else {
            unmarked.withLock { if $0.count < Self.remembered { $0.insert(blob.hash) } }
            return false
        }
        guard held(blob.hash) else { return false }
        marked.withLock { if $0.count < Self.remembered { $0.insert(blob.hash) } }
        return true
    }
}

/// Content-addressed storage of database dumps and file documents: each blob
/// is stored once under the SHA-256 of its content. Nothing here assumes a
/// local path: a store writes a blob as a stream whose hash is known at its
/// end, reads one as a stream (checked against its hash), says whether it
/// holds one, removes one, and lists what it holds for collection. The local
/// folder (`LocalBlobStore`) is the default; an object store can take its
/// place behind this protocol.
///
/// Moving content between the store and local files (a file document, a
/// dump `pg_dump` wrote, a file to restore) has a default built on those
/// operations, which a store may do faster (the local one renames and links).
///
/// Calls block on I/O: run them off event loops.
public protocol BlobStore: Sendable {
    /// Starts a blob whose content arrives as a stream (a member of an
    /// archive being read) and whose hash is known only at its end.
    func writer() throws -> any BlobWriter
    /// Streams a blob's content to `consume` a chunk at a time, never whole
    /// in memory, and checks at its end that the content still has its hash
    /// (`corrupt` if not); returns its size. Once `interruption` is set,
    /// reading stops within a chunk. Whatever reads a blob's content (an
    /// archive, a verification, a restore) reads it through here.
    func read(_ hash: ContentHash, interruption: Interruption?, _ consume: (UnsafeRawBufferPointer) throws -> Void) throws -> UInt64
    /// Streams the bytes kept under `name` as they are, checked against
    /// nothing (`missing` when there are none); returns their count. What
    /// `read` checks, and what a store keeping content encrypted reads.
    func readObject(_ name: ContentHash, interruption: Interruption?, _ consume: (UnsafeRawBufferPointer) throws -> Void) throws -> UInt64
    /// Starts an object whose name is given at its end (`BlobWriter.finish(as:)`)
    /// rather than taken from its content's hash: an encrypted blob, kept
    /// under its namespace's address of its content's hash.
    func objectWriter() throws -> any BlobWriter
    /// The name content of `hash` is kept under (`StoredBlob.name`), known
    /// before it is stored: its hash, or its namespace's address of it.
    func name(of hash: ContentHash) -> ContentHash
    /// Whether the store holds `hash`; a store that cannot be asked throws
    /// its reason (an absent blob and an unreachable store are not the same).
    func contains(_ hash: ContentHash) throws -> Bool
    /// Whether the store holds `hash`, marking it as reused now, so a
    /// collection that runs beside the job reusing it does not take it as
    /// an unrecorded leftover. Stores ask through `reuses(_:)`, which then
    /// has the job's catalog mark it used.
    func reuse(_ hash: ContentHash) -> Bool
    /// Who is asked before the copy the store holds stands for new content.
    var reuseClaims: ReuseClaims { get }
    /// This store, asking `claims` before each reuse: a job's view of it.
    func asking(_ claims: ReuseClaims) -> any BlobStore
    /// Removes a blob; one that is not there counts as removed.
    func remove(_ hash: ContentHash) throws
    /// Removes blobs, as many at once as the store allows, and says which
    /// went before the first failure, if one stopped it.
    func remove(all hashes: [ContentHash]) -> (removed: [ContentHash], failure: (any Error)?)
    /// Drops what writes that never finished left (their process died) and
    /// that started before `cutoff`; returns how many.
    func dropAbandonedWrites(startedBefore cutoff: Date) throws -> Int
    /// Every blob the store holds that was last written or reused before
    /// `cutoff`, for finding those no catalog row knows: a blob a running job
    /// stored (or found there and reused) a moment ago may not be recorded yet.
    func storedHashes(unusedSince cutoff: Date) throws -> [ContentHash]

    /// Stores a copy of the content of an open file (a file document), read
    /// from its start and no further than `size` bytes (its size when it was
    /// opened), so a file that keeps growing cannot keep a backup reading.
    /// Content the store has already is only
    /// read, not written again. Once `interruption` is set, reading stops
    /// within a chunk (its job was cancelled).
    func put(reading file: LocalFile, upTo size: UInt64, interruption: Interruption?) throws -> StoredBlob
    /// Takes a file the caller made for the store (a database dump) into the
    /// store. The file is gone afterwards, whether the call succeeds or not.
    func adopt(_ path: String) throws -> StoredBlob
    /// Takes in a file whose hash and size the caller computed as it wrote
    /// it (a prepared archive), without reading it to hash it again. The
    /// file is gone afterwards, whether the call succeeds or not.
    func adopt(_ path: String, as blob: StoredBlob) throws -> StoredBlob
    /// The size of a blob, or nil when the store does not hold it.
    func size(of hash: ContentHash) throws -> UInt64?
    /// Up to `length` bytes of a blob from `offset` (fewer at its end), not
    /// checked against its hash: ranges of a blob checked as it was written
    /// (a prepared archive) served to a client. A blob not there is `missing`.
    func read(_ hash: ContentHash, at offset: UInt64, length: Int) throws -> ByteBuffer
    /// Ranged reads and sizes of a blob by the name the catalog recorded
    /// (`StoredBlob.name`): what a store keeping content encrypted needs to
    /// tell content kept as is from its own sealed objects, as ranges are
    /// not checked against the hash. Other stores read `name`.
    func read(_ blob: StoredBlob, at offset: UInt64, length: Int) throws -> ByteBuffer
    func size(of blob: StoredBlob) throws -> UInt64?
    /// How many bytes a ranged read asks for at a time to keep a reader fast:
    /// a local file is read a few hundred KiB at a time, an object a part.
    var rangeReadSize: Int { get }
    /// Puts a blob's content at `path` (which must not exist) for backupd's
    /// own use, checked against its hash.
    func materialize(_ hash: ContentHash, at path: String) throws
    /// The folder on this machine that holds the store's content, if any:
    /// no app's file store may be registered in it.
    var localFolder: String? { get }
    /// How the store keeps objects from deletion until a date, when it does
    /// (an S3 bucket with object lock); nil for a store that cannot.
    var retaining: (any RetainingStore)? { get }
}

/// A store that keeps objects from deletion until a date, by anyone (S3
/// object lock): what makes a backup immutable until it expires.
public protocol RetainingStore: Sendable {
    /// Keeps the object `name` from deletion until `date`.
    func retain(_ name: ContentHash, until date: Date) async throws
    /// Until when the object `name` is kept from deletion; nil when it is not (or is not there).
    func retainedUntil(_ name: ContentHash) async throws -> Date?
    /// Whether the store is set up to retain objects: a bucket made with object lock.
    func canRetain() async throws -> Bool
}

extension BlobStore {
    /// Whether `blob` is kept as this store keeps new content now (sealed
    /// under the namespace's key once it has one): only such a copy is
    /// reused by a later backup; one kept before encryption is stored again.
    public func keepsAsNew(_ blob: StoredBlob) -> Bool {
        name(of: blob.hash) == blob.name
    }
}

extension BlobStore {
    public var localFolder: String? { nil }
    public var retaining: (any RetainingStore)? { nil }

    public func name(of hash: ContentHash) -> ContentHash { hash }

    public func read(_ blob: StoredBlob, at offset: UInt64, length: Int) throws -> ByteBuffer {
        try read(blob.name, at: offset, length: length)
    }

    public func size(of blob: StoredBlob) throws -> UInt64? { try size(of: blob.name) }

    /// Whether the copy the store holds may stand for `blob`: the store
    /// holds it, and the catalog has marked it used (`reuseClaims`). Every
    /// reuse, by a store or a job, asks here.
    public func reuses(_ blob: StoredBlob) -> Bool {
        reuseClaims.reuses(blob) { reuse($0) }
    }

    /// One blob at a time.
    public func remove(all hashes: [ContentHash]) -> (removed: [ContentHash], failure: (any Error)?) {
        var removed: [ContentHash] = []
        for hash in hashes {
            do { try remove(hash) } catch { return (removed, error) }
            removed.append(hash)
        }
        return (removed, nil)
    }

    /// The bytes kept under the content's hash, checked against it.
    public func read(_ hash: ContentHash, interruption: Interruption?, _ consume: (UnsafeRawBufferPointer) throws -> Void) throws -> UInt64 {
        let hasher = SHA256Hasher()
        let size = try readObject(hash, interruption: interruption) { chunk in
            hasher.update(chunk)
            try consume(chunk)
        }
        let actual = hasher.finish()
        guard actual == hash else { throw BlobStoreError.corrupt(hash, actual: actual) }
        return size
    }

    /// Re-reads a blob and checks that its content still has its hash.
    public func verify(_ hash: ContentHash) throws -> UInt64 {
        try read(hash, interruption: nil) { _ in }
    }

    /// Hashes the file first and writes only content the store lacks: most
    /// documents are unchanged since the last backup.
    public func put(reading file: LocalFile, upTo limit: UInt64, interruption: Interruption?) throws -> StoredBlob {
        let (hash, size) = try file.contentHash(limit: limit, interruption: interruption)
        if reuses(StoredBlob(hash: hash, size: size)) { return StoredBlob(hash: hash, size: size, written: false) }
        try file.rewind()
        let writer = try writer()
        try file.readChunks(limit: limit, interruption: interruption) { try writer.write($0) }
        return try writer.finish()
    }

    public func adopt(_ path: String) throws -> StoredBlob {
        defer { FileSystem.remove(path) }
        return try put(reading: LocalFile.open(path), upTo: .max, interruption: nil)
    }

    public func materialize(_ hash: ContentHash, at path: String) throws {
        try place(hash, at: path, owner: FileOwner(mode: 0o600))
    }

    /// Puts a blob's content at `path` (which must not exist) as a new file
    /// of `owner` with its mode, for an app's file store: always a verified
    /// copy, so no file outside the store shares an inode with a blob. A
    /// copy that fails or does not match the hash leaves nothing at `path`.
    public func place(_ hash: ContentHash, at path: String, owner: FileOwner) throws {
        let file = try LocalFile.create(path, owner: owner)
        do {
            try place(hash, into: file)
        } catch {
            FileSystem.remove(path)
            throw error
        }
    }

    /// Writes a blob's content into a new, empty file, checked against its
    /// hash and synced; the caller removes the file if this fails.
    public func place(_ hash: ContentHash, into file: LocalFile) throws {
        _ = try read(hash, interruption: nil) { try file.write($0) }
        try file.sync()
    }
}

/// A blob being written from a stream: `write` each chunk, then `finish`
/// takes it into the store under the hash of what was written (hashed as it
/// was written, so content never passes twice). A writer dropped without
/// `finish` leaves nothing behind.
public protocol BlobWriter: AnyObject {
    func write(_ chunk: UnsafeRawBufferPointer) throws
    func finish() throws -> StoredBlob
    /// Keeps what was written under `name` (a writer from `objectWriter`),
    /// without asking whether the store holds it: its caller asked.
    func finish(as name: ContentHash) throws -> StoredBlob
}

/// A flag that work on a thread, which task cancellation cannot reach, looks
/// at between chunks: set when the job it serves is cancelled.
public final class Interruption: Sendable {
    private let flag = Mutex(false)

    public init() {}

    public func set() { flag.withLock { $0 = true } }

    public var isSet: Bool { flag.withLock { $0 } }
}
