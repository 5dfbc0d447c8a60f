import BackupCatalog
import BackupStorage
import BackupPostgres
import BackupRules
import BackupWire
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOPosix
import ServiceLifecycle

/// Settings of the job runner.
public struct JobSettings: Sendable {
    public var maximumConcurrentJobs = 2
    /// The share of the job slots one namespace may hold at once (at least one
    /// slot), so one namespace's slow or hung jobs never hold them all.
    public var namespaceShare = NamespaceShare.half
    /// On shutdown, how long running jobs may go on before they are cancelled.
    public var shutdownGrace: Duration = .seconds(30)
    public var leaseSeconds = 30
    /// How often the catalog is asked for work queued by other processes.
    public var pollInterval: Duration = .seconds(2)
    public var garbageCollectionInterval: Duration = .seconds(600)
    /// How often archives whose download URLs have all expired, and uploads
    /// abandoned, are removed.
    public var sweepInterval: Duration = .seconds(60)
    /// With object lock, how long past a backup's expiry its objects are
    /// retained: a nightly backup that reuses an object extends its
    /// retention once in this long rather than every night.
    public var retentionMargin: Duration = .seconds(7 * 86_400)
    /// With object lock, how far ahead objects are retained at most: a
    /// backup kept longer is retained this far, and extended as time passes.
    public var retentionCap: Duration = .seconds(400 * 86_400)
    public var tools = PostgresTools()
    /// zstd level of a dump's new chunks: 1 (fast, the default) to 19.
    public var dumpCompressionLevel = 1
    /// pg_restore --jobs: parallel workers of one restore.
    public var restoreParallelism = ProcessInfo.processInfo.activeProcessorCount
    /// Keep a restored environment's previous database and files until its next restore.
    public var keepPreviousOnRestore = true
    /// Fault injection, for tests of restore recovery only: the process
    /// kills itself right after a restore records this step.
    public var dieAfterRestoreStep: RestoreStep?
    public init() {}
}

/// Runs queued jobs from the catalog. Jobs are claimed under a lease that
/// this process renews while it works, so several processes can share one
/// catalog. When a lease expires (its process died), whichever runner sees
/// it first marks the job FAILED, or, for a restore, takes it over to clean
/// up or complete its swap. On shutdown, running jobs are stopped and marked
/// FAILED with the reason.
public final class JobRunner: Service, Sendable {
    private let catalog: Catalog
    private let stores: NamespaceStores
    /// Where the sweeps' blocking work runs (the blob store is asked there).
    private let threadPool: NIOThreadPool
    /// Where jobs write scratch files: swept of what a dead process's jobs left.
    private let scratchDirectory: String
    private let placement: Placement
    private let settings: JobSettings
    /// The clock of the runner's timers: polls, lease renewal, the shutdown grace period, retries.
    private let clock: any ServiceClock
    private let backupJob: BackupJob
    private let restoreJob: RestoreJob
    private let archiveJob: ArchiveJob
    private let uploadValidationJob: UploadValidationJob
    private let verifyJob: VerifyJob
    private let collector: BlobCollector
    /// With object lock: the store retains each finished backup's objects until its expiry.
    private let retention: RetentionLocks?
    private let archiveCache: ArchiveCache
    private let spool: UploadSpool
    private let uploads: UploadSettings
    private let logger: Logger
    private let owner = "\(ProcessInfo.processInfo.hostName):\(getpid()):\(UUID().uuidString.prefix(8))"
    private let signals = NIOLockedValueBox(Signals())
    private let metrics: ServiceMetrics
    /// Each element asks the loop to look for work now.
    private let wakeups: AsyncStream<Void>
    private let wakeupSource: AsyncStream<Void>.Continuation
    /// Each element asks housekeeping (collection, sweeps) to look whether it is due.
    private let housekeeping: AsyncStream<Void>
    private let housekeepingSource: AsyncStream<Void>.Continuation
    /// Finished when shutdown begins.
    private let shutdown: AsyncStream<Never>
    private let shutdownSource: AsyncStream<Never>.Continuation

    private struct Signals {
        var collectGarbage = true
        /// When shutdown began: the grace period of running jobs counts from here.
        var shutdownBegan: ContinuousClock.Instant?
        /// What each running job's execution hears from outside: a change of the job, the end of the grace
        /// period. One entry per job this process runs: their count is its slots in use.
        var executions: [String: AsyncStream<ExecutionEvent>.Continuation] = [:]
    }

