import BackupRules
import BackupPostgres
import BackupWire
import Foundation

/// An environment whose automatic backups are on, as the scheduler reads it.
public struct ScheduledEnvironment: Sendable {
    public let id: Int64
    public let namespace: String
    public let name: String
    public let window: NightlyWindow
    /// Nights before this (the environment's registration) are not made up.
    public let since: Date
}

/// What asking for a night's backup came to.
public enum NightlyStart: Sendable, Equatable {
    /// A backup was queued; its job's id.
    case queued(String)
    /// The night has its backup, finished.
    case made
    /// The night's backup is being made (by this process or another).
    case inProgress
    /// The night's last attempt failed; the next may start at this time.
    case retryAt(Date)
    /// Every attempt failed; the night has no backup.
    case gaveUp
    /// The environment runs another job; asked again at the next tick.
    case busy
}

extension Catalog {
    /// A schedule's columns, the defaults standing in for an environment without a row.
    static let scheduleColumns = """
        COALESCE(sc.enabled, true) AS enabled, COALESCE(sc.window_start, 0) AS window_start,
        COALESCE(sc.time_zone, 'UTC') AS time_zone, COALESCE(sc.nightly_days, 0) AS nightly_days,
        COALESCE(sc.weekly_months, 0) AS weekly_months, COALESCE(sc.monthly_months, 0) AS monthly_months,
        COALESCE(sc.on_demand_days, 0) AS on_demand_days, COALESCE(sc.uploaded_days, 0) AS uploaded_days,
        COALESCE(sc.verify_nightly, false) AS verify_nightly
        """

    /// The nightly window of a row with `scheduleColumns`.
    static func window(_ row: PostgresRow) -> NightlyWindow {
        NightlyWindow(minutes: Int(row.int64("window_start")), zoneName: row.string("time_zone"))
    }

    /// The retention policy and time zone of a row with `scheduleColumns`.
    static func retention(_ row: PostgresRow) -> (BackupRules.RetentionPolicy, TimeZone) {
        let policy = (try? BackupRules.RetentionPolicy(
            nightlyDays: Int(row.int64("nightly_days")), weeklyMonths: Int(row.int64("weekly_months")),
            monthlyMonths: Int(row.int64("monthly_months")), onDemandDays: Int(row.int64("on_demand_days")),
            uploadedDays: Int(row.int64("uploaded_days")))) ?? BackupRules.RetentionPolicy()
        return (policy, window(row).timeZone)
    }

    static func schedule(_ row: PostgresRow) -> Schedule {
        let (policy, _) = retention(row)
        return .with {
            $0.namespace = row.string("namespace"); $0.environment = row.string("name"); $0.enabled = row.bool("enabled")
            $0.windowStart = window(row).start; $0.timeZone = row.string("time_zone")
            $0.verifyNightly = row.bool("verify_nightly")
            $0.retention = .with {
                $0.nightlyDays = UInt32(policy.nightly.count); $0.weeklyMonths = UInt32(policy.weekly.count)
                $0.monthlyMonths = UInt32(policy.monthly.count); $0.onDemandDays = UInt32(policy.onDemand.count)
                $0.uploadedDays = UInt32(policy.uploaded.count)
            }
        }
    }

    private static func loadSchedule(_ connection: PostgresConnection, _ namespace: String, _ name: String) throws -> Schedule {
        guard let row = try connection.query("""
            SELECT e.namespace, e.name, \(scheduleColumns) FROM environments e LEFT JOIN schedules sc ON sc.environment_id = e.id
            WHERE e.namespace = $1 AND e.name = $2
            """, namespace, name).first else {
            throw BackupError.notFound("environment \(namespace)/\(name) does not exist")
        }
        return schedule(row)
    }

    public func schedule(namespace: String, environment: String) async throws -> Schedule {
        try await pool.withConnection { try Self.loadSchedule($0, namespace, environment) }
    }

