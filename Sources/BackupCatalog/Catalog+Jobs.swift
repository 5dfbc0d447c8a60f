import BackupRules
import BackupPostgres
import BackupWire
import Foundation

/// A job this process now runs under a lease, with what it needs to know.
public struct ClaimedJob: Sendable {
    public let job: Job
    public let environment: Environment
    public let actor: String
    /// The request id of the call that queued it; empty for the scheduler's.
    public let requestID: String
}

/// What a finished backup holds: its dump and its file documents, all stored.
public struct BackupManifest: Sendable {
    public var dump: StoredDump
    public var files: [(key: String, blob: StoredBlob)]
    public var postgresVersion: String
    /// pg_database_size of the app database at the snapshot.
    public var databaseSize: UInt64
    /// Keys listed at the snapshot whose files went with their rows before they were read.
    public var deletedDuringBackup: [String] = []
    /// Keys whose files were modified after the snapshot, stored as read.
    public var changedDuringBackup: [String] = []

    public init(dump: StoredDump, files: [(key: String, blob: StoredBlob)], postgresVersion: String, databaseSize: UInt64) {
        self.dump = dump
        self.files = files
        self.postgresVersion = postgresVersion
        self.databaseSize = databaseSize
    }

    /// What a user of the backup should know about files that moved under
    /// it, with the first few keys of each kind; empty when nothing did.
    public var warning: String {
        func listed(_ keys: [String]) -> String {
            keys.prefix(10).joined(separator: ", ") + (keys.count > 10 ? ", and \(keys.count - 10) more" : "")
        }
        var parts: [String] = []
        if !deletedDuringBackup.isEmpty {
            parts.append("\(deletedDuringBackup.count) file documents were deleted with their rows while the backup ran "
                         + "and are not in it: \(listed(deletedDuringBackup.sorted()))")
        }
        if !changedDuringBackup.isEmpty {
            parts.append("\(changedDuringBackup.count) file documents were modified after the snapshot and are stored "
                         + "as they were read: \(listed(changedDuringBackup.sorted()))")
        }
        return parts.joined(separator: "; ")
    }
}

extension Catalog {
    static let jobColumns = """
        j.id, j.kind, j.status, e.namespace, e.name AS environment, j.snapshot_id, j.bytes_done, j.bytes_total,
        j.phase, j.error, j.actor, unix_ms(j.created_at) AS created_ms, unix_ms(j.started_at) AS started_ms,
        unix_ms(j.finished_at) AS finished_ms
        """

    static func job(_ row: PostgresRow) -> Job {
        .with {
            $0.id = row.string("id"); $0.kind = .catalogValue(row.string("kind")); $0.status = .catalogValue(row.string("status"))
            $0.namespace = row.string("namespace"); $0.environment = row.string("environment")
            $0.backupID = row.string("snapshot_id"); $0.bytesDone = row.uint64("bytes_done")
            $0.bytesTotal = row.uint64("bytes_total"); $0.phase = row.string("phase"); $0.error = row.string("error")
            $0.createdUnixMS = row.int64("created_ms"); $0.startedUnixMS = row.int64("started_ms")
            $0.finishedUnixMS = row.int64("finished_ms")
        }
    }

    static func loadJob(_ connection: PostgresConnection, _ id: String, lock: Bool = false) throws -> Job {
        guard let row = try connection.query(
            "SELECT \(jobColumns) FROM jobs j JOIN environments e ON e.id = j.environment_id WHERE j.id = $1"
                + (lock ? " FOR UPDATE OF j" : ""), id
        ).first else {
            throw BackupError.notFound("job \(id) does not exist")
        }
        return job(row)
    }

    /// Ids of the jobs queued or running in any process.
    public func activeJobIDs() async throws -> Set<String> {
        try await pool.withConnection(idempotent: true) { connection in
            Set(try connection.query("SELECT id FROM jobs WHERE status IN \(JobStatus.active.sql)").map { $0.string("id") })
        }
    }

