import BackupCatalog
import BackupRules
import Foundation
import Logging
import ServiceLifecycle
import Synchronization

/// Sets the gauges the catalog answers: the job queue, the blob store's
/// size, and per environment the last successful backup of each kind, the
/// next nightly backup and the expired backups not yet deleted. The
/// catalog is asked in the background, every `interval` of the server's
/// clock, never by a scrape: a scrape exports the last answer at once,
/// however often scrapes come and however slow the catalog is. When the
/// last question failed, or has gone unanswered past `timeout`, the
/// catalog's series leave the export (they would be stale) and
/// `backupd_catalog_up` is 0.
final class CatalogSampler: Service, Sendable {
    private let catalog: Catalog
    private let schedule: ScheduleSettings
    private let clock: any ServiceClock
    private let interval: Duration
    private let series: SampledSeries
    private let logger: Logger
    private let probe: Probe
    private let latest = Mutex<[(name: String, labels: [(String, String)], value: Double)]>([])

    init(catalog: Catalog, metrics: ServiceMetrics, schedule: ScheduleSettings, clock: any ServiceClock,
         interval: Duration, timeout: Duration = .seconds(10), logger: Logger) {
        self.catalog = catalog
        self.schedule = schedule
        self.clock = clock
        self.interval = interval
        self.probe = Probe(clock: clock, timeout: timeout)
        self.series = SampledSeries(metrics: metrics)
        self.logger = logger
    }

    enum Name {
        static let jobsQueued = "backupd_jobs_queued"
        static let oldestQueuedAge = "backupd_oldest_queued_job_age_seconds"
        static let jobsRunning = "backupd_catalog_jobs_running"
        static let blobObjects = "backupd_blob_store_objects"
        static let blobBytes = "backupd_blob_store_bytes"
        static let lastBackup = "backupd_last_successful_backup_timestamp_seconds"
        static let nextNightly = "backupd_next_nightly_backup_timestamp_seconds"
        static let expiredPending = "backupd_expired_backups_pending"
        static let catalogUp = "backupd_catalog_up"
    }

    /// Asks the catalog until shutdown; the first time at once.
    func run() async {
        await cancelWhenGracefulShutdown {
            repeat {
                await self.refresh()
            } while (try? await self.clock.sleep(for: self.interval)) != nil
        }
    }

    private func refresh() async {
        let problem = await probe.run {
            let summary = try await catalog.serviceSummary()
            let scheduled = try await catalog.scheduledEnvironments()
            let values = Self.values(summary, scheduled: scheduled, schedule: schedule)
            latest.withLock { $0 = values }
        }
        if let problem { logger.warning("cannot read the catalog for metrics", metadata: ["error": "\(problem)"]) }
    }

    /// Sets the gauges for a scrape, from the last answer.
    func sample() {
        series.replace(with: probe.problem == nil ? latest.withLock { $0 } : [(Name.catalogUp, [], 0)])
    }

    /// The series of one summary: pure, so what each metric says is tested without a scrape.
    static func values(_ summary: ServiceSummary, scheduled: [ScheduledEnvironment],
                       schedule: ScheduleSettings) -> [(name: String, labels: [(String, String)], value: Double)] {
        let now = schedule.clock()
        var values: [(name: String, labels: [(String, String)], value: Double)] = [(Name.catalogUp, [], 1)]
        for queued in summary.queued {
            values.append((Name.jobsQueued, [("kind", queued.kind)], Double(queued.count)))
        }
        values.append((Name.oldestQueuedAge, [], summary.queued.map(\.oldestAgeSeconds).max() ?? 0))
        for (kind, count) in summary.running {
            values.append((Name.jobsRunning, [("kind", kind)], Double(count)))
        }
        values.append((Name.blobObjects, [], Double(summary.blobCount)))
        values.append((Name.blobBytes, [], Double(summary.blobBytes)))
        for last in summary.lastBackups {
            values.append((Name.lastBackup, [("namespace", last.namespace), ("environment", last.environment), ("kind", last.kind)],
                           last.finishedAt.timeIntervalSince1970))
        }
        for environment in scheduled {
            guard let next = environment.window.nextNight(after: now, offset: schedule.offset(of: environment)) else { continue }
            values.append((Name.nextNightly, [("namespace", environment.namespace), ("environment", environment.name)],
                           next.due.timeIntervalSince1970))
        }
        for expired in summary.expired {
            values.append((Name.expiredPending, [("namespace", expired.namespace), ("environment", expired.environment)],
                           Double(expired.count)))
        }
        return values
    }
}
