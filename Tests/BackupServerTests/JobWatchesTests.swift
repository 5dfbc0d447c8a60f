import BackupCatalog
import BackupRules
import BackupStorage
@testable import BackupServer
import BackupTestSupport
import BackupWire
import NIOPosix
import Testing

/// WatchJob's readings come from the catalog's job notifications, not from
/// polling: a change reaches the watchers as it commits.
@Suite struct JobWatchesTests {
    @Test func aJobsChangeReachesItsWatchersAsItCommits() async throws {
        let database = try await TestPostgres.createDatabase("catalog")
        defer { TestPostgres.dropDatabase(database) }
        let threads = NIOThreadPool(numberOfThreads: 2)
        threads.start()
        defer { threads.shutdownGracefully { _ in } }
        let catalog = Catalog(connectionString: TestPostgres.connectionString(database), maximumConnections: 2, threadPool: threads)
        try await catalog.migrate()
        _ = try await catalog.registerEnvironment(.with {
            $0.namespace = "acme"; $0.name = "shop-production"; $0.app = "shop"; $0.databaseURL = "dbname=x"; $0.fileStorePath = "/srv/files"
        })
        let (_, job) = try await catalog.createBackup(namespace: "acme", environment: "shop-production", kind: .onDemand, comment: "", actor: "t")

        // A safety net on a clock that never moves: only a notification can bring the change.
        let watches = JobWatches(catalog: catalog, safetyInterval: .seconds(1), clock: ManualClock())
        let listening = Task { await catalog.listenForJobChanges { watches.changed($0) } }
        defer { listening.cancel() }
        try await waitUntilListening(in: database)
        let seen = try await within(.seconds(30)) {
            var statuses: [JobStatus] = []
            for await reading in try watches.readings(of: job.id, token: "t") {
                statuses.append(reading.status)
                if statuses.count == 1 {
                    try await TestPostgres.query(database, "UPDATE jobs SET phase = 'dumping' WHERE id = $1", job.id)
                } else if statuses.count == 2 {
                    try await TestPostgres.query(database, "UPDATE jobs SET status = 'failed', error = 'test' WHERE id = $1", job.id)
                }
            }
            return statuses
        }
        #expect(seen == [.queued, .queued, .failed])
        await catalog.pool.close()
    }

    /// A change whose notification never came (the listener's connection
    /// was lost) reaches the watchers at the safety net's next reading, on
    /// the server's clock: moved by hand here, so the test waits for no timer.
    @Test func aChangeNoNotificationBringsArrivesAtTheSafetyNetsReading() async throws {
        try await TestCatalog.with { catalog, database, _ in
            try await TestCatalog.register(catalog)
            let (_, job) = try await catalog.createBackup(namespace: "acme", environment: "shop-production", kind: .onDemand,
                                                          comment: "", actor: "t")
            let clock = ManualClock()
            // No listener: only the safety net reads.
            let watches = JobWatches(catalog: catalog, safetyInterval: .seconds(1), clock: clock)
            let seen = try await within(.seconds(30)) {
                var statuses: [JobStatus] = []
                for await reading in try watches.readings(of: job.id, token: "t") {
                    statuses.append(reading.status)
                    if statuses.count == 1 {
                        try await TestPostgres.query(database, "UPDATE jobs SET status = 'failed', error = 'test' WHERE id = $1", job.id)
                        // Until the clock moves nothing is read again; once it has moved a second, the change is.
                        for _ in 0..<1000 where clock.sleepers == 0 { try await Task.sleep(for: .milliseconds(5)) }
                        clock.advance(by: .seconds(1))
                    }
                }
                return statuses
            }
            #expect(seen == [.queued, .failed])
        }
    }
}
