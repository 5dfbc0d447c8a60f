import BackupRules
import BackupPostgres
import BackupWire
import Foundation

/// What a filter on the backup list asks for.
public struct BackupFilter: Sendable {
    public var namespace: String
    public var environment: String
    public var kind: BackupKind
    public var status: BackupStatus

    public init(namespace: String, environment: String = "", kind: BackupKind = .unspecified, status: BackupStatus = .unspecified) {
        self.namespace = namespace
        self.environment = environment
        self.kind = kind
        self.status = status
    }
}

extension Catalog {
    static let backupColumns = """
        s.id, s.seq, e.namespace, e.name AS environment, s.status, s.kind, s.comment, s.package_version,
        unix_ms(s.created_at) AS created_ms, unix_ms(s.finished_at) AS finished_ms, unix_ms(s.expires_at) AS expires_ms,
        s.database_bytes, s.files_bytes, s.file_count, s.postgres_version, s.error, s.job_id, s.dump_sha256,
        s.files_deleted_during_backup, s.files_changed_during_backup, s.warning,
        unix_ms(s.verified_at) AS verified_ms, s.verify_job_id, s.verify_problem_count, s.verify_problems
        """

    static func backup(_ row: PostgresRow) -> Backup {
        .with {
            $0.id = row.string("id"); $0.namespace = row.string("namespace"); $0.environment = row.string("environment")
            $0.status = .catalogValue(row.string("status")); $0.kind = .catalogValue(row.string("kind"))
            $0.comment = row.string("comment"); $0.packageVersion = row.string("package_version")
            $0.createdUnixMS = row.int64("created_ms"); $0.finishedUnixMS = row.int64("finished_ms")
            $0.expiresUnixMS = row.int64("expires_ms"); $0.databaseBytes = row.uint64("database_bytes")
            $0.filesBytes = row.uint64("files_bytes"); $0.sizeBytes = $0.databaseBytes + $0.filesBytes
            $0.fileCount = row.uint64("file_count"); $0.postgresVersion = row.string("postgres_version")
            $0.error = row.string("error"); $0.jobID = row.string("job_id"); $0.dumpSHA256 = row.string("dump_sha256")
            $0.filesDeletedDuringBackup = row.uint64("files_deleted_during_backup")
            $0.filesChangedDuringBackup = row.uint64("files_changed_during_backup"); $0.warning = row.string("warning")
            $0.verification = verification(row)
        }
    }

    /// Catalogs a new PROCESSING backup and queues the job that makes it.
    /// Refused, naming the running job, while the environment has another.
    public func createBackup(namespace: String, environment: String, kind: BackupKind, comment: String, actor: String) async throws -> (Backup, Job) {
        do {
            return try await pool.callTransaction { connection in
                try Self.insertBackup(connection, environmentID: try Self.environmentID(connection, namespace, environment),
                                      namespace: namespace, environment: environment, kind: kind.description, comment: comment,
                                      actor: actor)
            }
        } catch let error as PostgresError where error.isUniqueViolation {
            throw try await busyError(namespace: namespace, environment: environment)
        }
    }

    /// Inserts a PROCESSING backup and its queued job; an automatic one
    /// names its `night`, and is created at the scheduler's `createdAt`.
    static func insertBackup(_ connection: PostgresConnection, environmentID: Int64, namespace: String, environment: String,
                             kind: String, comment: String, actor: String, night: String? = nil,
                             createdAt: Date? = nil) throws -> (Backup, Job) {
        let snapshotID = UUID().uuidString.lowercased()
        let jobID = try queueJob(connection, .backup, for: .environment(id: environmentID, backup: snapshotID), actor: actor)
        try connection.query("""
            INSERT INTO snapshots (id, environment_id, status, kind, comment, package_version, job_id, night, created_at)
            SELECT $1, id, '\(BackupStatus.processing)', $3, $4, package_version, $5, $6::date,
                   COALESCE(to_timestamp($7::double precision / 1000), now())
            FROM environments WHERE id = $2
            """, snapshotID, environmentID, kind, comment, jobID, night,
            createdAt.map { Int64(($0.timeIntervalSince1970 * 1000).rounded()) })
        try recordActivity(connection, namespace, environment, action: "backup", outcome: "STARTED",
                           actor: actor, snapshotID: snapshotID, detail: comment)
        return (try loadBackup(connection, snapshotID), try loadJob(connection, jobID))
    }

