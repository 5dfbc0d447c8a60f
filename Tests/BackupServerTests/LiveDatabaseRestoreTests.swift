import BackupRules
import BackupStorage
import BackupPostgres
import BackupServer
import BackupTestSupport
import BackupWire
import Foundation
import Testing

/// An app as production runs it: on a database server of its own (not the
/// catalog's), owned by a role that is not a superuser (as the README
/// requires), with autovacuum busy and other roles' sessions about.
struct ClusterApp: Sendable {
    let cluster: TestCluster
    let database = "shop"
    let fileStore: String
    let scratch: ScratchDirectory
    static let owner = "app_owner"

    var url: String { cluster.connectionString(database, user: Self.owner) }

    /// The demo app's database and files, on `cluster`, owned by `app_owner`.
    static func make(on cluster: TestCluster) throws -> ClusterApp {
        let postgres = try PostgresConnection(cluster.connectionString("postgres"))
        try postgres.query("CREATE ROLE \(owner) LOGIN CREATEDB")
        try postgres.query("CREATE DATABASE shop OWNER \(owner)")
        let copy = try runCommand("/bin/sh", ["-c", """
            /usr/bin/pg_dump --no-owner --no-privileges '\(TestPostgres.connectionString("demo_app"))' \
            | /usr/bin/psql -X -q -v ON_ERROR_STOP=1 '\(cluster.connectionString("shop", user: owner))'
            """])
        guard copy.status == 0 else { throw TestSupportError("cannot copy the demo app: \(copy.standardError)") }
        // A log of a few hundred thousand rows: enough that autovacuum is still at work on a freshly restored copy.
        try PostgresConnection(cluster.connectionString("shop", user: owner)).query("""
            CREATE TABLE "shop$event" AS SELECT i AS id, md5(i::text) AS detail, now() AS at FROM generate_series(1, 300000) AS i
            """)
        let scratch = try ScratchDirectory("cluster-app")
        let files = try runCommand("/bin/cp", ["-a", TestPostgres.demoFiles, scratch.path + "/files"])
        guard files.status == 0 else { throw TestSupportError("cannot copy the demo files: \(files.standardError)") }
        return ClusterApp(cluster: cluster, fileStore: scratch.path + "/files", scratch: scratch)
    }

    /// Every table's fingerprint and every file's, of the database `name` (the app's own by default).
    func state(of name: String? = nil, folder: String? = nil) throws -> EnvironmentSnapshot {
        EnvironmentSnapshot(tables: try TestPostgres.tableFingerprints(connectingTo: cluster.connectionString(name ?? database)),
                            files: try folderFingerprint(folder ?? fileStore))
    }

    /// Databases on the app's server whose name contains `fragment`.
    func databases(containing fragment: String) throws -> [String] {
        try PostgresConnection(cluster.connectionString("postgres"))
            .query("SELECT datname FROM pg_database WHERE strpos(datname, $1) > 0 ORDER BY 1", fragment).map { $0.string("datname") }
    }

    /// Folders beside the file store a restore made and left.
    func restoreFoldersLeft() throws -> [String] {
        let parent = URL(fileURLWithPath: fileStore).deletingLastPathComponent().path
        return try FileManager.default.contentsOfDirectory(atPath: parent).filter { $0.contains(".restore-") }
    }

    /// No staging or superseded database, no restore folder beside the store.
    func expectNothingLeft(sourceLocation: SourceLocation = #_sourceLocation) throws {
        #expect(try databases(containing: "_restore_").isEmpty, sourceLocation: sourceLocation)
        #expect(try restoreFoldersLeft().isEmpty, sourceLocation: sourceLocation)
    }

    func remove() {
        cluster.remove()
        scratch.remove()
    }
}

struct EnvironmentSnapshot: Equatable {
    let tables: [String: String]
    let files: [String: String]
}

/// Runs `body` with a fresh cluster (with `settings`) holding a `ClusterApp`, removed whatever happens.
func withClusterApp<T: Sendable>(settings: [String: String] = [:], _ body: (ClusterApp) async throws -> T) async throws -> T {
    try await using(try ClusterApp.make(on: try TestCluster.start(settings: settings)), removedBy: { $0.remove() }, body)
}

/// Registers the cluster app as acme's shop-production, stopped.
private func register(_ app: ClusterApp, on server: some BackupTestServer) async throws {
    try await server.withClient(token: server.platformToken) { client in
        _ = try await client.unary(Backups.registerEnvironment, .with {
            $0.namespace = TestServer.namespace; $0.name = "shop-production"; $0.app = "shop"
            $0.databaseURL = app.url; $0.fileStorePath = app.fileStore; $0.state = .stopped
        })
    }
}

