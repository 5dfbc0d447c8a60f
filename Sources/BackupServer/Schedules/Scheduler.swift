import BackupCatalog
import BackupRules
import BackupStorage
import Foundation
import Logging
import NIOConcurrencyHelpers
import ServiceLifecycle

/// Settings of the scheduler of automatic backups and expiry.
public struct ScheduleSettings: Sendable {
    /// Makes nightly backups and deletes expired ones. Several processes on
    /// one catalog may all run it: the catalog lets one backup per night through.
    public var enabled = true
    /// How often due nights and expired backups are looked for.
    public var interval: Duration = .seconds(30)
    /// How long after its window's start an environment's backup may begin:
    /// each environment has its own fixed place in this spread.
    public var spread: Duration = .seconds(3600)
    /// The waits before a failed night's second and third attempts, counted
    /// from when the failed attempt started.
    public var retryDelays: [Duration] = [.seconds(300), .seconds(1200)]
    /// What "now" is for due nights, backups' creation and expiry; tests
    /// pass a clock of their own to live through many nights.
    public var clock: @Sendable () -> Date = { Date() }

    public init() {}

    /// Where in the spread `environment`'s automatic backup starts each night.
    func offset(of environment: ScheduledEnvironment) -> TimeInterval {
        NightlyWindow.offset(for: "\(environment.namespace)/\(environment.name)", spread: spread)
    }
}

/// Starts each environment's nightly backup when its window opens and
/// deletes backups whose retention has run out. What it decides comes from
/// the catalog each time (schedules, the night's earlier attempts), so a
/// restart or a second process changes nothing: a night missed while no
/// process ran is made up within 24 hours of its window.
public final class Scheduler: Service, Sendable {
    private let catalog: Catalog
    private let jobs: JobRunner
    private let settings: ScheduleSettings
    private let logger: Logger
    /// Per environment, the last night known to be done (made or given up), so a tick asks the catalog only about the rest.
    private let settled = NIOLockedValueBox<[Int64: Night]>([:])
    private let wakeups: AsyncStream<Void>
    private let wakeupSource: AsyncStream<Void>.Continuation

    /// The clock its looks are timed on (the server's); `settings.clock` is
    /// the calendar's, which says which night it is.
    private let ticker: any ServiceClock

    init(catalog: Catalog, jobs: JobRunner, settings: ScheduleSettings, clock: any ServiceClock, logger: Logger) {
        self.ticker = clock
        self.catalog = catalog
        self.jobs = jobs
        self.settings = settings
        self.logger = logger
        (wakeups, wakeupSource) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1))
    }

    /// Looks for due nights and expired backups now rather than at the next interval.
    public func wake() {
        wakeupSource.yield()
    }

    public func run() async throws {
        guard settings.enabled else {
            try? await gracefulShutdown()
            return
        }
        await cancelWhenGracefulShutdown {
            await withDiscardingTaskGroup { group in
                group.addTask {
                    while (try? await self.ticker.sleep(for: self.settings.interval)) != nil { self.wake() }
                }
                self.wake()
                for await _ in self.wakeups {
                    await self.tick()
                }
                group.cancelAll()
            }
        }
    }

    /// One look: expired backups go, then each due night's backup is asked for.
    func tick() async {
        let now = settings.clock()
        do {
            let expired = try await catalog.expireBackups(now: now)
            if expired > 0 {
                logger.info("deleted expired backups", metadata: ["count": "\(expired)"])
                jobs.requestGarbageCollection()
            }
        } catch {
            logger.error("cannot delete expired backups", metadata: ["error": "\(error)"])
        }
        let environments: [ScheduledEnvironment]
        do {
            environments = try await catalog.scheduledEnvironments()
        } catch {
            logger.error("cannot read the schedules", metadata: ["error": "\(error)"])
            return
        }
        var queued = false
        for environment in environments {
            if !environment.window.knowsZone {
                logger.warning("the schedule's time zone is unknown here; its nightly window is counted in UTC", metadata: [
                    "environment": "\(environment.namespace)/\(environment.name)", "time_zone": "\(environment.window.zoneName)",
                ])
            }
            let offset = settings.offset(of: environment)
            guard let night = environment.window.dueNight(at: now, offset: offset, since: environment.since),
                  settled.withLockedValue({ $0[environment.id] }) != night else { continue }
            do {
                switch try await catalog.startNightlyBackup(environment, night: night, now: now, retryDelays: settings.retryDelays) {
                case .queued(let jobID):
                    queued = true
                    logger.info("started the nightly backup", metadata: [
                        "environment": "\(environment.namespace)/\(environment.name)", "night": "\(night)", "kind": "\(night.kind)",
                        "job": "\(jobID)",
                    ])
                case .made, .gaveUp:
                    settled.withLockedValue { $0[environment.id] = night }
                    logger.debug("the night is settled: its backup was made or given up", metadata: [
                        "environment": "\(environment.namespace)/\(environment.name)", "night": "\(night)",
                    ])
                case .inProgress, .retryAt, .busy:
                    break
                }
            } catch {
                logger.error("cannot start the nightly backup", metadata: [
                    "environment": "\(environment.namespace)/\(environment.name)", "error": "\(error)",
                ])
            }
        }
        if queued { jobs.wake() }
    }
}