    /// The error for an environment that already runs a job, naming that job.
    func busyError(namespace: String, environment: String) async throws -> BackupError {
        let running = try await pool.withConnection { connection in
            try connection.query("""
                SELECT j.id, j.kind, j.status FROM jobs j JOIN environments e ON e.id = j.environment_id
                WHERE e.namespace = $1 AND e.name = $2 AND j.status IN \(JobStatus.active.sql)
                  AND j.kind IN \(JobKind.allCases.filter(\.usesEnvironment).sql)
                """, namespace, environment).first
        }
        let what = running.map { "\($0.string("kind")) job \($0.string("id")) is \($0.string("status"))" } ?? "another job is running"
        return .failedPrecondition("environment \(namespace)/\(environment) runs one job at a time: \(what)")
    }

    /// Backups matching a filter, newest first.
    public func listBackups(_ filter: BackupFilter, pageSize: UInt32, pageToken: String) async throws -> Page<Backup> {
        let (limit, after) = try pageBounds(size: pageSize, token: pageToken)
        return try await pool.withConnection { connection in
            // The environments' ids go in as values, so the planner sees how many backups each holds and
            // reads an environment with a few beside one with 100,000 from its own index (joined, 18-24 ms).
            let environments = try connection.query("SELECT id FROM environments WHERE namespace = $1 AND ($2 = '' OR name = $2)",
                                                    filter.namespace, filter.environment).map { $0.int64("id") }
            let rows = try connection.query("""
                SELECT \(Self.backupColumns) FROM snapshots s JOIN environments e ON e.id = s.environment_id
                WHERE s.environment_id = ANY($1::bigint[]) AND ($2 = '' OR s.kind = $2)
                  AND ($3 = '' OR s.status = $3) AND ($4::bigint IS NULL OR s.seq < $4)
                ORDER BY s.seq DESC LIMIT $5
                """, "{" + environments.map(String.init).joined(separator: ",") + "}",
                filter.kind == .unspecified ? "" : filter.kind.description,
                filter.status == .unspecified ? "" : filter.status.description, after, limit + 1)
            return Page(rows, limit: limit, cursor: "seq", item: Self.backup)
        }
    }

    public func backup(id: String) async throws -> Backup {
        let id = try parseID(id, "backup id")
        return try await pool.withConnection { try Self.loadBackup($0, id) }
    }

    /// The storage keys and blob hashes of a backup's file documents.
    public func backupFiles(id: String) async throws -> [(key: String, hash: String, size: UInt64)] {
        let id = try parseID(id, "backup id")
        return try await pool.withConnection { connection in
            try connection.query("SELECT storage_key, sha256, size FROM snapshot_files WHERE snapshot_id = $1 ORDER BY storage_key", id)
                .map { (key: $0.string("storage_key"), hash: $0.string("sha256"), size: $0.uint64("size")) }
        }
    }

    public func updateBackupComment(id: String, comment: String, actor: String) async throws -> Backup {
        let id = try parseID(id, "backup id")
        return try await pool.callTransaction { connection in
            let backup = try Self.loadBackup(connection, id)
            try connection.query("UPDATE snapshots SET comment = $2 WHERE id = $1", id, comment)
            try Self.recordActivity(connection, backup.namespace, backup.environment, action: "comment", outcome: "FINISHED",
                                    actor: actor, snapshotID: id, detail: comment)
            return try Self.loadBackup(connection, id)
        }
    }

    /// Removes a backup from the catalog. Its blobs are removed by the next
    /// garbage collection, unless another backup shares them.
    public func deleteBackup(id: String, actor: String) async throws -> Backup {
        let id = try parseID(id, "backup id")
        return try await pool.callTransaction { connection in
            let backup = try Self.loadBackup(connection, id, lock: true)
            guard backup.status != .processing else {
                throw BackupError.failedPrecondition("backup \(id) is still processing (job \(backup.jobID)); wait for it to end")
            }
            try Self.refuseWhileUsed(connection, "backup \(id)", usedBy: "j.snapshot_id = $1::uuid", id)
            try connection.query("DELETE FROM snapshots WHERE id = $1", id)
            try Self.recordActivity(connection, backup.namespace, backup.environment, action: "delete", outcome: "FINISHED",
                                    actor: actor, snapshotID: id)
            return backup
        }
    }

    /// Refuses to go on while a queued or running job (a restore, say) reads
    /// a backup that `condition` on `jobs j` and `snapshots s` selects: the
    /// job pinned that backup's content when it was created. The caller
    /// holds the backups' rows locked, so no such job can be queued meanwhile.
    static func refuseWhileUsed(_ connection: PostgresConnection, _ what: String, usedBy condition: String, _ parameter: String) throws {
        guard let job = try connection.query("""
            SELECT j.id, j.kind, e.namespace || '/' || e.name AS target FROM jobs j
            JOIN snapshots s ON s.id = j.snapshot_id JOIN environments e ON e.id = j.environment_id
            WHERE j.status IN \(JobStatus.active.sql) AND j.kind <> 'backup' AND \(condition)
            LIMIT 1
            """, parameter).first else { return }
        throw BackupError.failedPrecondition(
            "\(what) is in use by \(job.string("kind")) job \(job.string("id")) of \(job.string("target")); "
                + "wait for it to end or cancel it")
    }

