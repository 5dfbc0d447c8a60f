import BackupPostgres
import BackupWire
import Foundation

/// What the catalog says of the whole service, whichever process did the
/// work: the queue, the store, and each environment's backups. Every
/// process exports the same values, so an alert holds whichever one
/// Prometheus reaches.
public struct ServiceSummary: Sendable {
    public struct QueuedJobs: Sendable {
        public let kind: String
        public let count: Int64
        /// Seconds the oldest of them has waited, by the catalog's clock.
        public let oldestAgeSeconds: Double
    }

    public struct LastBackup: Sendable {
        public let namespace: String
        public let environment: String
        public let kind: String
        public let finishedAt: Date
    }

    public struct ExpiredBackups: Sendable {
        public let namespace: String
        public let environment: String
        public let count: Int64
    }

    public var queued: [QueuedJobs] = []
    /// Jobs running now in any process, by kind.
    public var running: [(kind: String, count: Int64)] = []
    public var blobCount: Int64 = 0
    public var blobBytes: Int64 = 0
    /// The newest finished backup of each environment and kind.
    public var lastBackups: [LastBackup] = []
    /// Backups past their expiry that the scheduler has not deleted yet.
    public var expired: [ExpiredBackups] = []
}

extension Catalog {
    /// The service's summary, read in one repeatable-read transaction so its numbers agree with one another.
    public func serviceSummary() async throws -> ServiceSummary {
        try await pool.withConnection(idempotent: true) { connection in
            try connection.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            defer { _ = try? connection.query("COMMIT") }
            var summary = ServiceSummary()
            for row in try connection.query("""
                SELECT kind, status, count(*) AS count,
                       COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::text AS oldest_age
                FROM jobs WHERE status IN ('\(JobStatus.queued)', '\(JobStatus.running)') GROUP BY kind, status ORDER BY kind, status
                """) {
                if row.string("status") == "\(JobStatus.queued)" {
                    summary.queued.append(.init(kind: row.string("kind"), count: row.int64("count"),
                                                oldestAgeSeconds: Double(row.string("oldest_age")) ?? 0))
                } else {
                    summary.running.append((row.string("kind"), row.int64("count")))
                }
            }
            let blobs = try connection.query("SELECT count(*) AS count, COALESCE(sum(size), 0) AS bytes FROM blobs")[0]
            summary.blobCount = blobs.int64("count")
            summary.blobBytes = blobs.int64("bytes")
            summary.lastBackups = try connection.query("""
                SELECT e.namespace, e.name, s.kind, max(unix_ms(s.finished_at)) AS finished_ms
                FROM snapshots s JOIN environments e ON e.id = s.environment_id
                WHERE s.status = '\(BackupStatus.finished)' AND s.finished_at IS NOT NULL
                GROUP BY e.namespace, e.name, s.kind ORDER BY e.namespace, e.name, s.kind
                """).map { row in
                ServiceSummary.LastBackup(namespace: row.string("namespace"), environment: row.string("name"), kind: row.string("kind"),
                                          finishedAt: Date(timeIntervalSince1970: Double(row.int64("finished_ms")) / 1000))
            }
            summary.expired = try connection.query("""
                SELECT e.namespace, e.name, count(*) AS count
                FROM snapshots s JOIN environments e ON e.id = s.environment_id
                WHERE s.status <> '\(BackupStatus.processing)' AND s.expires_at <= now()
                GROUP BY e.namespace, e.name ORDER BY e.namespace, e.name
                """).map { row in
                ServiceSummary.ExpiredBackups(namespace: row.string("namespace"), environment: row.string("name"), count: row.int64("count"))
            }
            return summary
        }
    }
}
