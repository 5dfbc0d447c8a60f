import BackupCatalog
import BackupRules
import BackupStorage
import BackupWire
import Foundation
import NIOConcurrencyHelpers
import NIOPosix

/// Turns a received upload into a backup, or refuses it naming why. The
/// archive (the upload's segments in the blob store, wherever it was
/// received) is read once, as a stream, by `SnapshotArchiveReader` (every rule
/// of the format, and the limits, checked while reading): the dump goes to a
/// scratch file, each document through a blob writer into the blob store
/// (one the store holds already, under the hash `.metadata` states for it,
/// is only hashed, not written again). Then `pg_restore --list` must read
/// the dump, which joins the store. Only when every blob is stored under the
/// hash its member was read with, and the blob lock still held, is the
/// backup cataloged, with `.metadata`'s `modelVersion` as its package
/// version. A refusal catalogs nothing; what it stored is unreferenced and
/// goes with the garbage collection the failed job asks for.
struct UploadValidationJob: Sendable {
    let catalog: Catalog
    let clock: any ServiceClock
    let stores: NamespaceStores
    /// Where the job writes its scratch files (a dump for pg_restore), named for the job.
    let scratchDirectory: String
    let spool: UploadSpool
    let limits: SnapshotArchiveReader.Limits
    /// Free space the blob store's disk keeps beyond a member about to be written.
    let reservedDiskBytes: UInt64
    let threadPool: NIOThreadPool
    let tools: PostgresTools
    let dumps: DumpStorage

    /// What reading the archive left: its contents, and the documents' blobs
    /// (the dump is still in its scratch file).
    private struct ReadArchive: Sendable {
        let contents: SnapshotArchiveReader.Contents
        let documents: [(key: String, blob: StoredBlob)]
    }

    func run(_ claimed: ClaimedJob, owner: String) async throws {
        let upload = try await catalog.validatedUpload(jobID: claimed.job.id)
        // The upload's data goes once it is a backup or refused; a job stopped by a dead process leaves it to the spool's sweep.
        defer { spool.remove([upload.id]) }
        let progress = ProgressReporter(catalog: catalog, jobID: claimed.job.id, clock: clock)
        await progress.update(done: 0, total: upload.sizeBytes, phase: "reading and checking the archive")
        let dumpPath = "\(scratchDirectory)/dump-\(claimed.job.id).backup"
        defer { FileSystem.remove(dumpPath) }
        let blobStore = try await stores.store(for: upload.namespace)
        let ledger = BlobLedger(catalog: catalog, store: blobStore, threadPool: threadPool, clock: clock)
        let segments = try await catalog.uploadSegments(uploadID: upload.id, received: upload.sizeBytes)
        let read = try await readArchive(segments, from: blobStore, into: ledger.store, dumpTo: dumpPath, progress: progress)
        let packageVersion = try Self.packageVersion(read.contents.metadata)
        try await ledger.record(read.documents.map(\.blob))
        await progress.update(phase: "checking the database dump with pg_restore --list")
        let postgresVersion: String
        do {
            postgresVersion = try await tools.listDump(dumpPath, scratch: "\(scratchDirectory)/list-\(claimed.job.id)")
        } catch let failure as ToolFailure {
            throw JobFailure(description: "the archive's \(SnapshotArchive.dumpPath) is not a dump pg_restore can read: \(failure)")
        }
        await progress.update(phase: "storing the database dump")
        // The job's bytes are the archive's: storing its dump shows as a phase.
        let dump = try await dumps.store(dumpPath, of: (upload.namespace, upload.environment), ledger: ledger, progress: progress,
                                         reportingTo: .none)
        guard dump.sha256 == read.contents.dump.sha256 else {
            throw JobFailure(description: "the dump was stored as \(dump.sha256.hex), not the \(read.contents.dump.sha256.hex) read from the archive")
        }
        await progress.update(phase: "recording the backup")
        // A size no database has (past Int64) is no size at all.
        let databaseSize = read.contents.metadata["databaseSize"].flatMap { Int64($0) }.map { UInt64(max(0, $0)) } ?? 0
        var manifest = BackupManifest(dump: dump, files: read.documents, postgresVersion: postgresVersion, databaseSize: databaseSize)
        manifest.files.sort { $0.key < $1.key }
        try await catalog.completeUpload(jobID: claimed.job.id, owner: owner, manifest: manifest, packageVersion: packageVersion)
    }

