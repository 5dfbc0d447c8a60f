import BackupRules
import BackupPostgres
import BackupWire
import Foundation

/// A download as the catalog keeps it: one request for a backup's archive,
/// with the URL expiry that request was given, and the archive it shares
/// with every other request for the same backup and kind.
public struct DownloadRecord: Sendable, Equatable {
    public enum State: String, Sendable {
        case preparing, ready, failed
    }

    public let id: String
    public let archiveID: String
    public let backupID: String
    public let namespace: String
    public let databaseOnly: Bool
    public let jobID: String
    public let state: State
    /// While preparing, the bytes reserved in the archive cache; once ready, the archive's size.
    public let size: UInt64
    /// Hex SHA-256 of the archive, once ready.
    public let sha256: String
    /// The name the store keeps the archive under, once ready (`StoredBlob.name`).
    public let blob: String
    public let error: String
    /// When the URL stops working, Unix ms; 0 until the archive is ready.
    public let expiresUnixMS: Int64
    /// When the archive became ready, Unix ms (its Last-Modified).
    public let readyUnixMS: Int64
    /// When the backup was made, Unix ms: part of the archive's file name.
    public let backupCreatedUnixMS: Int64
}

/// What an archive job needs to write its archive.
public struct ArchiveWork: Sendable {
    public let archiveID: String
    /// The backup's namespace, whose content the archive is.
    public let namespace: String
    public let databaseOnly: Bool
    /// Bytes reserved in the archive cache: what the archive may grow to.
    public let reservedBytes: UInt64
    public let archive: SnapshotArchive
}

/// The room a new archive needs on the cache's disk, checked before the
/// request for it is recorded: once recorded, its job may be taken up at
/// once by any process.
public struct ArchiveRoom: Sendable {
    /// What the new archive may grow to in the cache.
    public let archiveBytes: UInt64
    /// What the archives being prepared already reserve there.
    public let othersPreparing: UInt64
}

/// How much an archive of a backup is allowed to take in the cache: its
/// content, plus gzip's worst case (stored blocks of incompressible
/// content), and per member what stored blocks may leave uncompressed: a
/// pax header, a tar header and padding (2,047 bytes for a 200-character
/// key) and its `sha256:` line in `.metadata` (under 300).
public func archiveReservation(databaseBytes: UInt64, filesBytes: UInt64, fileCount: UInt64, databaseOnly: Bool) -> UInt64 {
    if databaseOnly { return databaseBytes }
    let content = databaseBytes + filesBytes
    return content + content / 500 + 2_400 * (fileCount + 2) + 65_536
}

extension Catalog {
    static let downloadColumns = """
        d.id, a.id AS archive_id, a.snapshot_id, e.namespace, a.database_only, a.job_id, a.state, a.size, a.sha256,
        a.blob, a.error,
        coalesce(unix_ms(d.expires_at), 0) AS expires_ms, coalesce(unix_ms(a.ready_at), 0) AS ready_ms,
        unix_ms(s.created_at) AS backup_created_ms
        """

    static let downloadJoins = """
        downloads d JOIN archives a ON a.id = d.archive_id JOIN snapshots s ON s.id = a.snapshot_id
        JOIN environments e ON e.id = s.environment_id
        """

    static func download(_ row: PostgresRow) -> DownloadRecord {
        DownloadRecord(id: row.string("id"), archiveID: row.string("archive_id"), backupID: row.string("snapshot_id"),
                       namespace: row.string("namespace"), databaseOnly: row.bool("database_only"), jobID: row.string("job_id"),
                       state: DownloadRecord.State(rawValue: row.string("state")) ?? .failed, size: row.uint64("size"),
                       sha256: row.string("sha256"), blob: row.string("blob"), error: row.string("error"), expiresUnixMS: row.int64("expires_ms"),
                       readyUnixMS: row.int64("ready_ms"), backupCreatedUnixMS: row.int64("backup_created_ms"))
    }