/// A finished backup of shop-production, by id.
private func backUp(_ server: some BackupTestServer) async throws -> String {
    try await server.withClient { client in
        let created = try await client.unary(Backups.createBackup, .with {
            $0.namespace = TestServer.namespace; $0.environment = "shop-production"
        })
        let job = try await waitForJob(created.job.id, on: client)
        #expect(job.status == .finished, "\(job.error)")
        return created.backup.id
    }
}

/// Restores a backup into shop-production and waits for the job to end.
private func restore(_ backupID: String, on server: some BackupTestServer) async throws -> Job {
    let job = try await requestRestore(server, backupID)
    return try await server.withClient { try await waitForJob(job.id, on: $0) }
}

@Suite(.serialized) struct LiveDatabaseRestoreTests {
    /// A session of another role on the target, which backupd may not end,
    /// fails the restore naming it; the target, the previous copies and
    /// everything else stay as they were, and nothing is left behind.
    @Test func aSessionOfAnotherRoleOnTheTargetFailsTheRestoreNamingItAndChangesNothing() async throws {
        try await withClusterApp { app in
            try await withInProcessServer(configure: { $0.appDatabases.takeoverTimeout = .seconds(2) }) { server in
                try await register(app, on: server)
                let backupID = try await backUp(server)
                // A first restore leaves a previous copy to keep.
                #expect(try await restore(backupID, on: server).status == .finished)
                let owner = try PostgresConnection(app.url)
                try owner.query("DELETE FROM \"shop$invoice\"")
                try FileManager.default.removeItem(atPath: app.fileStore + "/" + (try FileManager.default.contentsOfDirectory(atPath: app.fileStore)
                    .first { !$0.hasPrefix(".") })!)
                let before = try app.state()
                let previous = try app.state(of: "shop_prerestore", folder: app.fileStore + ".prerestore")

                let postgres = try PostgresConnection(app.cluster.connectionString("postgres"))
                try postgres.query("CREATE ROLE auditor LOGIN")
                let held = try PostgresConnection(app.cluster.connectionString("shop", user: "auditor") + " application_name=held-by-audit")
                let pid = try held.query("SELECT pg_backend_pid() AS pid")[0].string("pid")
                let job = try await restore(backupID, on: server)
                #expect(job.status == .failed)
                for named in ["pid \(pid)", "auditor", "held-by-audit", "target is unchanged"] {
                    #expect(job.error.contains(named), "\(job.error)")
                }
                #expect(try held.query("SELECT 1 AS one")[0].string("one") == "1", "the other role's session was ended")
                #expect(try app.state() == before)
                #expect(try app.state(of: "shop_prerestore", folder: app.fileStore + ".prerestore") == previous)
                try app.expectNothingLeft()
            }
        }
    }

    /// The app's server goes down while pg_restore fills the staging
    /// database: the restore fails with the target unchanged, the staging
    /// database it could not drop then is recorded, and once the server is
    /// back the runner's sweep drops it.
    @Test func aStagingDatabaseTheServersRestartLeftIsSweptOnceItIsBack() async throws {
        try await withClusterApp { app in
            let gate = try GatedTool("pg_restore")
            try await withInProcessServer(configure: {
                $0.jobs.tools.pgRestore = gate.path
                $0.jobs.sweepInterval = .milliseconds(500)
                $0.jobs.pollInterval = .milliseconds(200)
            }) { server in
                try await register(app, on: server)
                let backupID = try await backUp(server)
                let before = try app.state()
                let job = try await requestRestore(server, backupID)
                try await eventually(within: .seconds(60)) { gate.hasStarted }
                #expect(try app.databases(containing: "_restore_").count == 1, "the staging database exists")
                try await app.cluster.stop()
                gate.release()
                let failed = try await server.withClient { try await waitForJob(job.id, on: $0) }
                #expect(failed.status == .failed, "\(failed.error)")
                let pending = try await TestPostgres.query(server.catalogDatabase, "SELECT leftovers FROM restores WHERE job_id = $1", job.id)
                #expect(pending.first?.bool("leftovers") == true, "the leftover staging database is recorded")

                try await app.cluster.startAgain()
                try await eventually(within: .seconds(30)) { try app.databases(containing: "_restore_").isEmpty }
                try await eventually(within: .seconds(10)) {
                    try TestPostgres.query(server.catalogDatabase, "SELECT leftovers FROM restores WHERE job_id = $1", job.id)
                        .first?.bool("leftovers") == false
                }
                #expect(try app.state() == before)
                #expect(try app.restoreFoldersLeft().isEmpty)
            }
        }
    }