    /// Hears every change of a job a watcher would see (status, phase,
    /// progress, error), as it commits, from any process on this catalog:
    /// `changed` gets the job's id. One connection of its own listens; when
    /// it is lost, another is opened after `retryAfter`. Runs until cancelled.
    public func listenForJobChanges(retryAfter: Duration = .seconds(1), _ changed: @escaping @Sendable (String) -> Void) async {
        while !Task.isCancelled {
            do {
                let handle = try await pool.dedicatedConnection()
                try await handle.run { try $0.query("LISTEN job_changed") }
                // Cancelling (a shutdown) ends the wait at once rather than at its second's end.
                let interruption = try NotificationWaitInterruption()
                while !Task.isCancelled {
                    let notifications = try await withTaskCancellationHandler {
                        try await handle.run { try $0.notifications(waitingUpTo: .seconds(1), interruptedBy: interruption) }
                    } onCancel: {
                        interruption.interrupt()
                    }
                    for notification in notifications where notification.channel == "job_changed" { changed(notification.payload) }
                }
            } catch {
                try? await Task.sleep(for: retryAfter)
            }
        }
    }

    public func job(id: String) async throws -> Job {
        let id = try parseID(id, "job id")
        return try await pool.withConnection(idempotent: true) { try Self.loadJob($0, id) }
    }

    /// Takes a queued job, if any, under a lease held by `owner`. Namespaces
    /// take turns: the namespace served least recently (none in a day comes
    /// first of all) goes first, oldest job
    /// first within it, and a namespace already running `perNamespace` jobs
    /// (in any process) waits. Claims are serialized by an advisory lock, so
    /// processes sharing the catalog keep that limit together.
    public func claimNextJob(owner: String, leaseSeconds: Int, perNamespace: Int) async throws -> ClaimedJob? {
        try await pool.callTransaction { connection in
            try connection.query("SELECT pg_advisory_xact_lock(\(AdvisoryLock.claims))")
            guard let claimed = try connection.query("""
                WITH served AS (
                    SELECT e.namespace, count(*) FILTER (WHERE j.status = '\(JobStatus.running)') AS running, max(j.started_at) AS last_started
                    FROM jobs j JOIN environments e ON e.id = j.environment_id
                    WHERE j.status = '\(JobStatus.running)' OR j.started_at > now() - interval '1 day'
                    GROUP BY e.namespace)
                UPDATE jobs SET status = '\(JobStatus.running)', \(LeaseColumns.job.grant(holder: 1, seconds: 2)),
                                started_at = now(), phase = 'starting'
                WHERE id = (SELECT j.id FROM jobs j JOIN environments e ON e.id = j.environment_id
                            LEFT JOIN served s ON s.namespace = e.namespace
                            WHERE j.status IN \(JobStatus.running.predecessors.sql) AND coalesce(s.running, 0) < $3
                            ORDER BY s.last_started NULLS FIRST, j.created_at
                            FOR UPDATE OF j SKIP LOCKED LIMIT 1)
                RETURNING id, environment_id, actor, request_id
                """, owner, leaseSeconds, perNamespace).first else { return nil }
            return try Self.claimedJob(connection, claimed)
        }
    }

    /// A job just claimed (a row of `id, environment_id, actor, request_id`), with its environment.
    static func claimedJob(_ connection: PostgresConnection, _ claimed: PostgresRow) throws -> ClaimedJob {
        let environment = try connection.query(
            "SELECT \(environmentColumns) FROM environments e WHERE e.id = $1", claimed.int64("environment_id"))[0]
        return ClaimedJob(job: try loadJob(connection, claimed.string("id")),
                          environment: Self.environment(environment), actor: claimed.string("actor"),
                          requestID: claimed.string("request_id"))
    }

    /// Extends a lease; false when this owner no longer holds the job.
    /// Extends `owner`'s lease of a running job; nil when it holds the
    /// lease no more. Answers too whether a cancel was asked for: the safety
    /// net for a change notification lost with its connection.
    public func renewLease(jobID: String, owner: String, leaseSeconds: Int) async throws -> LeaseRenewal? {
        try await pool.withConnection(idempotent: true) { connection in
            try connection.query("""
                UPDATE jobs SET \(LeaseColumns.job.extend(seconds: 3))
                WHERE id = $1 AND \(LeaseColumns.job.heldBy(2)) AND status = '\(JobStatus.running)' RETURNING cancel_requested
                """, jobID, owner, leaseSeconds).first.map { LeaseRenewal(cancelRequested: $0.bool("cancel_requested")) }
        }
    }

    public func reportProgress(jobID: String, bytesDone: UInt64, bytesTotal: UInt64, phase: String) async throws {
        try await pool.withConnection(idempotent: true) { connection in
            try connection.query("UPDATE jobs SET bytes_done = $2, bytes_total = $3, phase = $4 WHERE id = $1 AND status = '\(JobStatus.running)'",
                                 jobID, bytesDone, bytesTotal, phase)
        }
    }