    static func loadDownload(_ connection: PostgresConnection, _ id: String) throws -> DownloadRecord {
        guard let row = try connection.query("SELECT \(downloadColumns) FROM \(downloadJoins) WHERE d.id = $1", id).first else {
            throw BackupError.notFound("download \(id) does not exist")
        }
        return download(row)
    }

    public func download(id: String) async throws -> DownloadRecord {
        let id = try parseID(id, "download id")
        return try await pool.withConnection(idempotent: true) { try Self.loadDownload($0, id) }
    }

    /// The room on the cache's disk that a request for this backup's archive
    /// would reserve, to check before `requestDownload`; nil when the
    /// request would share an archive that is ready or being prepared.
    public func archiveRoomNeeded(backupID: String, databaseOnly: Bool) async throws -> ArchiveRoom? {
        let backupID = try parseID(backupID, "backup id")
        return try await pool.withConnection(idempotent: true) { connection in
            guard try Self.sharedArchive(connection, backupID, databaseOnly) == nil else { return nil }
            let backup = try Self.loadBackup(connection, backupID)
            return ArchiveRoom(archiveBytes: Self.archiveReservation(of: backup, databaseOnly: databaseOnly),
                               othersPreparing: try Self.archiveCacheUse(connection, namespace: backup.namespace).preparing)
        }
    }

    /// Records a request for a backup's archive. A ready (or preparing)
    /// archive of the same backup and kind is shared, with a URL lifetime of
    /// this request's own; otherwise a new archive is reserved in the cache
    /// and a job queued to prepare it (`queuedJob`). Refused with
    /// RESOURCE_EXHAUSTED when the cache (`cacheBytes` for all archives of
    /// every process on this catalog, `namespaceShare` of it for one
    /// namespace's) has no room for it. The cache's disk is the caller's to
    /// check first (`archiveRoomNeeded`); the job checks it again.
    public func requestDownload(backupID: String, databaseOnly: Bool, actor: String, urlLifetime: Duration, cacheBytes: UInt64,
                                namespaceShare: NamespaceShare) async throws -> (record: DownloadRecord, queuedJob: Bool) {
        let backupID = try parseID(backupID, "backup id")
        let downloadID = UUID().uuidString.lowercased()
        let lifetimeSeconds = urlLifetime.components.seconds
        return try await pool.callTransaction { connection in
            // Reservations are counted and made one request at a time.
            try connection.query("SELECT pg_advisory_xact_lock(\(AdvisoryLock.archives))")
            // Shared: a deletion of the backup waits for this request, then finds its job.
            let backup = try Self.loadBackup(connection, backupID, lock: true, shared: true)
            guard backup.status == .finished else {
                throw BackupError.failedPrecondition("backup \(backupID) is \(backup.status); only a finished backup can be downloaded")
            }
            let archiveID: String
            var queuedJob = false
            if let existing = try Self.sharedArchive(connection, backupID, databaseOnly) {
                archiveID = existing
            } else {
                archiveID = UUID().uuidString.lowercased()
                let reservation = Self.archiveReservation(of: backup, databaseOnly: databaseOnly)
                let used = try Self.archiveCacheUse(connection, namespace: backup.namespace)
                let namespaceBytes = namespaceShare.of(cacheBytes)
                // What other namespaces hold is theirs to know: a refusal for the whole cache says only that it is full.
                guard used.namespace + reservation <= namespaceBytes else {
                    throw BackupError.resourceExhausted(
                        "namespace \(backup.namespace)'s archives take \(used.namespace) of the \(namespaceBytes) bytes of the "
                            + "archive cache it may use, and this archive needs up to \(reservation); try again when its earlier "
                            + "downloads have expired")
                }
                guard used.total + reservation <= cacheBytes else {
                    throw BackupError.resourceExhausted(
                        "the archive cache is full, and this archive needs up to \(reservation) bytes; try again later")
                }
                let jobID = try Self.queueJob(connection, .archive, for: .backup(backupID), actor: actor,
                                              bytesTotal: backup.databaseBytes + (databaseOnly ? 0 : backup.filesBytes))
                try connection.query("""
                    INSERT INTO archives (id, snapshot_id, database_only, job_id, state, size) VALUES ($1, $2, $3, $4, '\(DownloadRecord.State.preparing)', $5)
                    """, archiveID, backupID, databaseOnly, jobID, reservation)
                queuedJob = true
            }
            try connection.query("""
                INSERT INTO downloads (id, archive_id, actor, lifetime, expires_at)
                SELECT $1, a.id, $3, make_interval(secs => $4), CASE WHEN a.state = '\(DownloadRecord.State.ready)' THEN now() + make_interval(secs => $4) END
                FROM archives a WHERE a.id = $2
                """, downloadID, archiveID, actor, lifetimeSeconds)
            try Self.recordActivity(connection, backup.namespace, backup.environment, action: "download",
                                    outcome: "REQUESTED", actor: actor, snapshotID: backupID,
                                    detail: (databaseOnly ? "database only" : "files and database")
                                        + (queuedJob ? "" : ", sharing the archive already prepared"))
            return (try Self.loadDownload(connection, downloadID), queuedJob)
        }
    }

