import BackupCatalog
import BackupRules
import BackupStorage
import BackupPostgres
import BackupWire
import Foundation
import NIOPosix

/// A reason a job failed that is worth saying as it is.
struct JobFailure: Error, CustomStringConvertible {
    let description: String
}

/// Where the PostgreSQL client tools are, and how long one may go without
/// progress before it is stopped.
public struct PostgresTools: Sendable {
    public var pgDump: String
    public var pgRestore: String
    public var stallTimeout: Duration = .seconds(600)

    public init(pgDump: String = "/usr/bin/pg_dump", pgRestore: String = "/usr/bin/pg_restore") {
        self.pgDump = pgDump
        self.pgRestore = pgRestore
    }
}

/// Makes one snapshot of an environment, consistent across database and
/// files, while the app keeps running: a REPEATABLE READ transaction on the
/// app database exports its snapshot and lists the referenced files inside
/// it; then `pg_dump --snapshot` dumps that snapshot while, at the same time,
/// the listed files are read into the blob store. A file document's content
/// never changes under its key (a Mendix file document is written once), so
/// reading it soon after the snapshot reads what the snapshot refers to. A
/// file gone by then is looked up in the live database: if its row was
/// deleted after the snapshot, the backup goes on without it and says so;
/// otherwise the backup fails naming it. A file modified after the snapshot
/// is stored as read and reported. Nothing is cataloged as FINISHED until
/// all of it is stored.
struct BackupJob: Sendable {
    let catalog: Catalog
    let stores: NamespaceStores
    /// Where the job writes its scratch files (a dump for pg_restore), named for the job.
    let scratchDirectory: String
    let databases: AppDatabases
    let threadPool: NIOThreadPool
    let tools: PostgresTools
    /// The clock of the tool's stall watch: the runner's.
    let clock: any ServiceClock
    let dumps: DumpStorage

    private struct OpenedSnapshot: Sendable {
        let snapshot: String
        let postgresVersion: String
        let databaseBytes: UInt64
        let keys: [String]
    }

    /// What became of one listed file document.
    private enum CapturedFile: Sendable {
        case stored(key: String, blob: StoredBlob, changed: Bool)
        case gone(key: String)
    }

    /// Rows fetched from the file query's cursor at a time.
    private static let fetchSize = 5000

    func run(_ claimed: ClaimedJob, owner: String) async throws {
        let progress = ProgressReporter(catalog: catalog, jobID: claimed.job.id, clock: clock)
        let ledger = BlobLedger(catalog: catalog, store: try await stores.store(for: claimed.environment.namespace),
                                threadPool: threadPool, clock: clock)
        let manifest = try await makeSnapshot(claimed, progress: progress, ledger: ledger)
        try await catalog.finishBackup(jobID: claimed.job.id, owner: owner, manifest: manifest)
    }

