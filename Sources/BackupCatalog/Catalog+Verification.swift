import BackupRules
import BackupPostgres
import BackupWire
import Foundation

extension Catalog {
    /// Problems kept on a backup; `problem_count` says how many were found.
    static let keptProblems = 100
    /// Verify jobs one namespace may have queued or running at once.
    public static let verificationsPerNamespace = 16

    /// Queues a job that re-reads a finished backup's content, or answers
    /// the one already queued or running for it. While it runs the backup
    /// cannot be deleted or expire.
    public func requestVerification(backupID: String, actor: String) async throws -> Job {
        let backupID = try parseID(backupID, "backup id")
        return try await pool.callTransaction { connection in
            // Shared: a deletion waits for this request, then finds its job.
            let backup = try Self.loadBackup(connection, backupID, lock: true, shared: true)
            guard backup.status == .finished else {
                throw BackupError.failedPrecondition("backup \(backupID) is \(backup.status); only a finished backup can be verified")
            }
            if let running = try connection.query("""
                SELECT id FROM jobs WHERE snapshot_id = $1 AND kind = 'verify' AND status IN \(JobStatus.active.sql)
                """, backupID).first {
                return try Self.loadJob(connection, running.string("id"))
            }
            return try Self.loadJob(connection, try Self.queueVerification(connection, backup: backup, actor: actor))
        }
    }

    /// Queues a verify job of `backup`, refused past the namespace's share; returns the job's id.
    @discardableResult
    static func queueVerification(_ connection: PostgresConnection, backup: Backup, actor: String) throws -> String {
        // Counted one request at a time per namespace.
        try connection.query("SELECT pg_advisory_xact_lock(\(AdvisoryLock.verifications), hashtext($1))", backup.namespace)
        let active = try connection.query("""
            SELECT count(*) AS count FROM jobs j JOIN environments e ON e.id = j.environment_id
            WHERE j.kind = 'verify' AND j.status IN \(JobStatus.active.sql) AND e.namespace = $1
            """, backup.namespace)[0].int64("count")
        guard active < verificationsPerNamespace else {
            throw BackupError.resourceExhausted("namespace \(backup.namespace) has \(active) verifications queued or running, "
                                                + "the most it may; try again when one has ended")
        }
        let jobID = try queueJob(connection, .verify, for: .backup(backup.id), actor: actor,
                                 bytesTotal: backup.databaseBytes + backup.filesBytes)
        try recordActivity(connection, backup.namespace, backup.environment, action: "verify", outcome: "STARTED", actor: actor,
                           snapshotID: backup.id)
        return jobID
    }

    /// Records what a verify job found on its backup and ends the job:
    /// FINISHED when the backup is intact, FAILED naming the problems.
    public func finishVerification(jobID: String, owner: String, checked: Int, problems: [VerifyProblem]) async throws {
        let kept = Array(problems.prefix(Self.keptProblems))
        let encoded = String(decoding: try JSONEncoder().encode(kept), as: UTF8.self)
        try await pool.callTransaction(idempotent: true) { connection in
            guard let row = try connection.query("""
                SELECT snapshot_id FROM jobs WHERE id = $1 AND \(LeaseColumns.job.heldBy(2)) AND status = '\(JobStatus.running)' FOR UPDATE
                """, jobID, owner).first else {
                throw BackupError.failedPrecondition("job \(jobID) is no longer held by this process")
            }
            try connection.query("""
                UPDATE snapshots SET verified_at = now(), verify_job_id = $2, verify_problem_count = $3, verify_problems = $4::jsonb
                WHERE id = $1
                """, row.string("snapshot_id"), jobID, problems.count, encoded)
            if problems.isEmpty {
                try Self.finishJob(connection, id: jobID, owner: owner, detail: "intact: \(checked) blobs read and their SHA-256 checked")
            } else {
                let named = problems.prefix(3).map { "\($0.name) (\($0.sha256)): \($0.problem)" }.joined(separator: "; ")
                try Self.failJob(connection, id: jobID, message: "\(problems.count) of \(checked) blobs are missing or damaged: \(named)"
                                 + (problems.count > 3 ? "; …" : ""))
            }
        }
    }

    /// The `verification` of a row with `backupColumns`, nil when none ran.
    static func verification(_ row: PostgresRow) -> Verification? {
        guard row["verified_ms"] != nil else { return nil }
        let problems = (try? JSONDecoder().decode([VerifyProblem].self, from: Data(row.string("verify_problems").utf8))) ?? []
        return .with {
            $0.verifiedUnixMS = row.int64("verified_ms"); $0.jobID = row.string("verify_job_id")
            $0.problemCount = UInt32(clamping: row.int64("verify_problem_count")); $0.intact = $0.problemCount == 0
            $0.problems = problems
        }
    }
}