    /// How a backup's dump is stored: its chunks, or one blob for a dump
    /// stored whole (before dumps were chunked).
    public func dump(ofBackup id: String) async throws -> StoredDump {
        let id = try parseID(id, "backup id")
        return try await pool.withConnection { try Self.storedDump($0, snapshotID: id) }
    }

    static func storedDump(_ connection: PostgresConnection, snapshotID: String) throws -> StoredDump {
        guard let snapshot = try connection.query("SELECT dump_sha256, database_bytes FROM snapshots WHERE id = $1", snapshotID).first,
              let sha256 = ContentHash(hex: snapshot.string("dump_sha256")) else {
            throw BackupError.failedPrecondition("backup \(snapshotID) has no database dump")
        }
        let chunks = try connection.query("""
            SELECT c.sha256, c.size, c.blob_sha256, c.blob, c.compressed, b.size AS blob_size
            FROM dump_chunks c JOIN blobs b ON b.sha256 = c.blob
            WHERE c.snapshot_id = $1 ORDER BY c.position
            """, snapshotID).compactMap(dumpChunk)
        guard !chunks.isEmpty else { return .blob(StoredBlob(hash: sha256, size: snapshot.uint64("database_bytes"))) }
        return .chunks(sha256: sha256, size: snapshot.uint64("database_bytes"), chunks)
    }

    /// The id of the latest finished backup of environment $2 of namespace $1: what its next backup builds on.
    private static let latestFinishedBackup = """
        (SELECT s.id FROM snapshots s JOIN environments e ON e.id = s.environment_id
         WHERE e.namespace = $1 AND e.name = $2 AND s.status = '\(BackupStatus.finished)' ORDER BY s.seq DESC LIMIT 1)
        """

    /// The chunks of the environment's latest finished backup, by content
    /// hash: what its next dump need not store again.
    public func knownDumpChunks(namespace: String, environment: String) async throws -> [ContentHash: DumpChunk] {
        try await pool.withConnection { connection in
            let rows = try connection.query("""
                SELECT DISTINCT c.sha256, c.size, c.blob_sha256, c.blob, c.compressed, b.size AS blob_size
                FROM dump_chunks c JOIN blobs b ON b.sha256 = c.blob
                WHERE c.snapshot_id = \(Self.latestFinishedBackup)
                """, namespace, environment)
            return Dictionary(rows.compactMap(Self.dumpChunk).map { ($0.sha256, $0) }, uniquingKeysWith: { first, _ in first })
        }
    }

    /// The distinct contents of the documents of the environment's latest
    /// finished backup: what its next backup most likely reuses.
    public func knownFiles(namespace: String, environment: String) async throws -> [StoredBlob] {
        try await pool.withConnection { connection in
            try connection.query("""
                SELECT DISTINCT f.sha256, f.blob, b.size FROM snapshot_files f JOIN blobs b ON b.sha256 = f.blob
                WHERE f.snapshot_id = \(Self.latestFinishedBackup)
                """, namespace, environment).compactMap { row in
                guard let hash = ContentHash(hex: row.string("sha256")), let name = ContentHash(hex: row.string("blob")) else { return nil }
                return StoredBlob(hash: hash, size: row.uint64("size"), name: name)
            }
        }
    }

    private static func dumpChunk(_ row: PostgresRow) -> DumpChunk? {
        guard let sha256 = ContentHash(hex: row.string("sha256")), let blob = ContentHash(hex: row.string("blob_sha256")),
              let name = ContentHash(hex: row.string("blob")) else { return nil }
        return DumpChunk(sha256: sha256, size: row.uint64("size"), blob: StoredBlob(hash: blob, size: row.uint64("blob_size"), name: name),
                         compressed: row.bool("compressed"))
    }

    /// A backup by id; `lock` locks its row (`shared`: only against deletion and change) until the transaction ends.
    static func loadBackup(_ connection: PostgresConnection, _ id: String, lock: Bool = false, shared: Bool = false) throws -> Backup {
        guard let row = try connection.query("""
            SELECT \(backupColumns) FROM snapshots s JOIN environments e ON e.id = s.environment_id WHERE s.id = $1
            """ + (lock ? (shared ? " FOR SHARE OF s" : " FOR UPDATE OF s") : ""), id).first else {
            throw BackupError.notFound("backup \(id) does not exist")
        }
        return backup(row)
    }
}
