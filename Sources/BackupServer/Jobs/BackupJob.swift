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
    let databases: AppDatabases
    let threadPool: NIOThreadPool
    let tools: PostgresTools

    private struct ReferencedFile: Sendable {
        let key: String
        let size: UInt64
    }

    private struct OpenedSnapshot: Sendable {
        let snapshot: String
        let postgresVersion: String
        let databaseBytes: UInt64
        let keys: Set<String>
    }

    /// Rows fetched from the file query's cursor at a time.
    private static let fetchSize = 5000

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
        let fileQuery = try FileQuery(parsing: environment.fileQuery)
        let app = try await threadPool.runIfActive { [databases] in try databases.connect(environment) }
        let session = ConnectionHandle(app, threadPool: threadPool)
        let opened = try await session.run { [databases] connection in
            try connection.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            let row = try connection.query("""
                SELECT pg_export_snapshot() AS snapshot, current_setting('server_version') AS version,
                       pg_database_size(current_database()) AS size
                """)[0]
            let keys = try Self.fileKeys(connection, query: fileQuery, policy: databases.policy)
            return OpenedSnapshot(snapshot: row.string("snapshot"), postgresVersion: row.string("version"),
                                  databaseBytes: row.uint64("size"), keys: keys)
        }

        // A store with no documents yet may not exist; one with documents is opened once, as a folder that is no link.
        let store = opened.keys.isEmpty ? nil : try FileStoreReader(path: environment.fileStorePath)
        let files = try await threadPool.runIfActive { try store.map { try referencedFiles(opened.keys, in: $0) } ?? [] }
        let filesBytes = files.reduce(UInt64(0)) { $0 + $1.size }

        await progress.update(done: 0, total: opened.databaseBytes + filesBytes, phase: "dumping database")
        let dumpPath = "\(blobStore.scratchDirectory)/dump-\(claimed.job.id).backup"
        defer { unlink(dumpPath) }
        try await dump(try databases.connectionString(environment.databaseURL), snapshot: opened.snapshot, to: dumpPath) { written in
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
            let document = try store!.open(key: file.key)
            defer { close(document.descriptor) }
            return (key: file.key, blob: try blobStore.put(reading: document.descriptor, upTo: document.size, name: "file document \(file.key)"))
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

    /// The storage keys the file query lists, read through a cursor inside
    /// the exported snapshot, under the query's timeout and row cap. Keys are
    /// checked but never repeated in errors: they are the app's data.
    private static func fileKeys(_ connection: PostgresConnection, query: FileQuery, policy: AppDatabasePolicy) throws -> Set<String> {
        var keys = Set<String>()
        var rows = 0, empty = 0, invalid = 0
        do {
            try connection.query("SET LOCAL statement_timeout = '\(policy.fileQueryTimeout)'")
            try connection.query("DECLARE backupd_files NO SCROLL CURSOR FOR \(query.sql)")
            while true {
                let batch = try connection.query("FETCH FORWARD \(fetchSize) FROM backupd_files")
                guard !batch.isEmpty else { break }
                rows += batch.count
                guard rows <= policy.maximumFilesPerBackup else {
                    throw JobFailure(description: "the file query returned more than \(policy.maximumFilesPerBackup) rows, "
                                     + "the most one backup may hold (--max-files-per-backup)")
                }
                for row in batch {
                    guard let key = row.firstValue, !key.isEmpty else { empty += 1; continue }
                    guard (try? FileStoreLayout.components(forKey: key)) != nil else { invalid += 1; continue }
                    keys.insert(key)
                }
            }
            try connection.query("CLOSE backupd_files")
        } catch let error as PostgresError {
            throw JobFailure(description: error.sqlState == "57014"
                ? "the file query ran longer than its timeout of \(policy.fileQueryTimeout)"
                : "the environment's file query failed: \(error.message)")
        }
        guard empty == 0 else { throw JobFailure(description: "\(empty) of the file query's \(rows) rows have a NULL or empty key") }
        guard invalid == 0 else {
            throw JobFailure(description: "\(invalid) of the file query's \(rows) rows are not storage keys: \(FileStoreLayout.InvalidKey())")
        }
        return keys
    }

    /// The files the snapshot refers to, each opened beneath the store
    /// without following links and checked to be a regular file.
    private func referencedFiles(_ keys: Set<String>, in store: FileStoreReader) throws -> [ReferencedFile] {
        try keys.sorted().map { key in
            do {
                let document = try store.open(key: key)
                close(document.descriptor)
                return ReferencedFile(key: key, size: document.size)
            } catch let error as FileDocumentError {
                if case .missing = error {
                    throw JobFailure(description: "file document \(key) is referenced by the database but missing from the file store")
                }
                throw JobFailure(description: error.description)
            }
        }
    }
}

func fileSize(_ path: String) -> UInt64 {
    var info = stat()
    return stat(path, &info) == 0 ? UInt64(info.st_size) : 0
}