    /// Replaces an environment's schedule. With `applyToExisting`, its
    /// backups are re-dated by the new retention, each from its creation;
    /// the answer's `backupsRedated` says how many changed.
    public func setSchedule(_ schedule: Schedule, applyToExisting: Bool, actor: String) async throws -> Schedule {
        let window = try NightlyWindow(start: schedule.windowStart.isEmpty ? "00:00" : schedule.windowStart,
                                       timeZone: schedule.timeZone.isEmpty ? "UTC" : schedule.timeZone)
        let wanted = schedule.retention
        let policy = try BackupRules.RetentionPolicy(
            nightlyDays: Int(wanted.nightlyDays), weeklyMonths: Int(wanted.weeklyMonths), monthlyMonths: Int(wanted.monthlyMonths),
            onDemandDays: Int(wanted.onDemandDays), uploadedDays: Int(wanted.uploadedDays))
        return try await pool.callTransaction { connection in
            let id = try Self.environmentID(connection, schedule.namespace, schedule.environment, lock: true)
            try connection.query("""
                INSERT INTO schedules (environment_id, enabled, window_start, time_zone, nightly_days, weekly_months,
                                       monthly_months, on_demand_days, uploaded_days, verify_nightly)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                ON CONFLICT (environment_id) DO UPDATE SET enabled = $2, window_start = $3, time_zone = $4, nightly_days = $5,
                    weekly_months = $6, monthly_months = $7, on_demand_days = $8, uploaded_days = $9, verify_nightly = $10
                """, id, schedule.enabled, window.minutes, window.zoneName, policy.nightly.count,
                policy.weekly.count, policy.monthly.count, policy.onDemand.count, policy.uploaded.count, schedule.verifyNightly)
            let redated = applyToExisting ? try Self.redate(connection, environmentID: id) : 0
            var stored = try Self.loadSchedule(connection, schedule.namespace, schedule.environment)
            stored.backupsRedated = UInt32(clamping: redated)
            let retention = stored.retention
            try Self.recordActivity(connection, schedule.namespace, schedule.environment, action: "schedule", outcome: "FINISHED",
                                    actor: actor, detail: "\(stored.enabled ? "enabled" : "disabled") at \(stored.windowStart) "
                                        + "\(stored.timeZone); keep nightly \(retention.nightlyDays)d, weekly \(retention.weeklyMonths)m, "
                                        + "monthly \(retention.monthlyMonths)m, on demand \(retention.onDemandDays)d, "
                                        + "uploaded \(retention.uploadedDays)d" + (stored.verifyNightly ? "; verify nightly" : "")
                                        + (applyToExisting ? "; \(redated) backups re-dated" : ""))
            return stored
        }
    }

    /// Gives every backup of an environment the expiry its kind has under
    /// the environment's retention now; returns how many changed.
    private static func redate(_ connection: PostgresConnection, environmentID: Int64) throws -> Int {
        let rows = try connection.query("""
            SELECT s.id, s.kind, unix_ms(s.created_at) AS created_ms, unix_ms(s.expires_at) AS expires_ms, \(scheduleColumns)
            FROM snapshots s LEFT JOIN schedules sc ON sc.environment_id = s.environment_id
            WHERE s.environment_id = $1 AND s.status <> '\(BackupStatus.processing)' FOR UPDATE OF s
            """, environmentID)
        var changed: [(id: String, expires: Int64)] = []
        for row in rows {
            let expires = expiry(row)
            if row["expires_ms"] == nil || row.int64("expires_ms") != expires { changed.append((row.string("id"), expires)) }
        }
        if !changed.isEmpty {
            try connection.query("""
                UPDATE snapshots s SET expires_at = to_timestamp(c.expires_ms::double precision / 1000)
                FROM unnest($1::uuid[], $2::bigint[]) AS c(id, expires_ms) WHERE s.id = c.id
                """, changed.map(\.id), changed.map { String($0.expires) })
        }
        return changed.count
    }

    /// When the backup of a row with `kind`, `created_ms` and `scheduleColumns` expires, in Unix milliseconds.
    static func expiry(_ row: PostgresRow) -> Int64 {
        let (policy, zone) = retention(row)
        let created = Date(timeIntervalSince1970: Double(row.int64("created_ms")) / 1000)
        return Int64((policy.expiry(of: row.string("kind"), created: created, in: zone).timeIntervalSince1970 * 1000).rounded())
    }

    /// Sets a backup's expiry by its environment's retention (a backup that
    /// finished or failed: failed ones go too, in time).
    static func dateExpiry(_ connection: PostgresConnection, snapshotID: String) throws {
        let row = try connection.query("""
            SELECT s.kind, unix_ms(s.created_at) AS created_ms, \(scheduleColumns)
            FROM snapshots s LEFT JOIN schedules sc ON sc.environment_id = s.environment_id WHERE s.id = $1
            """, snapshotID)[0]
        try connection.query("UPDATE snapshots SET expires_at = to_timestamp($2::double precision / 1000) WHERE id = $1",
                             snapshotID, expiry(row))
    }

    /// The environments whose automatic backups are on: enabled, with a
    /// deployed package.
    public func scheduledEnvironments() async throws -> [ScheduledEnvironment] {
        try await pool.withConnection { connection in
            try connection.query("""
                SELECT e.id, e.namespace, e.name, unix_ms(e.created_at) AS created_ms, \(Self.scheduleColumns)
                FROM environments e LEFT JOIN schedules sc ON sc.environment_id = e.id
                WHERE e.package_version <> '' AND COALESCE(sc.enabled, true)
                ORDER BY e.id
                """).map { row in
                ScheduledEnvironment(id: row.int64("id"), namespace: row.string("namespace"), name: row.string("name"),
                                     window: Self.window(row),
                                     since: Date(timeIntervalSince1970: Double(row.int64("created_ms")) / 1000))
            }
        }
    }