    /// Ends a backup job: its manifest, sizes and expiry are cataloged and
    /// the backup becomes FINISHED, all in one transaction.
    public func finishBackup(jobID: String, owner: String, manifest: BackupManifest) async throws {
        try await pool.callTransaction(idempotent: true) { connection in
            guard let row = try connection.query("""
                SELECT j.snapshot_id FROM jobs j
                WHERE j.id = $1 AND \(LeaseColumns.job.of("j").heldBy(2)) AND j.status IN \(JobStatus.finished.predecessors.sql) FOR UPDATE OF j
                """, jobID, owner).first else {
                throw BackupError.failedPrecondition("job \(jobID) is no longer held by this process")
            }
            let snapshotID = row.string("snapshot_id")
            let detail = try Self.completeSnapshot(connection, id: snapshotID, manifest: manifest)
            try Self.finishJob(connection, id: jobID, owner: owner, detail: detail)
            if try connection.query("""
                SELECT 1 FROM snapshots s JOIN schedules sc ON sc.environment_id = s.environment_id
                WHERE s.id = $1 AND s.night IS NOT NULL AND sc.verify_nightly
                """, snapshotID).first != nil {
                // Past the namespace's share of verifications, this night's goes unverified rather than unfinished.
                _ = try? Self.queueVerification(connection, backup: try Self.loadBackup(connection, snapshotID), actor: "scheduler")
            }
        }
    }

    /// Records a PROCESSING backup's content from `manifest` and marks it
    /// FINISHED, expiring after its kind's retention from its creation (its
    /// environment's policy, in its time zone); returns what its job's end
    /// says of it.
    /// Rows written by one statement when a record has very many (a manifest's files, a ledger's blobs).
    static let insertBatch = 10_000

    static func completeSnapshot(_ connection: PostgresConnection, id snapshotID: String, manifest: BackupManifest) throws -> String {
        let filesBytes = manifest.files.reduce(UInt64(0)) { $0 + $1.blob.size }
        let warning = manifest.warning
        // In batches: the texts of half a million files at once would take as much memory again as the manifest.
        for start in stride(from: 0, to: manifest.files.count, by: insertBatch) {
            let batch = manifest.files[start..<min(start + insertBatch, manifest.files.count)]
            try connection.query("""
                INSERT INTO snapshot_files (snapshot_id, storage_key, sha256, size, blob)
                SELECT $1, key, sha256, size::bigint, blob FROM unnest($2::text[], $3::text[], $4::text[], $5::text[]) AS f(key, sha256, size, blob)
                """, snapshotID, batch.map(\.key), batch.map(\.blob.hash.hex), batch.map { String($0.blob.size) }, batch.map(\.blob.name.hex))
        }
        try connection.query("""
            UPDATE snapshots SET status = '\(BackupStatus.finished)', finished_at = now(),
                dump_sha256 = $2, database_bytes = $3, files_bytes = $4, file_count = $5, postgres_version = $6,
                source_database_bytes = $7, files_deleted_during_backup = $8, files_changed_during_backup = $9,
                warning = $10
            WHERE id = $1 AND status = '\(BackupStatus.processing)'
            """, snapshotID, manifest.dump.sha256.hex,
            manifest.dump.size, filesBytes, manifest.files.count, manifest.postgresVersion, manifest.databaseSize,
            manifest.deletedDuringBackup.count, manifest.changedDuringBackup.count, warning)
        if case .chunks(_, _, let chunks) = manifest.dump, !chunks.isEmpty {
            try connection.query("""
                INSERT INTO dump_chunks (snapshot_id, position, sha256, size, blob_sha256, compressed, blob)
                SELECT $1, position - 1, sha256, size::bigint, blob_sha256, compressed, blob
                FROM unnest($2::text[], $3::text[], $4::text[], $5::boolean[], $6::text[])
                    WITH ORDINALITY AS c(sha256, size, blob_sha256, compressed, blob, position)
                """, snapshotID, chunks.map(\.sha256.hex), chunks.map { String($0.size) }, chunks.map(\.blob.hash.hex),
                chunks.map { $0.compressed ? "true" : "false" }, chunks.map(\.blob.name.hex))
        }
        try dateExpiry(connection, snapshotID: snapshotID)
        return "\(manifest.files.count) files, \(manifest.dump.size + filesBytes) bytes" + (warning.isEmpty ? "" : "; warning: \(warning)")
    }