    /// Reads the archive on the thread pool, stopping within a chunk when the
    /// job is cancelled; progress is the compressed bytes read. Its segments
    /// are read from the store; its documents are written through `ledgerStore`,
    /// the job's view of it (`BlobLedger.store`).
    private func readArchive(_ segments: [StoredBlob], from blobStore: any BlobStore, into ledgerStore: any BlobStore, dumpTo dumpPath: String,
                             progress: ProgressReporter) async throws -> ReadArchive {
        let (limits, reserved) = (self.limits, self.reservedDiskBytes)
        return try await progress.reporting(on: threadPool) { interruption, report in
            let documents = NIOLockedValueBox<[(key: String, blob: StoredBlob)]>([])
            let contents: SnapshotArchiveReader.Contents
            do {
                let archive = ConcatenatedBlobs(segments, in: blobStore, interruption: interruption)
                contents = try SnapshotArchiveReader(limits: limits).read(from: archive, interruption: interruption, progress: report) { member, size, _ in
                    // The archive's members may expand far past it: each must fit on the disk beside its reserve.
                    try requireRoom(for: size, reserved: reserved, in: scratchDirectory)
                    switch member {
                    case .dump:
                        return try ScratchFile(path: dumpPath)
                    case .document(let key):
                        // Every document is read into a writer, which reuses a copy the store holds only once it has
                        // hashed the bytes: a hash the archive merely states asks nothing of the store or the catalog
                        // (helper finding: the time such an ask took told whether any namespace held that content).
                        return BlobSink(key: key, writer: try ledgerStore.writer(), documents: documents)
                    }
                }
            } catch let rejection as ArchiveRejection {
                // A segment damaged in the store reads as a broken archive: it is named as what it is.
                for segment in segments { _ = try blobStore.verify(segment.hash) }
                throw JobFailure(description: "the archive is not a valid snapshot: \(rejection)")
            }
            return ReadArchive(contents: contents, documents: documents.withLockedValue { $0 })
        }
    }

    /// `.metadata`'s `modelVersion`, which becomes the backup's package
    /// version: held to what the API lets a package version be.
    static func packageVersion(_ metadata: [String: String]) throws -> String {
        let version = metadata["modelVersion"] ?? ""
        guard version.utf8.count <= WireLimits.appOrVersion,
              !version.unicodeScalars.contains(where: { $0.properties.generalCategory == .control || $0.properties.generalCategory == .format })
        else {
            throw JobFailure(description: "the archive is not a valid snapshot: .metadata modelVersion must be at most "
                             + "\(WireLimits.appOrVersion) bytes without control or format characters")
        }
        return version
    }

}

/// A document's sink: its blob writer. At the member's end the blob joins
/// the list, stored under the hash the member was read with, or the archive
/// is refused. Content that is not what `.metadata` stated is refused by the
/// reader at the archive's end, with the same message whatever the store holds.
private final class BlobSink: ArchiveMemberSink {
    private let key: String
    private let writer: any BlobWriter
    private let documents: NIOLockedValueBox<[(key: String, blob: StoredBlob)]>

    init(key: String, writer: any BlobWriter, documents: NIOLockedValueBox<[(key: String, blob: StoredBlob)]>) {
        (self.key, self.writer, self.documents) = (key, writer, documents)
    }

    func write(_ chunk: UnsafeRawBufferPointer) throws {
        try writer.write(chunk)
    }

    func end(sha256: ContentHash) throws {
        let blob = try writer.finish()
        guard blob.hash == sha256 else {
            throw ArchiveRejection("document \(key) was stored as \(blob.hash.hex), not the \(sha256.hex) read from the archive")
        }
        documents.withLockedValue { $0.append((key, blob)) }
    }
}