    private enum ExecutionEvent: Sendable {
        case changeHeard, shutdownGraceOver
    }

    /// Where collection (and the readiness probe) works with the store. Never the jobs' threads: a job
    /// waiting for a collection to finish removing content it stores holds
    /// one of those, and a collection queued behind such jobs would never
    /// finish (a hostile tenant's many backups held every one).
    static var collectionThreads: NIOThreadPool { .singleton }

    init(catalog: Catalog, stores: NamespaceStores, scratchDirectory: String, placement: Placement, archiveCache: ArchiveCache, spool: UploadSpool,
         archiveGzipLevel: Int, uploads: UploadSettings,
         threadPool: NIOThreadPool, settings: JobSettings, clock: any ServiceClock, metrics: ServiceMetrics, logger: Logger) {
        self.catalog = catalog
        self.metrics = metrics
        self.stores = stores
        self.threadPool = threadPool
        self.scratchDirectory = scratchDirectory
        self.placement = placement
        self.settings = settings
        self.clock = clock
        self.logger = logger
        let dumps = DumpStorage(catalog: catalog, threadPool: threadPool, level: Int32(settings.dumpCompressionLevel))
        self.backupJob = BackupJob(catalog: catalog, stores: stores, scratchDirectory: scratchDirectory, databases: placement.databases, threadPool: threadPool,
                                   tools: settings.tools, clock: clock, dumps: dumps)
        self.restoreJob = RestoreJob(catalog: catalog, stores: stores, scratchDirectory: scratchDirectory, databases: placement.databases, threadPool: threadPool,
                                     tools: settings.tools, clock: clock, parallelJobs: max(1, settings.restoreParallelism),
                                     keepPrevious: settings.keepPreviousOnRestore, dieAfterStep: settings.dieAfterRestoreStep,
                                     logger: logger)
        self.archiveJob = ArchiveJob(catalog: catalog, clock: clock, stores: stores, cache: archiveCache, gzipLevel: archiveGzipLevel,
                                     threadPool: threadPool)
        self.uploadValidationJob = UploadValidationJob(catalog: catalog, clock: clock, stores: stores, scratchDirectory: scratchDirectory, spool: spool, limits: uploads.archiveLimits,
                                                       reservedDiskBytes: uploads.reservedDiskBytes,
                                                       threadPool: threadPool, tools: settings.tools, dumps: dumps)
        self.verifyJob = VerifyJob(catalog: catalog, clock: clock, stores: stores, scratchDirectory: scratchDirectory, threadPool: threadPool, tools: settings.tools,
                                   reservedDiskBytes: uploads.reservedDiskBytes)
        self.collector = BlobCollector(catalog: catalog, store: stores.base, threadPool: Self.collectionThreads)
        self.retention = stores.base.retaining.map {
            RetentionLocks(catalog: catalog, store: $0, margin: settings.retentionMargin, cap: settings.retentionCap, logger: logger)
        }
        self.archiveCache = archiveCache
        self.spool = spool
        self.uploads = uploads
        (wakeups, wakeupSource) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1))
        (housekeeping, housekeepingSource) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1))
        (shutdown, shutdownSource) = AsyncStream.makeStream()
    }

    /// The jobs this process runs now.
    var runningCount: Int { signals.withLockedValue { $0.executions.count } }

    /// Looks for work now rather than at the next poll.
    public func wake() {
        wakeupSource.yield()
    }

    /// Stops claiming jobs at once and starts running jobs' grace period.
    /// Called as soon as shutdown begins, before the service group comes to
    /// the runner's own turn.
    public func beginShutdown() {
        let now = clock.now
        signals.withLockedValue { if $0.shutdownBegan == nil { $0.shutdownBegan = now } }
        wakeupSource.finish()
        housekeepingSource.finish()
        shutdownSource.finish()
    }

    /// A job changed (the catalog's notification, from any process): if it runs here, its execution looks for a cancel.
    func jobChanged(_ jobID: String) {
        _ = signals.withLockedValue { $0.executions[jobID] }?.yield(.changeHeard)
    }

    /// Asks for a garbage collection of unreferenced blobs soon.
    public func requestGarbageCollection() {
        signals.withLockedValue { $0.collectGarbage = true }
        housekeepingSource.yield()
    }

    /// Looks for work whenever woken (a job was queued or ended here) and
    /// every poll interval (for work queued by other processes); on graceful
    /// shutdown stops claiming, gives running jobs their grace period, then
    /// stops them and returns once each has recorded how it ended.
    public func run() async throws {
        await withGracefulShutdownHandler {
            await withDiscardingTaskGroup { group in
                group.addTask {
                    while (try? await self.clock.sleep(for: self.settings.pollInterval)) != nil {
                        self.wake()
                        self.housekeepingSource.yield()
                    }
                }
                group.addTask { await self.stopRunningJobsAfterGrace() }
                group.addTask { await self.keepHouse() }
                if let retention { group.addTask { await self.retainFinishedBackups(retention) } }
                await claimAndRun()
                group.cancelAll()
            }
        } onGracefulShutdown: {
            self.beginShutdown()
        }
        // Shutdown may have begun early (`beginShutdown`); the service group counts a service that
        // returns before its own turn as failed, so the runner waits for that turn.
        try? await gracefulShutdown()
    }

    /// Claims and runs jobs until shutdown begins; returns when the jobs it started have ended.
    private func claimAndRun() async {
        await withDiscardingTaskGroup { group in
            wake()
            for await _ in wakeups {
                await failAbandonedJobs()
                // Shutdown may have begun while this round looked for abandoned jobs: nothing is claimed after it.
                while signals.withLockedValue({ $0.shutdownBegan == nil && $0.executions.count < settings.maximumConcurrentJobs }),
                      let (claimed, recovering) = await claim() {
                    let events = signals.withLockedValue { signals in
                        let (events, source) = AsyncStream<ExecutionEvent>.makeStream(bufferingPolicy: .unbounded)
                        signals.executions[claimed.job.id] = source
                        return events
                    }
                    group.addTask {
                        await self.execute(claimed, recovering: recovering, events: events)
                        self.signals.withLockedValue { $0.executions.removeValue(forKey: claimed.job.id)?.finish() }
                        self.wake()
                    }
                }
            }
        }
    }

    /// Collects unreferenced blobs and sweeps leftovers when asked and at
    /// their intervals, until shutdown begins, in a task of its own: however
    /// long a collection takes, jobs are claimed meanwhile (helper finding:
    /// in the claim loop, a tenant's thousands of deleted objects held every
    /// namespace's jobs back).
    private func keepHouse() async {
        housekeepingSource.yield()
        var lastCollection = clock.now
        var lastSweep = clock.now
        // A collection asked for (a job failed) finds what the job stored moments ago too young to take
        // (`BlobCollector.clockMargin`): one more, once the margin passed, takes it.
        var followUp: ContinuousClock.Instant?
        for await _ in housekeeping {
            let collect = signals.withLockedValue { signals in
                defer { signals.collectGarbage = false }
                return signals.collectGarbage
            }
            if collect || followUp.map({ clock.now >= $0 }) == true
                || lastCollection.duration(to: clock.now) >= settings.garbageCollectionInterval {
                lastCollection = clock.now
                followUp = collect ? clock.now + .seconds(BlobCollector.clockMargin) : nil
                await collectGarbage()
            }
            if collect || lastSweep.duration(to: clock.now) >= settings.sweepInterval {
                lastSweep = clock.now
                await sweepArchives()
                await sweepUploads()
                await sweepRestoreLeftovers()
            }
        }
    }

    /// Once shutdown has begun and the grace period has passed, stops every job still running.
    private func stopRunningJobsAfterGrace() async {
        for await _ in shutdown {}
        guard !Task.isCancelled else { return }
        let began = signals.withLockedValue { $0.shutdownBegan } ?? clock.now
        guard (try? await clock.sleep(for: clock.now.duration(to: began + settings.shutdownGrace))) != nil else { return }
        for execution in signals.withLockedValue({ Array($0.executions.values) }) { execution.yield(.shutdownGraceOver) }
    }

    /// The next job to run: a dead process's restore to recover first, else the oldest queued job.
    private func claim() async -> (ClaimedJob, recovering: Bool)? {
        do {
            if let abandoned = try await catalog.claimAbandonedRestore(owner: owner, leaseSeconds: settings.leaseSeconds) {
                return (abandoned, true)
            }
            let perNamespace = settings.namespaceShare.of(slots: settings.maximumConcurrentJobs)
            return try await catalog.claimNextJob(owner: owner, leaseSeconds: settings.leaseSeconds, perNamespace: perNamespace)
                .map { ($0, false) }
        } catch {
            logger.error("cannot claim jobs", metadata: ["error": "\(error)"])
            return nil
        }
    }

    private func failAbandonedJobs() async {
        do {
            let count = try await catalog.failAbandonedJobs()
            if count > 0 {
                logger.warning("failed abandoned jobs", metadata: ["count": "\(count)"])
                // What a dead process's jobs stored and left in the scratch folder goes now, not at the next interval.
                requestGarbageCollection()
            }
        } catch {
            logger.error("cannot check for abandoned jobs", metadata: ["error": "\(error)"])
        }
    }

    /// Has the store retain the objects of backups finished since the last
    /// look, every poll interval, in a task of its own: however many objects
    /// that takes, jobs are claimed meanwhile (helper finding: in the claim
    /// loop, a tenant lengthening its retention held every job back).
    private func retainFinishedBackups(_ retention: RetentionLocks) async {
        while (try? await clock.sleep(for: settings.pollInterval)) != nil {
            do {
                let retained = try await retention.run().retained
                if retained > 0 { logger.info("retained objects of finished backups", metadata: ["count": "\(retained)"]) }
            } catch {
                logger.error("cannot look for backups to retain", metadata: ["error": "\(error)"])
                try? await clock.sleep(for: settings.sweepInterval)
            }
        }
    }

    private func collectGarbage() async {
        do {
            let removed = try await collector.collect()
            if removed > 0 { logger.info("removed unreferenced blobs", metadata: ["count": "\(removed)"]) }
            try await sweepScratch()
        } catch {
            logHousekeepingFailure("garbage collection failed", error)
        }
    }

    /// Logs a failure of collection or a sweep; not their cancellation at shutdown, which is no failure.
    private func logHousekeepingFailure(_ message: Logger.Message, _ error: any Error) {
        guard !(error is CancellationError) else { return }
        logger.error(message, metadata: ["error": "\(error)"])
    }

    /// Removes what jobs of a dead process left in the scratch folder: files
    /// named for a job that no longer runs, and anything else older than a day.
    private func sweepScratch() async throws {
        let folder = scratchDirectory
        let fileManager = FileManager.default
        // Listed before the active jobs are read: a file listed here belongs to a job that had started.
        let names = try fileManager.contentsOfDirectory(atPath: folder)
        let active = try await catalog.activeJobIDs()
        let dayAgo = Date().addingTimeInterval(-86_400)
        var removed = 0
        for name in names {
            let path = "\(folder)/\(name)"
            let stale: Bool
            if let jobID = name.firstMatch(of: /^(?:dump|restore|list)-([0-9a-f-]{36})(?:\.backup)?$/)?.output.1 {
                stale = !active.contains(String(jobID))
            } else {
                let modified = (try? fileManager.attributesOfItem(atPath: path)[.modificationDate] as? Date) ?? Date()
                stale = modified < dayAgo
            }
            if stale, (try? fileManager.removeItem(atPath: path)) != nil { removed += 1 }
        }
        if removed > 0 { logger.info("removed leftover scratch files", metadata: ["count": "\(removed)"]) }
    }

    /// Forgets the archives whose URLs have all expired, whose backup was
    /// deleted (their blobs go with the next collection) or whose blob the
    /// store lost (a later request prepares them again rather than sharing
    /// a link that answers 404), and removes what a dead job left half-written.
    private func sweepArchives() async {
        do {
            let listing = try archiveCache.listing()
            let (ready, store) = (try await catalog.readyArchives(), stores.base)
            // A store that cannot be asked lost nothing.
            let lost = try await threadPool.runIfActive { Set(ready.filter { (try? store.contains($0.blob)) == false }.map(\.id)) }
            let preparing = try await catalog.expireArchives(lost: lost)
            let removed = archiveCache.sweep(listing: listing, preparing: preparing)
            if removed > 0 { logger.info("removed archives no longer downloadable", metadata: ["count": "\(removed)"]) }
        } catch {
            logHousekeepingFailure("cannot sweep the archive cache", error)
        }
    }

    /// Ends the uploads abandoned for their lifetime and removes their data,
    /// and whatever else the spool holds that no unfinished upload owns.
    private func sweepUploads() async {
        do {
            let listed = try spool.listedUploads()
            let (unfinished, known) = try await catalog.expireUploads(listed: listed, minimumRate: uploads.minimumRate,
                                                                      window: uploads.rateWindow)
            let removed = spool.sweep(listed: listed, unfinished: unfinished, known: known)
            if removed > 0 { logger.info("removed uploads no longer received", metadata: ["count": "\(removed)"]) }
        } catch {
            logHousekeepingFailure("cannot sweep the upload spool", error)
        }
    }

    /// Removes what restores that no longer run left on their environments'
    /// database servers and beside their file stores (staging and superseded
    /// copies) when they could not remove it themselves: a server restarted
    /// or a session held a database at the time.
    private func sweepRestoreLeftovers() async {
        do {
            for (job, environment, plan) in try await catalog.dueRestoreLeftovers(backOff: settings.sweepInterval) {
                // Previous copies are never the sweep's: a later restore of the environment may already rely on them.
                // `removeLeftovers` logs what it dropped, what it left as not its own, and what it could not remove.
                let inPlace = plan.step == .databasesSwapped || plan.step == .finished
                await restoreJob.removeLeftovers(job.id, environment, plan, restoreInPlace: inPlace)
            }
        } catch {
            logHousekeepingFailure("cannot sweep what restores left", error)
        }
    }

    /// Runs one job to its end and records how it ended, as `JobExecution`
    /// rules: the work is stopped (its task cancelled: tools killed, queries
    /// cancelled, staging dropped) by whichever comes first of a cancel
    /// request, a lost lease, or the end of the shutdown grace period, and
    /// the lease is renewed until the work has actually returned.
    private func execute(_ claimed: ClaimedJob, recovering: Bool, events: AsyncStream<ExecutionEvent>) async {
        let job = claimed.job
        // The request id of the call that queued the job, so its lines are found from the call's access-log line.
        let logger = self.logger.with(["job": "\(job.id)", "kind": "\(job.kind)", "environment": "\(job.namespace)/\(job.environment)"]
                                      .merging(claimed.requestID.isEmpty ? [:] : ["request_id": "\(claimed.requestID)"]) { $1 })
        logger.info("job started")
        let clock = self.clock
        let began = clock.now
        let execution = NIOLockedValueBox(JobExecution(leaseDuration: .seconds(settings.leaseSeconds), claimedAt: began))
        let (stops, stopWork) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))

        /// Carries out the machine's actions; the I/O they ask for feeds the machine again.
        @Sendable func carryOut(_ actions: [JobExecution.Action]) async {
            for action in actions {
                switch action {
                case .renewLease:
                    let next: [JobExecution.Action]
                    do {
                        let renewal = try await catalog.renewLease(jobID: job.id, owner: owner, leaseSeconds: settings.leaseSeconds)
                        next = execution.withLockedValue {
                            $0.leaseRenewed(held: renewal != nil, cancelRequested: renewal?.cancelRequested ?? false, now: clock.now)
                        }
                    } catch {
                        logger.warning("cannot renew the job's lease", metadata: ["error": "\(error)"])
                        next = execution.withLockedValue { $0.renewalFailed(now: clock.now) }
                    }
                    await carryOut(next)
                case .checkCancellation:
                    guard let requested = try? await catalog.isCancellationRequested(jobID: job.id) else { continue }
                    await carryOut(execution.withLockedValue { $0.cancellationChecked(requested: requested) })
                case .stopWork:
                    stopWork.yield()
                case .record:
                    preconditionFailure("recorded once the work has returned")
                }
            }
        }

        let result = await withTaskGroup(of: JobExecution.WorkResult?.self) { group in
            group.addTask {
                while (try? await clock.sleep(for: execution.withLockedValue { $0.renewalInterval })) != nil {
                    await carryOut(execution.withLockedValue { $0.renewalDue() })
                }
                return nil
            }
            group.addTask {
                for await event in events {
                    switch event {
                    case .changeHeard: await carryOut(execution.withLockedValue { $0.changeHeard() })
                    case .shutdownGraceOver: await carryOut(execution.withLockedValue { $0.shutdownGraceOver() })
                    }
                }
                return nil
            }
            let result = await stoppable(stops) { await self.perform(claimed, recovering: recovering) }
            group.cancelAll()
            return result
        }

        let actions = execution.withLockedValue { $0.workReturned(result) }
        guard case .record(let outcome)? = actions.first else { return }
        metrics.jobEnded(kind: "\(job.kind)", outcome: outcome.name, duration: began.duration(to: clock.now))
        switch outcome {
        case .finished:
            logger.info("job finished")
        case .deferred(let reason):
            logger.warning("restore left for recovery", metadata: ["reason": "\(reason)"])
            await record("deferral", logger: logger) { [settings] in
                try await $0.deferRestoreRecovery(jobID: job.id, owner: self.owner, seconds: settings.leaseSeconds)
            }
        case .cancelled:
            logger.info("job cancelled")
            await record("cancellation", logger: logger) { try await $0.cancelJob(id: job.id, reason: JobExecution.cancelledText) }
            requestGarbageCollection()
        case .failed(let reason):
            logger.error("job failed", metadata: ["reason": "\(reason)"])
            await record("failure", logger: logger) { try await $0.failJob(id: job.id, error: reason) }
            // What a failed job stored and never recorded goes at once.
            requestGarbageCollection()
        }
    }

    /// Runs `work` to its end; the first element of `stops` cancels it (and the wait goes on until it returns).
    private func stoppable<T: Sendable>(_ stops: AsyncStream<Void>, _ work: @escaping @Sendable () async -> T) async -> T {
        await withTaskGroup(of: T?.self) { group in
            group.addTask { await work() }
            group.addTask {
                for await _ in stops { break }
                return nil
            }
            var result: T?
            while let next = await group.next() {
                group.cancelAll()  // the work returned (the stop waiter goes), or a stop came (the work is cancelled)
                if let next { result = next }
            }
            return result!
        }
    }

    /// The job's own work, and how it came back.
    private func perform(_ claimed: ClaimedJob, recovering: Bool) async -> JobExecution.WorkResult {
        do {
            if !recovering && claimed.job.kind.usesEnvironment {
                // The disk and the database servers may have changed since the environment was placed.
                _ = try await placement.check(EnvironmentLocation(claimed.environment))
            }
            switch claimed.job.kind {
            case .backup: try await backupJob.run(claimed, owner: owner)
            case .restore where recovering: try await restoreJob.recover(claimed, owner: owner)
            case .restore: try await restoreJob.run(claimed, owner: owner)
            case .archive: try await archiveJob.run(claimed, owner: owner)
            case .uploadValidation: try await uploadValidationJob.run(claimed, owner: owner)
            case .verify: try await verifyJob.run(claimed, owner: owner)
            default: throw JobFailure(description: "this server does not run \(claimed.job.kind) jobs")
            }
            return .succeeded
        } catch let deferred as RestoreRecoveryDeferred {
            return .deferred(deferred.reason)
        } catch {
            // What the job's failure leaves out (a server path, a library's words) stays in the log.
            let reason = describeJobError(error)
            let detail = (error as? any ReportableError)?.logDetail ?? String(describing: error)
            if detail != reason && !Task.isCancelled {  // a stopped job's work ends cancelled: the stop is its story
                logger.error("job error", metadata: ["job": "\(claimed.job.id)", "error": "\(detail)"])
            }
            return .failed(reason)
        }
    }

    /// Records how a job ended, even when its task was cancelled (shutdown),
    /// trying again on fresh connections for a while: a catalog that dropped
    /// its connections must not turn the real reason into "lease expired".
    private func record(_ what: String, logger: Logger, _ write: @escaping @Sendable (Catalog) async throws -> Void) async {
        let (catalog, clock) = (self.catalog, self.clock)
        _ = try? await withoutCancellation {
            for attempt in 1...5 {
                do {
                    try await write(catalog)
                    return
                } catch {
                    logger.error("cannot record the job's \(what)", metadata: ["error": "\(error)", "attempt": "\(attempt)"])
                    try? await clock.sleep(for: .seconds(attempt))
                }
            }
        }
    }
}

/// A job's failure as a person reads it: the public side of the error
/// (`publicError`), or the tool's, the dump's or the app database's own words,
/// which are the tenant's. Details of the server's own go to the log only
/// (`JobRunner.perform`).
func describeJobError(_ error: any Error) -> String {
    switch error {
    case let error as JobFailure: error.description
    case let error as ToolFailure: error.description
    case let error as DumpReadError: error.description
    case let error as FileStoreLayout.InvalidKey: error.description
    case let error as FileDocumentError: error.description
    case let error as PostgresError: "PostgreSQL: \(error.message)"
    case let error as any ReportableError: error.publicError.description
    default: "internal error; the server log has the details"
    }
}

/// Runs `body` to its end even if the calling task is cancelled: for work
/// that must not stop halfway (a restore's swap) and for the bookkeeping that
/// follows a cancellation (marking a job failed).
func withoutCancellation<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await Task { try await body() }.value
}

extension Logger {
    func with(_ metadata: Logger.Metadata) -> Logger {
        var copy = self
        for (key, value) in metadata { copy[metadataKey: key] = value }
        return copy
    }
}
