import BackupRules
import BackupPostgres
import BackupWire
import Foundation

/// What a restore creates and moves, recorded before it creates anything, so
/// that whoever finishes or cleans up after it knows exactly what is its own.
public struct RestorePlan: Sendable, Equatable {
    public var targetDatabase = ""
    public var stagingDatabase = ""
    public var previousDatabase = ""
    /// Empty for a database-only restore.
    public var fileStore = ""
    public var stagingFolder = ""
    public var previousFolder = ""
    /// What the previous copies are renamed to by the swap, and dropped as
    /// soon as the restored copies are in place: the previous copies are
    /// never dropped before.
    public var supersededDatabase = ""
    public var supersededFolder = ""
    /// The staging database's oid, once it is made.
    public var stagingOID: Int64?
    /// How far the restore has come.
    public var step = RestoreStep.planned

    public init() {}
}

/// A restore job with what it restores, where to, and its plan once made.
public struct RestoreWork: Sendable {
    public let backup: Backup
    public let databaseOnly: Bool
    public let plan: RestorePlan?
    /// How big the app database was when dumped: what the restore grows to.
    public let sourceDatabaseBytes: UInt64
}

extension Catalog {
    /// Queues a restore of a finished backup into a stopped environment of
    /// the same namespace. Every precondition is checked, and the job queued,
    /// in one transaction: a refused restore touches nothing.
    public func createRestore(backupID: String, targetNamespace: String, targetEnvironment: String, databaseOnly: Bool,
                              acceptVersionMismatch: Bool, actor: String) async throws -> Job {
        let backupID = try parseID(backupID, "backup id")
        do {
            return try await pool.callTransaction { connection in
                let source = try Self.loadBackup(connection, backupID).namespace
                guard source == targetNamespace else {
                    throw BackupError.permissionDenied(
                        "backup \(backupID) belongs to namespace \(source); it cannot be restored into namespace \(targetNamespace)")
                }
                let environmentID = try Self.environmentID(connection, targetNamespace, targetEnvironment, lock: true)
                // Locked until the job is queued (after the environment, in the order DeleteEnvironment
                // takes them): a concurrent delete of the backup waits, then sees the job and refuses.
                let backup = try Self.loadBackup(connection, backupID, lock: true)
                let target = try Self.loadEnvironment(connection, targetNamespace, targetEnvironment)
                let name = "\(targetNamespace)/\(targetEnvironment)"
                guard target.state == .stopped else {
                    throw BackupError.failedPrecondition("environment \(name) is running; stop the environment first")
                }
                guard backup.status == .finished else {
                    throw BackupError.failedPrecondition("backup \(backupID) is \(backup.status), not finished; only a finished backup can be restored")
                }
                guard backup.packageVersion == target.packageVersion || acceptVersionMismatch else {
                    throw BackupError.failedPrecondition("""
                        backup \(backupID) was made with package version \(backup.packageVersion.isEmpty ? "(none)" : backup.packageVersion) \
                        but \(name) runs \(target.packageVersion.isEmpty ? "(none)" : target.packageVersion); \
                        accept the version mismatch to restore anyway
                        """)
                }
                let jobID = try Self.queueJob(connection, .restore, for: .environment(id: environmentID, backup: backupID), actor: actor)
                try connection.query("INSERT INTO restores (job_id, snapshot_id, database_only) VALUES ($1, $2, $3)",
                                     jobID, backupID, databaseOnly)
                try Self.recordActivity(connection, targetNamespace, targetEnvironment, action: "restore", outcome: "STARTED",
                                        actor: actor, snapshotID: backupID,
                                        detail: "from \(backup.namespace)/\(backup.environment)" + (databaseOnly ? ", database only" : ""))
                return try Self.loadJob(connection, jobID)
            }
        } catch let error as PostgresError where error.isUniqueViolation {
            throw try await busyError(namespace: targetNamespace, environment: targetEnvironment)
        }
    }

    /// The backup a restore job restores, and its plan if it has one yet.
    public func restoreWork(jobID: String) async throws -> RestoreWork {
        try await pool.withConnection(idempotent: true) { connection in
            guard let row = try connection.query("""
                SELECT r.snapshot_id, r.database_only, s.source_database_bytes FROM restores r JOIN snapshots s ON s.id = r.snapshot_id
                WHERE r.job_id = $1
                """, jobID).first else {
                throw BackupError.notFound("restore job \(jobID) does not exist")
            }
            let plan = try Self.restorePlan(connection, jobID: jobID)
            return RestoreWork(backup: try Self.loadBackup(connection, row.string("snapshot_id")),
                               databaseOnly: row.bool("database_only"),
                               plan: plan.stagingDatabase.isEmpty ? nil : plan,
                               sourceDatabaseBytes: row.uint64("source_database_bytes"))
        }
    }

    /// A restore job's plan as recorded (empty names before it planned).
    static func restorePlan(_ connection: PostgresConnection, jobID: String) throws -> RestorePlan {
        let row = try connection.query("SELECT * FROM restores WHERE job_id = $1", jobID)[0]
        var plan = RestorePlan()
        plan.targetDatabase = row.string("target_database"); plan.stagingDatabase = row.string("staging_database")
        plan.previousDatabase = row.string("previous_database"); plan.fileStore = row.string("file_store")
        plan.stagingFolder = row.string("staging_folder"); plan.previousFolder = row.string("previous_folder")
        plan.supersededDatabase = row.string("superseded_database"); plan.supersededFolder = row.string("superseded_folder")
        plan.stagingOID = row["staging_oid"].flatMap { Int64($0) }
        plan.step = RestoreStep(rawValue: row.string("step")) ?? .planned
        return plan
    }