    /// Helper finding: another environment's database named `<target>_prerestore`
    /// was renamed aside and dropped by a restore of the target. A previous
    /// copy carries its marker; anything else of that name stops the restore.
    @Test func aDatabaseNamedLikeThePreviousCopyButNotOneIsNeverTouched() async throws {
        try await withClusterApp { app in
            try await withInProcessServer { server in
                try await register(app, on: server)
                let backupID = try await backUp(server)
                let owner = try PostgresConnection(app.cluster.connectionString("postgres", user: ClusterApp.owner))
                try owner.query("CREATE DATABASE shop_prerestore")
                try PostgresConnection(app.cluster.connectionString("shop_prerestore", user: ClusterApp.owner))
                    .query("CREATE TABLE precious AS SELECT 'another environment''s data' AS v")
                let before = try app.state()
                let job = try await restore(backupID, on: server)
                #expect(job.status == .failed && job.error.contains("is not the previous copy of shop"), "\(job.error)")
                #expect(try app.state() == before)
                #expect(try TestPostgres.tableFingerprints(connectingTo: app.cluster.connectionString("shop_prerestore"))["precious"] != nil)
                try app.expectNothingLeft()
            }
        }
    }

    /// Helper finding: the staging database dropped by someone while the swap
    /// waited for a session made the restore FINISHED with the files restored
    /// and the database not. Whether the swap committed is told by whose oid
    /// the target's name has.
    @Test func aStagingDatabaseDroppedDuringTheSwapFailsTheRestoreWithTheTargetUnchanged() async throws {
        try await withClusterApp { app in
            try await withInProcessServer(configure: { $0.appDatabases.takeoverTimeout = .seconds(60) }) { server in
                try await register(app, on: server)
                let backupID = try await backUp(server)
                #expect(try await restore(backupID, on: server).status == .finished)  // a previous copy to keep
                let before = try app.state()
                let previous = try app.state(of: "shop_prerestore", folder: app.fileStore + ".prerestore")

                let postgres = try PostgresConnection(app.cluster.connectionString("postgres"))
                try postgres.query("CREATE ROLE auditor LOGIN")
                let held = try PostgresConnection(app.cluster.connectionString("shop", user: "auditor"))
                defer { withExtendedLifetime(held) {} }
                let job = try await requestRestore(server, backupID)
                try await eventually(within: .seconds(60)) {
                    try TestPostgres.query(server.catalogDatabase, "SELECT step FROM restores WHERE job_id = $1", job.id)[0]
                        .string("step") == "folders-swapped"
                }
                let staging = try #require(try app.databases(containing: "_restore_").first)
                try PostgresConnection(app.cluster.connectionString("postgres", user: ClusterApp.owner))
                    .query("DROP DATABASE \(ConnectionString.quoted(staging))")
                try postgres.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'auditor'")
                let ended = try await server.withClient { try await waitForJob(job.id, on: $0) }
                #expect(ended.status == .failed && ended.error.contains("target is unchanged"), "\(ended.error)")
                #expect(try app.state() == before)
                #expect(try app.state(of: "shop_prerestore", folder: app.fileStore + ".prerestore") == previous)
                #expect(try app.restoreFoldersLeft().isEmpty)
            }
        }
    }

    /// Helper finding: backupd killed after the folder swap while the app's
    /// server was down failed the restore blind, and the sweep then dropped
    /// the restored copy, leaving the target half restored for good. Now
    /// recovery waits for the server, then puts everything back.
    @Test func aRestoreKilledMidSwapWhileItsServerIsDownWaitsAndThenRollsBack() async throws {
        try await withClusterApp { app in
            let first = try await TestServer.start(arguments: ["--die-after-restore-step", "folders-swapped", "--job-lease-seconds", "2"])
            try await register(app, on: first)
            let backupID = try await backUp(first)
            let before = try app.state()
            let job = try await requestRestore(first, backupID)
            try await eventually(within: .seconds(60)) { !first.isRunning }
            try await app.cluster.stop()
            let second = try await TestServer.start(arguments: ["--job-lease-seconds", "2"], catalogDatabase: first.catalogDatabase,
                                                    storage: first.storage, adminToken: first.adminToken)
            do {
                // While the server is down, the restore waits: recovery looked, could not see, and left it running,
                // its environment busy.
                try await eventually(within: .seconds(60)) {
                    try await second.withClient { try await $0.unary(Backups.getJob, .with { $0.id = job.id }) }.phase
                        == "waiting for the database server to recover"
                }
                let waiting = try await second.withClient { try await $0.unary(Backups.getJob, .with { $0.id = job.id }) }
                #expect(waiting.status == .running, "\(waiting.error)")
                try await app.cluster.startAgain()
                let ended = try await second.withClient { try await waitForJob(job.id, on: $0, timeout: .seconds(60)) }
                #expect(ended.status == .failed && ended.error.contains("target is unchanged"), "\(ended.error)")
                #expect(try app.state() == before)
                try app.expectNothingLeft()
            } catch {
                print(second.log)
                throw error
            }
            await second.remove()
            await first.remove()
        }
    }