    private func makeSnapshot(_ claimed: ClaimedJob, progress: ProgressReporter, ledger: BlobLedger) async throws -> BackupManifest {
        let environment = claimed.environment
        await progress.update(phase: "opening a database snapshot")
        let fileQuery = try FileQuery(parsing: environment.fileQuery)
        let session = try await databases.session(environment, threadPool: threadPool)
        // Taken before the snapshot: a file changed later than this may have changed after it.
        let snapshotTime = Date().timeIntervalSince1970
        let opened = try await session.runCancellable { [databases] connection in
            try connection.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            let row = try connection.query("""
                SELECT pg_export_snapshot() AS snapshot, current_setting('server_version') AS version,
                       pg_database_size(current_database()) AS size
                """)[0]
            let keys = try Self.fileKeys(connection, query: fileQuery, policy: databases.policy)
            return OpenedSnapshot(snapshot: row.string("snapshot"), postgresVersion: row.string("version"),
                                  databaseBytes: row.uint64("size"), keys: keys.sorted())
        }

        // A store with no documents yet may not exist; one with documents is opened once, as a folder that is no link.
        let store = opened.keys.isEmpty ? nil : try FileStoreReader(path: environment.fileStorePath)
        await progress.update(phase: "dumping the database and storing \(opened.keys.count) files")
        await progress.update(part: "database", total: opened.databaseBytes)
        // pg_dump writes into a FIFO that the dump's chunks are cut from as it goes: no copy of the dump on disk.
        let dumpPath = "\(scratchDirectory)/dump-\(claimed.job.id).backup"
        try FileSystem.makeFIFO(dumpPath)
        defer { FileSystem.remove(dumpPath) }
        // The dump is stored and the files are read while pg_dump runs; whichever fails first stops the others.
        let databaseURL = try databases.connectionString(environment.databaseURL)
        await progress.update(part: "database", done: 0, total: opened.databaseBytes)
        let (dump, files) = try await withThrowingTaskGroup(of: DumpedPart.self) { group in
            group.addTask {
                defer { Self.releaseReader(of: dumpPath) }
                do {
                    try await runDump(databaseURL, snapshot: opened.snapshot, to: dumpPath) { await progress.done(of: "database") }
                } catch let failure as ToolFailure where failure.standardError.contains("canceling statement due to statement timeout") {
                    // pg_dump waits for its table locks under a statement timeout of --lock-wait-timeout, and says no more.
                    throw JobFailure(description: "pg_dump could not lock the app's tables within \(databases.policy.lockTimeout): "
                                     + (await Self.lockHolders(on: session) ?? "another session held a table locked"))
                }
                return .none
            }
            group.addTask {
                .dump(try await dumps.store(dumpPath, of: (environment.namespace, environment.name), ledger: ledger, progress: progress,
                                            reportingTo: .part("database")))
            }
            group.addTask {
                .files(try await captureFiles(opened.keys, from: store, of: environment, changedAfter: snapshotTime, ledger: ledger, progress: progress))
            }
            var (dump, files): (StoredDump?, [CapturedFile]) = (nil, [])
            for try await result in group {
                switch result {
                case .dump(let stored): dump = stored
                case .files(let captured): files = captured
                case .none: break
                }
            }
            return (dump!, files)
        }
        _ = try? await session.runCancellable { try $0.query("COMMIT") }
        // The totals become what was stored; the phase change writes them.
        await progress.update(part: "database", done: dump.size, total: dump.size)
        await progress.update(phase: "recording the backup")

        var manifest = BackupManifest(dump: dump, files: [], postgresVersion: opened.postgresVersion, databaseSize: opened.databaseBytes)
        var gone: [String] = []
        for file in files {
            switch file {
            case let .stored(key, blob, changed):
                manifest.files.append((key: key, blob: blob))
                if changed { manifest.changedDuringBackup.append(key) }
            case let .gone(key): gone.append(key)
            }
        }
        manifest.deletedDuringBackup = try await deletedSinceSnapshot(gone, query: fileQuery, session: session)
        return manifest
    }

    /// Reads every listed file into the blob store, a batch at a time on the
    /// thread pool, recording each batch's blobs as it completes.
    private func captureFiles(_ keys: [String], from store: FileStoreReader?, of environment: Environment, changedAfter snapshotTime: Double,
                              ledger: BlobLedger, progress: ProgressReporter) async throws -> [CapturedFile] {
        guard let store, !keys.isEmpty else { return [] }
        var captured: [CapturedFile] = []
        captured.reserveCapacity(keys.count)
        var storedBytes: UInt64 = 0
        // Work on the thread pool stops within a document, or a chunk of one, when the job is cancelled.
        let interruption = Interruption()
        try await withTaskCancellationHandler {
            // The total for progress: every document's size as it stands now.
            let sizes = try await threadPool.runIfActive {
                var total: UInt64 = 0
                for key in keys {
                    guard !interruption.isSet else { throw CancellationError() }
                    guard let document = try? store.open(key: key) else { continue }
                    total += document.size
                }
                return total
            }
            await progress.update(part: "files", total: sizes)
            // The documents of the latest backup are marked used in one go (those kept as the store keeps new content
            // now, as for the dump's chunks): the unchanged ones are then reused without a catalog round trip each.
            let latest = try await catalog.knownFiles(namespace: environment.namespace, environment: environment.name)
            try await ledger.markForReuse(latest.filter { ledger.store.keepsAsNew($0) })
            try await inBatches(keys, threadPool: threadPool) { [blobStore = ledger.store] key -> CapturedFile in
                let document: OpenedDocument
                do {
                    document = try store.open(key: key)
                } catch FileDocumentError.missing {
                    return .gone(key: key)
                }
                let blob = try blobStore.put(reading: document.file, upTo: document.size, interruption: interruption)
                return .stored(key: key, blob: blob, changed: document.lastChanged > snapshotTime)
            } completed: { batch in
                let blobs = batch.compactMap { if case let .stored(_, blob, _) = $0 { blob } else { nil } }
                try await ledger.record(blobs)
                captured += batch
                storedBytes += blobs.reduce(0) { $0 + $1.size }
                await progress.update(part: "files", done: storedBytes)
            }
        } onCancel: {
            interruption.set()
        }
        await progress.update(part: "files", done: storedBytes, total: storedBytes)
        return captured
    }