    /// Ends a job as FAILED with its reason; a backup it was making fails too.
    public func failJob(id: String, error message: String) async throws {
        try await pool.callTransaction(idempotent: true) { connection in
            try Self.failJob(connection, id: id, message: message)
        }
    }

    /// Fails the running jobs whose lease ran out: their process died or
    /// lost the catalog. Returns how many. Restores are not among them: they
    /// are claimed for recovery (`claimAbandonedRestore`), which cleans up first.
    @discardableResult
    public func failAbandonedJobs() async throws -> Int {
        try await pool.callTransaction { connection in
            let ids = try connection.query("""
                SELECT id FROM jobs WHERE status = '\(JobStatus.running)' AND \(LeaseColumns.job.runOut) AND kind <> '\(JobKind.restore)'
                FOR UPDATE SKIP LOCKED
                """).map { $0.string("id") }
            for id in ids {
                try Self.failJob(connection, id: id, message: "backupd stopped while the job ran (its lease expired)")
            }
            return ids.count
        }
    }

    /// Ends a job as FINISHED, logging the activity with `detail`.
    public func finishJob(id: String, owner: String, detail: String) async throws {
        try await pool.callTransaction(idempotent: true) { try Self.finishJob($0, id: id, owner: owner, detail: detail) }
    }

    static func finishJob(_ connection: PostgresConnection, id: String, owner: String, detail: String) throws {
        guard let row = try connection.query("""
            UPDATE jobs j SET status = '\(JobStatus.finished)', finished_at = now(), phase = '\(JobStatus.finished)', bytes_done = bytes_total,
                \(LeaseColumns.job.end)
            FROM environments e
            WHERE j.id = $1 AND \(LeaseColumns.job.of("j").heldBy(2)) AND j.status IN \(JobStatus.finished.predecessors.sql) AND e.id = j.environment_id
            RETURNING j.kind, j.snapshot_id, j.actor, e.namespace, e.name
            """, id, owner).first else {
            throw BackupError.failedPrecondition("job \(id) is no longer held by this process")
        }
        try recordActivity(connection, row.string("namespace"), row.string("name"), action: row.string("kind"),
                           outcome: "FINISHED", actor: row.string("actor"), snapshotID: row["snapshot_id"], detail: detail)
    }

    static func failJob(_ connection: PostgresConnection, id: String, message: String) throws {
        try endUnfinished(connection, id: id, as: .failed, message: message)
    }

    /// Ends a queued or running job as FAILED or CANCELLED with its reason;
    /// a backup or archive it was making fails with the same reason.
    static func endUnfinished(_ connection: PostgresConnection, id: String, as status: JobStatus, message: String) throws {
        guard let row = try connection.query("""
            UPDATE jobs j SET status = $3, error = $2, finished_at = now(), \(LeaseColumns.job.end)
            FROM environments e
            WHERE j.id = $1 AND e.id = j.environment_id AND j.status IN \(status.predecessors.sql)
            RETURNING j.kind, j.snapshot_id, j.actor, e.namespace, e.name
            """, id, message, status.description).first else { return }
        var detail = message
        switch row.string("kind") {
        case "backup":
            // A failed backup holds no content; it stays in the list, as a record, as long as a finished one would.
            let failed = try connection.query("""
                UPDATE snapshots SET status = '\(BackupStatus.failed)', error = $2, finished_at = now() WHERE id = $1 AND status = '\(BackupStatus.processing)'
                RETURNING id, night::text AS night, environment_id
                """, row["snapshot_id"], message)
            if let snapshot = failed.first {
                try dateExpiry(connection, snapshotID: snapshot.string("id"))
                if let night = snapshot["night"] {
                    let attempts = try connection.query("""
                        SELECT count(*) AS n FROM snapshots WHERE environment_id = $1 AND night = $2::date AND status = '\(BackupStatus.failed)'
                        """, snapshot.int64("environment_id"), night)[0].int64("n")
                    detail += attempts < NightlyWindow.attempts
                        ? " (attempt \(attempts) of \(NightlyWindow.attempts) of the night of \(night); it will be tried again)"
                        : " (attempt \(attempts) of \(NightlyWindow.attempts) of the night of \(night); the night has no backup)"
                }
            }
        case "archive":
            // Its reservation in the cache ends; a new request prepares a new archive.
            try connection.query("UPDATE archives SET state = '\(DownloadRecord.State.failed)', error = $2 WHERE job_id = $1 AND state = '\(DownloadRecord.State.preparing)'", id, message)
        case "upload-validation":
            // Nothing was cataloged; the upload's data goes with the next sweep of the spool.
            try connection.query("UPDATE uploads SET state = '\(UploadState.failed)', error = $2 WHERE job_id = $1 AND state = '\(UploadState.validating)'", id, message)
        default:
            break
        }
        try recordActivity(connection, row.string("namespace"), row.string("name"), action: row.string("kind"),
                           outcome: status.description.uppercased(), actor: row.string("actor"), snapshotID: row["snapshot_id"],
                           detail: detail)
    }