    /// The app's server stopped while its backup runs: the backup fails
    /// naming the lost server, nothing is cataloged as finished, what it
    /// stored is collected, and once the server is back a backup finishes.
    @Test func aBackupWhoseAppServerStopsFailsCleanlyAndTheNextOneFinishes() async throws {
        try await withClusterApp { app in
            let gate = try GatedTool("pg_dump")
            try await withInProcessServer(configure: {
                $0.jobs.tools.pgDump = gate.path
                $0.jobs.garbageCollectionInterval = .milliseconds(500)
            }) { server in
                try await register(app, on: server)
                let created = try await server.withClient { client in
                    try await client.unary(Backups.createBackup, .with { $0.namespace = TestServer.namespace; $0.environment = "shop-production" })
                }
                try await eventually(within: .seconds(60)) { gate.hasStarted }
                try await app.cluster.stop()
                gate.release()
                let failed = try await server.withClient { try await waitForJob(created.job.id, on: $0) }
                #expect(failed.status == .failed && failed.error.contains("pg_dump"), "\(failed.error)")
                let processing = try await TestPostgres.query(server.catalogDatabase, "SELECT count(*) AS n FROM snapshots WHERE status <> 'failed'")
                #expect(processing[0].int64("n") == 0)
                // Its files were stored beside the dump; unreferenced, they go.
                try await eventually(within: .seconds(20)) {
                    let stored = try await server.storedBlobs()
                    return try await TestPostgres.query(server.catalogDatabase, "SELECT count(*) AS n FROM blobs")[0].int64("n") == 0 && stored.isEmpty
                }
                try await app.cluster.startAgain()
                gate.release()
                let next = try await server.withClient { client in
                    let created = try await client.unary(Backups.createBackup, .with { $0.namespace = TestServer.namespace; $0.environment = "shop-production" })
                    return try await waitForJob(created.job.id, on: client)
                }
                #expect(next.status == .finished, "\(next.error)")
            }
        }
    }
}

/// Restores while autovacuum works, apart from the other live-database
/// tests: it is long, and runs beside them.
@Suite(.serialized) struct AutovacuumRestoreTests {
    /// The app's role may not end autovacuum workers (nor any session of
    /// another role): the restore lets PostgreSQL ask autovacuum to leave
    /// and tries the renames again. Between restores the app's tables are
    /// rewritten, so autovacuum has work on the databases being swapped.
    @Test func restoresFinishWhileAutovacuumWorksOnTheDatabases() async throws {
        try await withClusterApp(settings: ["autovacuum_naptime": "1s", "autovacuum_vacuum_cost_delay": "20ms"]) { app in
            try await withInProcessServer { server in
                try await register(app, on: server)
                let backupID = try await backUp(server)
                let atBackup = try app.state()
                var firstRestored: EnvironmentSnapshot?
                for round in 1...10 {
                    let owner = try PostgresConnection(app.url)
                    try owner.query("UPDATE \"shop$order\" SET status = status")
                    try owner.query("ANALYZE")
                    let job = try await restore(backupID, on: server)
                    #expect(job.status == .finished, "round \(round): \(job.error)")
                    let restored = try app.state()
                    #expect(restored.tables == atBackup.tables, "round \(round)")
                    // The store holds what the backup holds: the documents with contents not deleted after download.
                    #expect(restored == (firstRestored ?? restored) && restored.files.count == 302, "round \(round)")
                    firstRestored = firstRestored ?? restored
                }
                #expect(try app.databases(containing: "_prerestore") == ["shop_prerestore"])
                try app.expectNothingLeft()
            }
        }
    }
}