    /// Of the keys whose files were gone when read, those the live database
    /// no longer lists: deleted with their rows after the snapshot. A key the
    /// database still lists is a file missing from the store, and fails the backup.
    private func deletedSinceSnapshot(_ gone: [String], query: FileQuery, session: ConnectionHandle) async throws -> [String] {
        guard !gone.isEmpty else { return [] }
        let stillListed = try await session.runCancellable { connection in
            try AppDatabases.withAppSearchPath(connection) { try connection.query(query.sqlAmongKeys, gone).compactMap(\.firstValue) }
        }
        if let missing = stillListed.sorted().first {
            throw JobFailure(description: "file document \(missing) is referenced by the database but missing from the file store"
                             + (stillListed.count > 1 ? " (and \(stillListed.count - 1) more)" : ""))
        }
        return gone
    }

    /// Runs pg_dump on the exported snapshot, telling `written` how far the
    /// dump file has grown while it runs.
    /// What one of a backup's concurrent parts brought back.
    private enum DumpedPart: Sendable {
        case dump(StoredDump)
        case files([CapturedFile])
        case none
    }

    /// A reader still waiting for the FIFO's writer (pg_dump did not start,
    /// or was stopped before it opened its output) sees its end: a writer
    /// comes and goes. Harmless once the reader has its data or has gone.
    private static func releaseReader(of fifo: String) {
        FileSystem.openAndCloseForWriting(fifo: fifo)
    }

    /// Who holds a table of the app's database locked against a dump (ACCESS
    /// EXCLUSIVE), as a failed backup names it: table, pid, role, application.
    private static func lockHolders(on session: ConnectionHandle) async -> String? {
        let holders = try? await session.runCancellable { connection in
            try connection.query("ROLLBACK")
            return try connection.query("""
                SELECT format('%I.%I', n.nspname, c.relname) AS table_name, a.pid, coalesce(a.usename, '') AS role, a.application_name
                FROM pg_locks l JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace
                JOIN pg_stat_activity a ON a.pid = l.pid
                WHERE l.granted AND l.mode = 'AccessExclusiveLock' AND l.locktype = 'relation' AND a.pid <> pg_backend_pid()
                  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                ORDER BY 1 LIMIT 5
                """).map { row in
                "table \(row.string("table_name")) is locked by pid \(row.string("pid")) (role \(row.string("role"))"
                    + (row.string("application_name").isEmpty ? "" : ", application \"\(row.string("application_name"))\"") + ")"
            }
        }
        return holders.flatMap { $0.isEmpty ? nil : $0.joined(separator: "; ") }
    }

    /// Runs pg_dump into `path` (the FIFO); `read` says how far the dump's
    /// reader has come, which is pg_dump's progress.
    private func runDump(_ databaseURL: String, snapshot: String, to path: String,
                         read: @escaping @Sendable () async -> UInt64) async throws {
        try await runPostgresTool(tools.pgDump, [
            // Uncompressed: the dump is cut into chunks that are compressed on every core and stored once.
            // A FIFO cannot be fsynced (each chunk's blob is); its table of contents carries no data offsets,
            // which pg_restore finds by reading.
            "--format=custom", "--compress=0", "--no-sync", "--no-owner", "--no-privileges", "--snapshot=\(snapshot)",
            // pg_dump sets its own lock_timeout to none: a table the app holds locked fails the backup naming
            // the table, rather than holding a job slot until the stall limit.
            "--lock-wait-timeout=\(databases.policy.lockTimeout)",
            "--file=\(path)",
        ], database: databaseURL, stallTimeout: tools.stallTimeout, clock: clock, progress: read)
    }

    /// The storage keys the file query lists, read through a cursor inside
    /// the exported snapshot, under the query's timeout and row cap. Keys are
    /// checked but never repeated in errors: they are the app's data.
    private static func fileKeys(_ connection: PostgresConnection, query: FileQuery, policy: AppDatabasePolicy) throws -> Set<String> {
        var keys = Set<String>()
        var rows = 0, empty = 0, invalid = 0
        do {
            // The query runs (each FETCH, and whatever functions its views call) on the app's search path; its
            // timeout is set again before each FETCH, which a view's own set_config cannot then lift.
            let timeout = "SET LOCAL statement_timeout = '\(policy.fileQueryTimeout)'"
            try AppDatabases.withAppSearchPath(connection) {
                try connection.query(timeout)
                try connection.query("DECLARE backupd_files NO SCROLL CURSOR FOR \(query.sql)")
                while true {
                    try connection.query(timeout)
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
            }
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
}