    /// Asks for a job to stop. A queued job ends CANCELLED at once; a running
    /// one is flagged, and the process running it stops it within a second
    /// or two and ends it CANCELLED. A job that has ended cannot be cancelled.
    public func requestCancellation(jobID: String, actor: String) async throws -> Job {
        let id = try parseID(jobID, "job id")
        return try await pool.callTransaction { connection in
            let job = try Self.loadJob(connection, id, lock: true)
            guard job.status.successors.contains(.cancelled) else {
                throw BackupError.failedPrecondition("job \(id) has already ended (\(job.status)); only a queued or running job can be cancelled")
            }
            if job.status == .queued {
                try Self.endUnfinished(connection, id: id, as: .cancelled, message: "cancelled by \(actor) before it started")
            } else {
                try connection.query("UPDATE jobs SET cancel_requested = true, phase = 'cancelling' WHERE id = $1", id)
            }
            return try Self.loadJob(connection, id)
        }
    }

    /// Whether someone asked for a running job to stop.
    public func isCancellationRequested(jobID: String) async throws -> Bool {
        try await pool.withConnection(idempotent: true) { connection in
            try connection.query("SELECT cancel_requested FROM jobs WHERE id = $1", jobID).first?.bool("cancel_requested") ?? false
        }
    }

    /// Ends a job its runner stopped on request as CANCELLED.
    public func cancelJob(id: String, reason: String) async throws {
        try await pool.callTransaction(idempotent: true) { try Self.endUnfinished($0, id: id, as: .cancelled, message: reason) }
    }
}

/// What a queued job is about: its environment, named directly or through
/// the backup or upload it works on.
enum JobSubject {
    case environment(id: Int64, backup: String?)
    case backup(String)
    case upload(String)
}

extension Catalog {
    /// Queues a job: the one place a job row is made, QUEUED with its phase,
    /// the bytes it will go through (0 when not known ahead) and the request
    /// id of the call it is queued for (`CallScope`). Returns its id.
    static func queueJob(_ connection: PostgresConnection, _ kind: JobKind, for subject: JobSubject, actor: String,
                         bytesTotal: UInt64 = 0) throws -> String {
        let jobID = UUID().uuidString.lowercased()
        let (environmentID, backupID, uploadID): (Int64?, String?, String?) = switch subject {
        case let .environment(id, backup): (id, backup, nil)
        case let .backup(id): (nil, id, nil)
        case let .upload(id): (nil, nil, id)
        }
        try connection.query("""
            INSERT INTO jobs (id, kind, status, environment_id, snapshot_id, actor, phase, bytes_total, request_id)
            VALUES ($1, $2, '\(JobStatus.queued)',
                    COALESCE($3::bigint, (SELECT environment_id FROM snapshots WHERE id = $4::uuid),
                             (SELECT environment_id FROM uploads WHERE id = $5::uuid)),
                    $4::uuid, $6, '\(JobStatus.queued)', $7, $8)
            """, jobID, "\(kind)", environmentID, backupID, uploadID, actor, bytesTotal, CallScope.requestID)
        return jobID
    }
}

/// A job's lease, renewed.
public struct LeaseRenewal: Sendable, Equatable {
    public let cancelRequested: Bool
}

extension Array where Element: CustomStringConvertible & WireEnum {
    /// The cases as a SQL list, `('queued', 'running')`, for `status IN …`.
    var sql: String { "(" + map { "'\($0)'" }.joined(separator: ", ") + ")" }
}