    /// The archive of this backup and kind that is ready or being prepared, if any.
    private static func sharedArchive(_ connection: PostgresConnection, _ backupID: String, _ databaseOnly: Bool) throws -> String? {
        try connection.query("""
            SELECT id FROM archives WHERE snapshot_id = $1 AND database_only = $2 AND state <> '\(DownloadRecord.State.failed)'
            """, backupID, databaseOnly).first?.string("id")
    }

    private static func archiveReservation(of backup: Backup, databaseOnly: Bool) -> UInt64 {
        BackupCatalog.archiveReservation(databaseBytes: backup.databaseBytes, filesBytes: backup.filesBytes,
                                         fileCount: backup.fileCount, databaseOnly: databaseOnly)
    }

    /// What the archives in the cache take: all of them, one namespace's, and those being prepared.
    private static func archiveCacheUse(_ connection: PostgresConnection, namespace: String) throws
        -> (total: UInt64, namespace: UInt64, preparing: UInt64) {
        let used = try connection.query("""
            SELECT coalesce(sum(a.size), 0) AS total,
                   coalesce(sum(a.size) FILTER (WHERE e.namespace = $1), 0) AS namespace,
                   coalesce(sum(a.size) FILTER (WHERE a.state = '\(DownloadRecord.State.preparing)'), 0) AS preparing
            FROM archives a JOIN snapshots s ON s.id = a.snapshot_id JOIN environments e ON e.id = s.environment_id
            WHERE a.state <> '\(DownloadRecord.State.failed)'
            """, namespace)[0]
        return (used.uint64("total"), used.uint64("namespace"), used.uint64("preparing"))
    }

    /// What the archive job `jobID` is to write: its archive's record and
    /// the backup's content and metadata.
    public func archiveWork(jobID: String) async throws -> ArchiveWork {
        try await pool.withConnection(idempotent: true) { connection in
            guard let row = try connection.query("""
                SELECT a.id, a.database_only, a.size, s.id AS snapshot_id, s.dump_sha256, s.database_bytes, s.files_bytes,
                       s.file_count, s.package_version, s.postgres_version, s.source_database_bytes,
                       unix_ms(s.created_at) AS created_ms,
                       to_char(s.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS created_at,
                       extract(epoch FROM s.finished_at - s.created_at)::bigint AS duration, e.namespace
                FROM archives a JOIN snapshots s ON s.id = a.snapshot_id JOIN environments e ON e.id = s.environment_id
                WHERE a.job_id = $1
                """, jobID).first else {
                throw BackupError.notFound("archive job \(jobID) has no archive to prepare (its backup was deleted)")
            }
            let files = try connection.query("SELECT storage_key, sha256, size FROM snapshot_files WHERE snapshot_id = $1 ORDER BY storage_key",
                                             row.string("snapshot_id"))
                .compactMap { file in
                    ContentHash(hex: file.string("sha256")).map { (key: file.string("storage_key"), blob: StoredBlob(hash: $0, size: file.uint64("size"))) }
                }
            let metadata = [
                "snapshotId": row.string("snapshot_id"), "createdAt": row.string("created_at"),
                "modelVersion": row.string("package_version"), "postgresVersion": row.string("postgres_version"),
                "duration": row.string("duration"), "dumpSize": row.string("database_bytes"),
                "databaseSize": row.string("source_database_bytes"), "filesSize": row.string("files_bytes"),
                "fileCount": row.string("file_count"),
            ]
            return ArchiveWork(
                archiveID: row.string("id"), namespace: row.string("namespace"), databaseOnly: row.bool("database_only"), reservedBytes: row.uint64("size"),
                archive: SnapshotArchive(metadata: metadata, dump: try Self.storedDump(connection, snapshotID: row.string("snapshot_id")),
                                         files: files, modified: row.int64("created_ms") / 1000))
        }
    }