    /// Records what a restore is about to create, before it creates it, and
    /// that it may leave something behind until it says otherwise.
    public func recordRestorePlan(jobID: String, _ plan: RestorePlan) async throws {
        try await pool.withConnection(idempotent: true) { connection in
            try connection.query("""
                UPDATE restores SET target_database = $2, staging_database = $3, previous_database = $4, file_store = $5,
                    staging_folder = $6, previous_folder = $7, superseded_database = $8, superseded_folder = $9, step = $10,
                    leftovers = true
                WHERE job_id = $1
                """, jobID, plan.targetDatabase, plan.stagingDatabase, plan.previousDatabase, plan.fileStore,
                plan.stagingFolder, plan.previousFolder, plan.supersededDatabase, plan.supersededFolder, plan.step.rawValue)
        }
    }

    /// Records the oid of the staging database a restore made.
    public func recordStagingDatabase(jobID: String, oid: Int64) async throws {
        try await pool.withConnection(idempotent: true) { connection in
            try connection.query("UPDATE restores SET staging_oid = $2 WHERE job_id = $1", jobID, oid)
        }
    }

    /// Leaves a restore whose outcome cannot be seen now (its database
    /// server is out of reach) RUNNING for recovery to look again after
    /// `seconds`: its environment stays busy, nothing is decided blind.
    public func deferRestoreRecovery(jobID: String, owner: String, seconds: Int) async throws {
        try await pool.withConnection(idempotent: true) { connection in
            try connection.query("""
                UPDATE jobs SET \(LeaseColumns.job.extend(seconds: 3)), phase = 'waiting for the database server to recover'
                WHERE id = $1 AND \(LeaseColumns.job.heldBy(2)) AND status = '\(JobStatus.running)'
                """, jobID, owner, seconds)
        }
    }

    /// Records that a restore's staging and superseded copies are gone.
    public func clearRestoreLeftovers(jobID: String) async throws {
        try await pool.withConnection(idempotent: true) { connection in
            try connection.query("UPDATE restores SET leftovers = false WHERE job_id = $1", jobID)
        }
    }

    /// Restores that no longer run and may have left staging or superseded
    /// copies, due for another try at removing them; each is pushed back
    /// (`backOff` more for each try, at most an hour) until it is cleared, so
    /// an unreachable server is not asked every sweep.
    public func dueRestoreLeftovers(backOff: Duration, limit: Int = 20) async throws
        -> [(job: Job, environment: Environment, plan: RestorePlan)]
    {
        try await pool.callTransaction { connection in
            let rows = try connection.query("""
                UPDATE restores r SET leftover_attempts = r.leftover_attempts + 1,
                    leftovers_next_try = now() + make_interval(secs => least(3600, $2::int * (r.leftover_attempts + 1)))
                WHERE r.job_id IN (
                    SELECT r2.job_id FROM restores r2 JOIN jobs j ON j.id = r2.job_id
                    WHERE r2.leftovers AND r2.leftovers_next_try <= now() AND j.status NOT IN \(JobStatus.active.sql)
                    ORDER BY r2.leftovers_next_try LIMIT $1 FOR UPDATE OF r2 SKIP LOCKED)
                RETURNING r.job_id
                """, limit, Int(max(1, backOff.components.seconds)))
            return try rows.map { row in
                let job = try connection.query("SELECT id, environment_id, actor, request_id FROM jobs WHERE id = $1", row.string("job_id"))[0]
                let claimed = try Self.claimedJob(connection, job)
                let plan = try Self.restorePlan(connection, jobID: claimed.job.id)
                return (claimed.job, claimed.environment, plan)
            }
        }
    }

    /// Records that a restore has reached `step`.
    public func recordRestoreStep(jobID: String, _ step: RestoreStep) async throws {
        try await pool.withConnection(idempotent: true) { connection in
            try connection.query("UPDATE restores SET step = $2 WHERE job_id = $1", jobID, step.rawValue)
        }
    }

    /// Takes over a restore whose process died (its lease ran out), to clean
    /// up after it or finish its swap.
    public func claimAbandonedRestore(owner: String, leaseSeconds: Int) async throws -> ClaimedJob? {
        try await pool.callTransaction { connection in
            guard let claimed = try connection.query("""
                UPDATE jobs SET \(LeaseColumns.job.grant(holder: 1, seconds: 2)), phase = 'recovering'
                WHERE id = (SELECT id FROM jobs WHERE status = '\(JobStatus.running)' AND kind = '\(JobKind.restore)' AND \(LeaseColumns.job.runOut)
                            ORDER BY created_at FOR UPDATE SKIP LOCKED LIMIT 1)
                RETURNING id, environment_id, actor, request_id
                """, owner, leaseSeconds).first else { return nil }
            return try Self.claimedJob(connection, claimed)
        }
    }
}
