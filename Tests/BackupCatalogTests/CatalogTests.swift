@testable import BackupCatalog
import BackupRules
@testable import BackupStorage
import BackupPostgres
import BackupTestSupport
import BackupWire
import Foundation
import NIOPosix
import Synchronization
import Testing

/// The catalog against the private PostgreSQL cluster, one fresh database per test.
@Suite struct CatalogTests {
    private func withCatalog(validateAfterIdle: Duration = .seconds(10), _ body: (Catalog, String) async throws -> Void) async throws {
        try await TestCatalog.with(validateAfterIdle: validateAfterIdle) { catalog, database, _ in try await body(catalog, database) }
    }

    private func register(_ catalog: Catalog, _ name: String = "shop-production") async throws {
        try await TestCatalog.register(catalog, name)
    }

    @Test func idleConnectionsThatDiedAreReplacedBeforeUse() async throws {
        try await withCatalog(validateAfterIdle: .zero) { catalog, database in
            try await register(catalog)
            // The server drops every session of the catalog, as a restart or failover would.
            try await TestPostgres.query("postgres", """
                SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()
                """, database)
            // Until the server has ended them all.
            for _ in 0..<1000 {
                let left = try await TestPostgres.query("postgres", "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = $1", database)
                if left[0].int64("n") == 0 { break }
                try await Task.sleep(for: .milliseconds(5))
            }
            let environments = try await catalog.listEnvironments(namespace: "acme")
            #expect(environments.items.map(\.name) == ["shop-production"])
        }
    }

    /// A helper's finding (issue 22): catalog connections had no TCP
    /// keepalive, so a catalog gone silent without a reset held the calls
    /// that drew its connections for some fifteen minutes. The pool's
    /// connections carry keepalives and a TCP user timeout unless the
    /// operator's connection string sets its own.
    @Test func catalogConnectionsCarryKeepalivesUnlessTheOperatorSetsThem() async throws {
        try await withCatalog { catalog, database in
            let settings = Dictionary(try ConnectionString.settings(catalog.pool.connectionString.revealed)) { first, _ in first }
            #expect(settings["keepalives_idle"] == "30" && settings["tcp_user_timeout"] == "60000" && settings["dbname"] == database)
            #expect(try await catalog.listEnvironments(namespace: "acme").items.isEmpty)
        }
        let own = ConnectionString.adding(Catalog.connectionDefaults, to: "host=127.0.0.1 keepalives_idle=5 dbname=x")
        let settings = Dictionary(try ConnectionString.settings(own)) { first, _ in first }
        #expect(settings["keepalives_idle"] == "5" && settings["keepalives_count"] == "3")
    }

    /// Closing the pool refuses new leases and waits for the lent ones.
    @Test func closingThePoolRefusesNewLeasesAndWaitsForLentOnes() async throws {
        try await withCatalog { catalog, _ in
            let lent = try await catalog.pool.withConnection { $0.completedStatements >= 0 }  // opens one connection
            #expect(lent)
            let (started, release) = (BackupTestSupport.Atomic(false), BackupTestSupport.Atomic(false))
            let holder = Task {
                try await catalog.pool.withConnection { connection in
                    started.value = true
                    while !release.value { Thread.sleep(forTimeInterval: 0.01) }
                    return try connection.query("SELECT 1 AS one")[0].string("one")
                }
            }
            while !started.value { try await Task.sleep(for: .milliseconds(10)) }
            let closed = BackupTestSupport.Atomic(false)
            let closing = Task {
                await catalog.pool.close()
                closed.value = true
            }
            // Leases go on being granted until the close begins, and are refused from then on.
            let deadline = ContinuousClock.now + .seconds(30)
            var refused: (any Error)?
            while refused == nil, ContinuousClock.now < deadline {
                do {
                    _ = try await catalog.pool.withConnection { _ in 1 }
                    try await Task.sleep(for: .milliseconds(10))
                } catch {
                    refused = error
                }
            }
            #expect(refused is PostgresError, "\(String(describing: refused))")
            #expect(!closed.value, "close returned while a connection was lent")
            release.value = true
            #expect(try await holder.value == "1")
            await closing.value
            #expect(closed.value)
        }
    }