    /// Ends an archive job: its archive is ready, and every download waiting
    /// for it gets its URL's expiry from now.
    public func finishArchive(jobID: String, owner: String, blob: StoredBlob) async throws {
        let (size, sha256) = (blob.size, blob.hash)
        try await pool.callTransaction(idempotent: true) { connection in
            guard let archive = try connection.query("""
                UPDATE archives SET state = '\(DownloadRecord.State.ready)', size = $2, sha256 = $3, blob = $4, ready_at = now()
                WHERE job_id = $1 AND state = '\(DownloadRecord.State.preparing)'
                RETURNING id
                """, jobID, size, sha256.hex, blob.name.hex).first else {
                throw BackupError.failedPrecondition("archive job \(jobID) has no archive being prepared")
            }
            try connection.query("""
                UPDATE downloads SET expires_at = now() + lifetime WHERE archive_id = $1 AND expires_at IS NULL
                """, archive.string("id"))
            try Self.finishJob(connection, id: jobID, owner: owner, detail: "\(size) bytes, sha256 \(sha256.hex)")
        }
    }

    /// The ready archives and their blobs, for finding any the store lost.
    public func readyArchives() async throws -> [(id: String, blob: ContentHash)] {
        try await pool.withConnection(idempotent: true) { connection in
            try connection.query("SELECT id, blob FROM archives WHERE state = '\(DownloadRecord.State.ready)'").compactMap { row in
                ContentHash(hex: row.string("blob")).map { (row.string("id"), $0) }
            }
        }
    }

    /// Removes the archives no one can fetch any more (every URL expired,
    /// preparing failed over a day ago, or ready but `lost` by the store;
    /// their blobs are then unreferenced, for collection) and returns the ids
    /// of those being prepared: what the archive cache may keep half-written.
    public func expireArchives(lost: Set<String>) async throws -> Set<String> {
        try await pool.callTransaction(idempotent: true) { connection in
            // The downloads of the archives that go are remembered (their rows go with them), so that a link of
            // one tried later is still recorded in its namespace; what was remembered 90 days ago is forgotten.
            try connection.query("""
                WITH gone AS (
                    DELETE FROM archives a
                    WHERE (a.state = '\(DownloadRecord.State.ready)' AND (a.id::text = ANY($1::text[]) OR NOT EXISTS (
                              SELECT 1 FROM downloads d WHERE d.archive_id = a.id AND (d.expires_at IS NULL OR d.expires_at > now()))))
                       OR (a.state = '\(DownloadRecord.State.failed)' AND a.created_at < now() - interval '1 day')
                    RETURNING a.id, a.snapshot_id)
                INSERT INTO expired_downloads (id, namespace, environment, snapshot_id, actor)
                SELECT d.id, e.namespace, e.name, s.id, d.actor
                FROM gone JOIN downloads d ON d.archive_id = gone.id JOIN snapshots s ON s.id = gone.snapshot_id
                JOIN environments e ON e.id = s.environment_id
                ON CONFLICT DO NOTHING
                """, Array(lost))
            try connection.query("DELETE FROM expired_downloads WHERE expired_at < now() - interval '\(Self.expiredDownloadsKept)'")
            return Set(try connection.query("SELECT id FROM archives WHERE state = '\(DownloadRecord.State.preparing)'").map { $0.string("id") })
        }
    }
}