    /// Queues a night's automatic backup of an environment unless the night
    /// has one, made or being made, by this process or another (the
    /// catalog's unique index decides); after a failed attempt, the next
    /// waits `retryDelays[n-1]` from when the failed one started; after
    /// `NightlyWindow.attempts`, the night gives up. `now` is the
    /// scheduler's clock: the backup's creation time.
    public func startNightlyBackup(_ environment: ScheduledEnvironment, night: Night, now: Date,
                                   retryDelays: [Duration]) async throws -> NightlyStart {
        do {
            return try await pool.callTransaction { connection in
                let attempts = try connection.query("""
                    SELECT count(*) FILTER (WHERE status = '\(BackupStatus.finished)') AS made, count(*) FILTER (WHERE status = '\(BackupStatus.processing)') AS making,
                           count(*) FILTER (WHERE status = '\(BackupStatus.failed)') AS failed,
                           max(unix_ms(created_at)) FILTER (WHERE status = '\(BackupStatus.failed)') AS last_failed_ms
                    FROM snapshots WHERE environment_id = $1 AND night = $2::date
                    """, environment.id, night.description)[0]
                if attempts.int64("made") > 0 { return .made }
                if attempts.int64("making") > 0 { return .inProgress }
                let failed = Int(attempts.int64("failed"))
                if failed >= NightlyWindow.attempts { return .gaveUp }
                if failed > 0 {
                    let delay = retryDelays.isEmpty ? Duration.zero : retryDelays[min(failed, retryDelays.count) - 1]
                    let next = Date(timeIntervalSince1970: Double(attempts.int64("last_failed_ms")) / 1000)
                        .addingTimeInterval(TimeInterval(delay.components.seconds) + TimeInterval(delay.components.attoseconds) / 1e18)
                    if next > now { return .retryAt(next) }
                }
                let attempt = failed + 1
                let comment = "\(night.kind) backup of the night of \(night)"
                    + (attempt > 1 ? " (attempt \(attempt) of \(NightlyWindow.attempts))" : "")
                let (_, job) = try Self.insertBackup(connection, environmentID: environment.id, namespace: environment.namespace,
                                                     environment: environment.name, kind: night.kind, comment: comment,
                                                     actor: "scheduler", night: night.description, createdAt: now)
                return .queued(job.id)
            }
        } catch let error as PostgresError where error.isUniqueViolation {
            return error.constraint == "snapshots_one_per_night" ? .inProgress : .busy
        }
    }

    /// Deletes the backups whose expiry is at or before `now`, at most 1,000
    /// a call, except those a queued or running job reads (they go at a
    /// later call, and do not hold back the others), each with an "expired"
    /// line in the activity log. Returns how many went; their blobs go with
    /// the next garbage collection.
    public func expireBackups(now: Date) async throws -> Int {
        let inUse = "EXISTS (SELECT 1 FROM jobs j WHERE j.snapshot_id = s.id AND j.status IN \(JobStatus.active.sql) AND j.kind <> 'backup')"
        return try await pool.callTransaction { connection in
            // First the rows are locked: a request that would read one (it locks the row shared first) waits
            // for this transaction, or holds its lock and is skipped.
            let candidates = try connection.query("""
                SELECT s.id FROM snapshots s
                WHERE s.status <> '\(BackupStatus.processing)' AND s.expires_at <= to_timestamp($1::double precision / 1000) AND NOT \(inUse)
                ORDER BY s.expires_at LIMIT 1000 FOR UPDATE OF s SKIP LOCKED
                """, Int64((now.timeIntervalSince1970 * 1000).rounded(.down))).map { $0.string("id") }
            guard !candidates.isEmpty else { return 0 }
            // Then, in a statement that sees every job committed before the locks, those still unread go.
            let rows = try connection.query("""
                DELETE FROM snapshots s USING environments e
                WHERE e.id = s.environment_id AND s.id = ANY($1::uuid[]) AND NOT \(inUse)
                RETURNING s.id, s.kind, e.namespace, e.name, unix_ms(s.expires_at) AS expires_ms
                """, candidates)
            for row in rows {
                let expired = Date(timeIntervalSince1970: Double(row.int64("expires_ms")) / 1000)
                try Self.recordActivity(connection, row.string("namespace"), row.string("name"), action: "expired",
                                        outcome: "FINISHED", actor: "scheduler", snapshotID: row.string("id"),
                                        detail: "\(row.string("kind")) backup expired at \(expired.formatted(.iso8601))")
            }
            return rows.count
        }
    }
}