    @Test func migrationsRunOnceEvenWhenProcessesStartTogether() async throws {
        try await withCatalog { catalog, database in
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<3 { group.addTask { try await catalog.migrate() } }
                try await group.waitForAll()
            }
            let versions = try await TestPostgres.query(database, "SELECT version FROM schema_migrations").map { $0.string("version") }
            #expect(versions == Migrations.all.map { String($0.version) })
        }
    }

    /// Helper finding (issue 23): a process of an older version started on
    /// a catalog a newer one migrated, and its collection took every
    /// encrypted blob for unreferenced. A catalog migrated past what a
    /// process knows is refused, naming both versions, and left as it was.
    @Test func aCatalogANewerBackupdMigratedIsRefused() async throws {
        try await withCatalog { catalog, database in
            let newer = (Migrations.all.last?.version ?? 0) + 1
            try await TestPostgres.query(database, "INSERT INTO schema_migrations (version) VALUES ($1)", String(newer))
            await #expect(throws: BackupError.failedPrecondition(
                "the catalog was migrated by a newer backupd (to version \(newer); this one knows up to \(newer - 1)): "
                    + "run that version, or restore the catalog from before the upgrade")) {
                try await catalog.migrate()
            }
        }
    }

    @Test func theDatabaseAllowsOneActiveJobPerEnvironment() async throws {
        try await withCatalog { catalog, database in
            try await register(catalog)
            try await register(catalog, "shop-acceptance")
            let (_, job) = try await catalog.createBackup(namespace: "acme", environment: "shop-production", kind: .onDemand, comment: "", actor: "t")
            await #expect(throws: BackupError.self) {
                _ = try await catalog.createBackup(namespace: "acme", environment: "shop-production", kind: .onDemand, comment: "", actor: "t")
            }
            do {
                _ = try await catalog.createBackup(namespace: "acme", environment: "shop-production", kind: .onDemand, comment: "", actor: "t")
            } catch let BackupError.failedPrecondition(message) {
                #expect(message.contains(job.id))
            }
            // Another environment is not blocked, and nothing half-written was left by the refusals.
            _ = try await catalog.createBackup(namespace: "acme", environment: "shop-acceptance", kind: .onDemand, comment: "", actor: "t")
            await #expect(try TestPostgres.query(database, "SELECT count(*) AS n FROM snapshots")[0].string("n") == "2")
            await #expect(try TestPostgres.query(database, "SELECT count(*) AS n FROM jobs")[0].string("n") == "2")
        }
    }

    /// Text arrays go to PostgreSQL as array literals: every element comes
    /// back as it was, whatever it holds.
    @Test func aTextArrayReachesPostgreSQLElementByElement() async throws {
        try await withCatalog { catalog, _ in
            let elements = ["", "plain", "with \"quotes\"", "back\\slash", "comma, and {braces}", "NULL", "ünïcødé ✓", " spaced "]
            let back = try await catalog.pool.withConnection { connection in
                try connection.query("SELECT unnest($1::text[]) AS element", elements).map { $0.string("element") }
            }
            #expect(back == elements)
        }
    }

    @Test func leasesBelongToOneOwner() async throws {
        try await withCatalog { catalog, _ in
            try await register(catalog)
            _ = try await catalog.createBackup(namespace: "acme", environment: "shop-production", kind: .onDemand, comment: "", actor: "t")
            let claimed = try #require(try await catalog.claimNextJob(owner: "a", leaseSeconds: 30, perNamespace: 1))
            #expect(try await catalog.claimNextJob(owner: "b", leaseSeconds: 30, perNamespace: 1) == nil)
            #expect(try await catalog.renewLease(jobID: claimed.job.id, owner: "a", leaseSeconds: 30) == LeaseRenewal(cancelRequested: false))
            #expect(try await catalog.renewLease(jobID: claimed.job.id, owner: "b", leaseSeconds: 30) == nil)
            await #expect(throws: BackupError.self) {
                try await catalog.finishBackup(jobID: claimed.job.id, owner: "b", manifest: BackupManifest(
                    dump: .blob(StoredBlob(hash: ContentHash.of([]), size: 0, written: true)), files: [], postgresVersion: "", databaseSize: 0))
            }
            #expect(try await catalog.failAbandonedJobs() == 0)
            _ = try await catalog.renewLease(jobID: claimed.job.id, owner: "a", leaseSeconds: 0)
            try await Task.sleep(for: .milliseconds(50))
            #expect(try await catalog.failAbandonedJobs() == 1)
            let failed = try await catalog.backup(id: claimed.job.backupID)
            #expect(failed.status == .failed && failed.error.contains("lease"))
        }
    }
}

@Suite struct ForeignDatabaseTests {
    @Test func aDatabaseWithTablesButNoMigrationsIsNeverMadeACatalog() async throws {
        let database = try await TestPostgres.createDatabase("foreign", template: "demo_app")
        defer { TestPostgres.dropDatabase(database) }
        let threadPool = NIOThreadPool(numberOfThreads: 1)
        threadPool.start()
        let catalog = Catalog(connectionString: TestPostgres.connectionString(database), maximumConnections: 1, threadPool: threadPool)
        do {
            try await catalog.migrate()
            Issue.record("migrated a database that is not a catalog")
        } catch let error as CatalogError {
            #expect(error.description.contains("not a backupd catalog"))
        }
        await catalog.pool.close()
        try await threadPool.shutdownGracefully()
        let tables = try await TestPostgres.query(database, "SELECT count(*) AS n FROM pg_tables WHERE tablename = 'schema_migrations'")
        #expect(tables[0].string("n") == "0")
    }
}
