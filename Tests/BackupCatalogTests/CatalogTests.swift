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
        let database = try TestPostgres.createDatabase("catalog")
        let threadPool = NIOThreadPool(numberOfThreads: 4)
        threadPool.start()
        let catalog = Catalog(connectionString: TestPostgres.connectionString(database), maximumConnections: 4, threadPool: threadPool,
                              validateAfterIdle: validateAfterIdle)
        do {
            try await catalog.migrate()
            try await body(catalog, database)
        } catch {
            await catalog.pool.close()
            try? await threadPool.shutdownGracefully()
            TestPostgres.dropDatabase(database)
            throw error
        }
        await catalog.pool.close()
        try await threadPool.shutdownGracefully()
        TestPostgres.dropDatabase(database)
    }

    private func register(_ catalog: Catalog, _ name: String = "shop-production") async throws {
        _ = try await catalog.registerEnvironment(.with {
            $0.namespace = "acme"; $0.name = name; $0.app = "shop"; $0.databaseURL = "dbname=x"; $0.fileStorePath = "/srv/files"
        })
    }

    @Test func idleConnectionsThatDiedAreReplacedBeforeUse() async throws {
        try await withCatalog(validateAfterIdle: .zero) { catalog, database in
            try await register(catalog)
            // The server drops every session of the catalog, as a restart or failover would.
            try TestPostgres.query("postgres", """
                SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()
                """, database)
            try await Task.sleep(for: .milliseconds(200))
            let environments = try await catalog.listEnvironments(namespace: "acme")
            #expect(environments.items.map(\.name) == ["shop-production"])
        }
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
            let versions = try TestPostgres.query(database, "SELECT version FROM schema_migrations").map { $0.string("version") }
            #expect(versions == Migrations.all.map { String($0.version) })
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
            #expect(try TestPostgres.query(database, "SELECT count(*) AS n FROM snapshots")[0].string("n") == "2")
            #expect(try TestPostgres.query(database, "SELECT count(*) AS n FROM jobs")[0].string("n") == "2")
        }
    }

    /// Collection runs beside jobs (issue 19: a held job kept it from running
    /// at all). Blobs no snapshot refers to go, recorded in the catalog or
    /// not (a failed job may have stored one it never recorded), unless used
    /// since the oldest running job began: what that job stored and has yet
    /// to reference stays, however long it is held.
    @Test func collectionRunsBesideJobsAndKeepsWhatARunningJobUsed() async throws {
        try await withCatalog { catalog, database in
            try await register(catalog)
            let scratch = try ScratchDirectory("gc")
            defer { scratch.remove() }
            let store = try LocalBlobStore(root: scratch.path + "/blobs")
            let hourAgo = Date().addingTimeInterval(-3600)
            // From before the job: recorded and unreferenced, and never recorded.
            let oldRecorded = try store.storing("old recorded"), oldUnrecorded = try store.storing("old, never recorded")
            try await catalog.blobLedger(store: store).record([oldRecorded])
            try TestPostgres.query(database, "UPDATE blobs SET used_at = now() - interval '1 hour'")
            for blob in [oldRecorded, oldUnrecorded] {
                try FileManager.default.setAttributes([.modificationDate: hourAgo], ofItemAtPath: store.path(for: blob.hash))
            }
            _ = try await catalog.createBackup(namespace: "acme", environment: "shop-production", kind: .onDemand, comment: "", actor: "t")
            let held = try #require(try await catalog.claimNextJob(owner: "a", leaseSeconds: 300, perNamespace: 1))
            // The running job's own: one recorded, one stored and not recorded yet.
            let recorded = try store.storing("recorded"), unrecorded = try store.storing("not recorded yet")
            try await catalog.blobLedger(store: store).record([recorded])

            #expect(try await catalog.collectGarbage(in: store) == 2)
            #expect(!store.contains(oldRecorded.hash) && !store.contains(oldUnrecorded.hash))
            #expect(store.contains(recorded.hash) && store.contains(unrecorded.hash))

            try await catalog.failJob(id: held.job.id, error: "held no longer")
            #expect(try await catalog.collectGarbage(in: store) == 2)
            #expect(!store.contains(recorded.hash) && !store.contains(unrecorded.hash))
        }
    }

    /// A blob collected just before a job records it (its last backup was
    /// deleted as the job ran) fails the job, which can run again; it is
    /// never referenced while missing. Reused content is kept only if there.
    @Test func aBlobCollectedBeforeAJobRecordsItFailsTheJobRatherThanTheBackup() async throws {
        try await withCatalog { catalog, database in
            let scratch = try ScratchDirectory("ledger")
            defer { scratch.remove() }
            let store = try LocalBlobStore(root: scratch.path + "/blobs")
            let (gone, there) = (try store.storing("gone"), try store.storing("there"))
            let ledger = catalog.blobLedger(store: store)
            try await ledger.record([gone, there])
            try TestPostgres.query(database, "UPDATE blobs SET used_at = now() - interval '1 hour' WHERE sha256 = $1", gone.hash.hex)
            try TestPostgres.query(database, "UPDATE blobs SET used_at = now() - interval '1 hour' WHERE sha256 = $1", there.hash.hex)
            // Reused by a running job before the collection: kept.
            try await register(catalog)
            _ = try await catalog.createBackup(namespace: "acme", environment: "shop-production", kind: .onDemand, comment: "", actor: "t")
            _ = try #require(try await catalog.claimNextJob(owner: "a", leaseSeconds: 300, perNamespace: 1))
            #expect(try await ledger.keep([there]).map(\.hash) == [there.hash])
            #expect(try await catalog.collectGarbage(in: store) == 1)
            #expect(store.contains(there.hash) && !store.contains(gone.hash))
            #expect(try await ledger.keep([gone, there]).map(\.hash) == [there.hash])
            await #expect(throws: BackupError.failedPrecondition(
                "1 blobs this job stored or reused were collected as it ran (the backups that held them were deleted); run it again")) {
                try await ledger.record([gone])
            }
        }
    }

    /// Found at the member cap: a job recording documents that share content
    /// (two empty files, the same logo twice) in one batch failed, as one
    /// statement may not upsert a row twice. Each content is one row.
    @Test func blobsThatShareContentAreRecordedOnce() async throws {
        try await withCatalog { catalog, database in
            let scratch = try ScratchDirectory("ledger-shared")
            defer { scratch.remove() }
            let store = try LocalBlobStore(root: scratch.path + "/blobs")
            let (empty, logo) = (try store.storing("empty page"), try store.storing("logo"))
            let recorded = [empty, logo, empty, empty, logo]
            try await catalog.blobLedger(store: store).record(recorded)
            #expect(try await catalog.blobLedger(store: store).keep(recorded) == recorded)
            let rows = try TestPostgres.query(database, "SELECT count(*) AS n FROM blobs")
            #expect(rows[0].int64("n") == 2)
        }
    }

    /// Helper finding: collection listed files no row knew, checked the rows,
    /// then unlinked them; a job recording one of them in between finished a
    /// backup whose blob was gone. Each such file now gets a row of
    /// collection's own while it is unlinked: a record in flight (here a
    /// transaction left open) makes collection wait, and the file stays.
    @Test func aFileAJobIsRecordingIsNotCollectedAsUnrecorded() async throws {
        try await withCatalog { catalog, database in
            let scratch = try ScratchDirectory("gc-race")
            defer { scratch.remove() }
            let store = try LocalBlobStore(root: scratch.path + "/blobs")
            let reused = try store.storing("left by a failed upload, reused by a job")
            try FileManager.default.setAttributes([.modificationDate: Date().addingTimeInterval(-3600)], ofItemAtPath: store.path(for: reused.hash))
            let recording = try PostgresConnection(TestPostgres.connectionString(database))
            try recording.query("BEGIN")
            try recording.query("INSERT INTO blobs (sha256, size) VALUES ($1, $2) ON CONFLICT (sha256) DO UPDATE SET used_at = now()",
                                reused.hash.hex, reused.size)
            let collection = Task { try await catalog.collectGarbage(in: store) }
            try await Task.sleep(for: .milliseconds(500))
            try recording.query("COMMIT")
            #expect(try await collection.value == 0)
            #expect(store.contains(reused.hash), "a blob a job recorded was collected")
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
        let database = try TestPostgres.createDatabase("foreign", template: "demo_app")
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
        let tables = try TestPostgres.query(database, "SELECT count(*) AS n FROM pg_tables WHERE tablename = 'schema_migrations'")
        #expect(tables[0].string("n") == "0")
    }
}

extension LocalBlobStore {
    /// Stores `text` as a blob, as a job would store a dump.
    func storing(_ text: String) throws -> StoredBlob {
        let path = "\(scratchDirectory)/\(text)"
        try text.write(toFile: path, atomically: false, encoding: .utf8)
        return try adopt(path)
    }
}
