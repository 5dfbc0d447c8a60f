import BackupCatalog
import BackupCore
import BackupWire
import Foundation
import NIOPosix

/// A reason a job failed that is worth saying as it is.
struct JobFailure: Error, CustomStringConvertible {
    let description: String
}

/// Where the PostgreSQL client tools are.
public struct PostgresTools: Sendable {
    public var pgDump: String
    public var pgRestore: String

    public init(pgDump: String = "/usr/bin/pg_dump", pgRestore: String = "/usr/bin/pg_restore") {
        self.pgDump = pgDump
        self.pgRestore = pgRestore
    }
}

/// Makes one snapshot of an environment, consistent across database and files:
/// a REPEATABLE READ transaction on the app database exports its snapshot;
/// the referenced files are listed inside it and `pg_dump --snapshot` dumps
/// the same snapshot. The dump and every file go to the blob store; nothing
/// is cataloged as FINISHED until all of it is stored.
struct BackupJob: Sendable {
    let catalog: Catalog
    let blobStore: any BlobStore
    let threadPool: NIOThreadPool
    let tools: PostgresTools

    private struct ReferencedFile: Sendable {
        let key: String
        let path: String
        let size: UInt64
    }

    private struct OpenedSnapshot: Sendable {
        let snapshot: String
        let postgresVersion: String
        let databaseBytes: UInt64
        let keys: [String]
    }

    func run(_ claimed: ClaimedJob, owner: String) async throws {
        let progress = ProgressReporter(catalog: catalog, jobID: claimed.job.id)
        try await catalog.withSharedBlobLock { ledger in
            let manifest = try await makeSnapshot(claimed, progress: progress, ledger: ledger)
            try await catalog.finishBackup(jobID: claimed.job.id, owner: owner, manifest: manifest)
        }
    }

    private func makeSnapshot(_ claimed: ClaimedJob, progress: ProgressReporter, ledger: BlobLedger) async throws -> BackupManifest {
        let environment = claimed.environment
        await progress.update(phase: "opening a database snapshot")
        let app = try await threadPool.runIfActive { try AppDatabase.connect(environment) }
        let session = ConnectionHandle(app, threadPool: threadPool)
        let opened = try await session.run { connection in
            try connection.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            let row = try connection.query("""
                SELECT pg_export_snapshot() AS snapshot, current_setting('server_version') AS version,
                       pg_database_size(current_database()) AS size
                """)[0]
            let keys: [String]
            do {
                keys = try connection.query(environment.fileQuery).compactMap(\.firstValue)
            } catch let error as PostgresError {
                throw JobFailure(description: "the environment's file query failed: \(error.message)")
            }
            return OpenedSnapshot(snapshot: row.string("snapshot"), postgresVersion: row.string("version"),
                                  databaseBytes: row.uint64("size"), keys: keys)
        }

        let files = try await threadPool.runIfActive { try referencedFiles(opened.keys, in: environment.fileStorePath) }
        let filesBytes = files.reduce(UInt64(0)) { $0 + $1.size }

        await progress.update(done: 0, total: opened.databaseBytes + filesBytes, phase: "dumping database")
        let dumpPath = "\(blobStore.scratchDirectory)/dump-\(claimed.job.id).backup"
        defer { unlink(dumpPath) }
        try await dump(environment.databaseURL, snapshot: opened.snapshot, to: dumpPath) { written in
            await progress.update(done: written, total: max(opened.databaseBytes, written) + filesBytes)
        }
        _ = try? await session.run { try $0.query("COMMIT") }

        await progress.update(phase: "storing database dump")
        let dump = try await threadPool.runIfActive { try blobStore.adopt(dumpPath) }
        try await ledger.record([dump])
        await progress.update(done: dump.size, total: dump.size + filesBytes, phase: "storing \(files.count) files")

        var stored: [(key: String, blob: StoredBlob)] = []
        stored.reserveCapacity(files.count)
        try await inBatches(files, threadPool: threadPool) { file in
            (key: file.key, blob: try blobStore.put(contentsOf: file.path))
        } completed: { blobs in
            try await ledger.record(blobs.map(\.blob))
            stored += blobs
            await progress.advance(by: blobs.reduce(0) { $0 + $1.blob.size })
        }
        return BackupManifest(dump: dump, files: stored, postgresVersion: opened.postgresVersion, databaseSize: opened.databaseBytes)
    }

    /// Runs pg_dump on the exported snapshot, telling `written` how far the
    /// dump file has grown while it runs.
    private func dump(_ databaseURL: String, snapshot: String, to path: String,
                      written: @escaping @Sendable (UInt64) async -> Void) async throws {
        try await runPostgresTool(tools.pgDump, [
            "--format=custom", "--no-owner", "--no-privileges", "--snapshot=\(snapshot)", "--file=\(path)",
        ], database: databaseURL, threadPool: threadPool, scratchDirectory: blobStore.scratchDirectory) {
            await written(fileSize(path))
        }
        await written(fileSize(path))
    }

    /// The files the snapshot refers to, each checked to be in the file store.
    private func referencedFiles(_ keys: [String], in fileStore: String) throws -> [ReferencedFile] {
        var seen = Set<String>()
        return try keys.filter { seen.insert($0).inserted }.map { key in
            let path = "\(fileStore)/\(try FileStoreLayout.relativePath(forKey: key))"
            var info = stat()
            guard stat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else {
                throw JobFailure(description: "file document \(key) is referenced by the database but missing from the file store (\(path))")
            }
            return ReferencedFile(key: key, path: path, size: UInt64(info.st_size))
        }
    }
}

func fileSize(_ path: String) -> UInt64 {
    var info = stat()
    return stat(path, &info) == 0 ? UInt64(info.st_size) : 0
}
