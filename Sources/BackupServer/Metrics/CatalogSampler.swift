import BackupCatalog
import BackupRules
import Foundation
import Logging

/// Sets the gauges the catalog answers: the job queue, the blob store's
/// size, and per environment the last successful backup of each kind, the
/// next nightly backup and the expired backups not yet deleted. The catalog
/// is asked at most once per `refreshInterval` of the server's clock
/// however often `/metrics` is scraped, so a flood of scrapes costs it
/// nothing more; between refreshes a scrape exports the last answer.
actor CatalogSampler {
    private let catalog: Catalog
    private let schedule: ScheduleSettings
    private let clock: any ServiceClock
    private let refreshInterval: Duration
    private let series: SampledSeries
    private let logger: Logger
    private var lastRefresh: ContinuousClock.Instant?

    init(catalog: Catalog, metrics: ServiceMetrics, schedule: ScheduleSettings, clock: any ServiceClock,
         refreshInterval: Duration = .seconds(5), logger: Logger) {
        self.catalog = catalog
        self.schedule = schedule
        self.clock = clock
        self.refreshInterval = refreshInterval
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

    func sample() async {
        let now = clock.now
        if let lastRefresh, lastRefresh.duration(to: now) < refreshInterval { return }
        lastRefresh = now
        do {
            let summary = try await catalog.serviceSummary()
            let scheduled = try await catalog.scheduledEnvironments()
            series.replace(with: Self.values(summary, scheduled: scheduled, schedule: schedule))
        } catch {
            // The catalog's series leave the export (they would be stale); `backupd_catalog_up` 0 says why.
            logger.warning("cannot read the catalog for metrics", metadata: ["error": "\(error)"])
            series.replace(with: [(Name.catalogUp, [], 0)])
        }
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