/// One request for a download link that named a download the catalog
/// knows (its signature held): what the namespace's activity records of it.
public struct DownloadFetch: Sendable {
    public let downloadID: String
    /// The client's address.
    public let peer: String
    public let requestID: String
    /// GET or HEAD.
    public let method: String
    /// The `Range` the client asked for, empty for the whole archive.
    public let range: String
    /// The HTTP status answered (0: the client left before the answer began).
    public let status: Int
    public let bytesSent: UInt64

    public init(downloadID: String, peer: String, requestID: String, method: String, range: String, status: Int, bytesSent: UInt64) {
        (self.downloadID, self.peer, self.requestID, self.method) = (downloadID, peer, requestID, method)
        (self.range, self.status, self.bytesSent) = (range, status, bytesSent)
    }
}

extension Catalog {
    /// How many fetches of one download an hour its environment's activity
    /// records; the access log has every one. A link's holder cannot grow
    /// the catalog by fetching a byte at a time.
    public static let fetchesRecordedPerHour = 200

    /// Records a fetch of a download link as activity of the download's
    /// environment, by whoever asked for the link (`FETCHED` with a 2xx
    /// answer, `REFUSED` otherwise), naming the peer, the range, the status
    /// and the bytes sent. Nothing is recorded for a download that is gone.
    public func recordDownloadFetch(_ fetch: DownloadFetch, perHour limit: Int = Catalog.fetchesRecordedPerHour) async throws {
        let id = try parseID(fetch.downloadID, "download id")
        let outcome = (200..<300).contains(fetch.status) ? "FETCHED" : "REFUSED"
        let range = fetch.range.isEmpty ? "the whole archive" : String(fetch.range.prefix(100))
        let detail = "fetch of download \(id) from \(fetch.peer): \(fetch.method) \(range), HTTP \(fetch.status), "
            + "\(fetch.bytesSent) bytes sent (request \(fetch.requestID))"
        try await pool.withConnection { connection in
            try connection.query("""
                INSERT INTO activity (namespace, environment, action, outcome, actor, snapshot_id, detail)
                SELECT f.namespace, f.environment, 'download', $2, f.actor, f.snapshot_id, $3
                FROM (\(Self.downloadOrExpired)) f
                WHERE (SELECT count(*) FROM activity x
                       WHERE x.namespace = f.namespace AND x.environment = f.environment AND x.action = 'download'
                         AND x.at > now() - interval '1 hour' AND x.detail LIKE $4) < $5
                """, id, outcome, detail, "fetch of download \(id) %", limit)
        }
    }

    /// The namespace of download `id`, known or remembered after its archive went; nil for neither.
    public func namespaceOfDownload(id: String) async throws -> String? {
        let id = try parseID(id, "download id")
        return try await pool.withConnection(idempotent: true) { connection in
            try connection.query("SELECT namespace FROM (\(Self.downloadOrExpired)) f", id).first?.string("namespace")
        }
    }

    /// Download `$1`'s namespace, environment, requester and backup (if it still exists), from its row or,
    /// once its archive went, from what `expireArchives` remembered.
    private static let downloadOrExpired = """
        SELECT e.namespace, e.name AS environment, d.actor, s.id AS snapshot_id FROM \(downloadJoins) WHERE d.id = $1
        UNION ALL
        SELECT t.namespace, t.environment, t.actor, (SELECT s.id FROM snapshots s WHERE s.id = t.snapshot_id)
        FROM expired_downloads t WHERE t.id = $1
        LIMIT 1
        """

    /// How long a download is remembered after its archive went.
    static let expiredDownloadsKept = "90 days"
}
