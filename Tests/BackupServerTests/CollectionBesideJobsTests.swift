import BackupRules
import BackupStorage
import BackupPostgres
import BackupServer
import BackupTestSupport
import BackupWire
import Foundation
import Testing

/// Collection runs beside jobs (issue 19: every job held the blob lock from
/// its start, so one namespace's backup waiting on its app's lock kept
/// everyone's deleted backups on disk), and a backup blocked by its app's
/// locks fails naming the lock.
@Suite(.serialized) struct CollectionBesideJobsTests {
    /// Registers `app` as environment `shop` of `namespace`, as the platform does.
    private func register(_ app: TestApp, in namespace: String, on server: some BackupTestServer) async throws {
        try await server.withClient(token: server.platformToken) { client in
            _ = try await client.unary(Backups.registerEnvironment, .with {
                $0.namespace = namespace; $0.name = "shop"; $0.app = "shop"; $0.databaseURL = app.connectionString; $0.fileStorePath = app.fileStore
            })
        }
    }

    /// A session that holds a table of `app` locked until it is closed.
    private func lockTable(of app: TestApp) throws -> PostgresConnection {
        let session = try PostgresConnection(app.connectionString)
        try session.query("BEGIN")
        try session.query("LOCK TABLE \"shop$order\" IN ACCESS EXCLUSIVE MODE")
        return session
    }

    @Test func aDeletedBackupsBlobsAreCollectedWhileOtherNamespacesJobsAreHeld() async throws {
        try await withTestApp { acme in
            try await withTestApp { beta in
                try await withTestApp { gamma in
                    try await withInProcessServer(configure: {
                        $0.jobs.garbageCollectionInterval = .milliseconds(500)
                        $0.jobs.pollInterval = .milliseconds(200)
                        $0.appDatabases.lockTimeout = "2min"
                    }) { server in
                        try await register(acme, in: "acme", on: server)
                        try await register(beta, in: "beta", on: server)
                        try await register(gamma, in: "gamma", on: server)
                        // acme's database holds data nobody else has: its dump's chunks are its own.
                        try await TestPostgres.query(acme.database, "CREATE TABLE ledger AS SELECT i, md5(random()::text) AS entry FROM generate_series(1, 20000) AS i")
                        let backup = try await server.withClient { client in
                            let created = try await client.unary(Backups.createBackup, .with { $0.namespace = "acme"; $0.environment = "shop" })
                            #expect(try await waitForJob(created.job.id, on: client).status == .finished)
                            return created.backup.id
                        }
                        let chunks = try await TestPostgres.query(server.catalogDatabase, "SELECT blob_sha256 FROM dump_chunks WHERE snapshot_id = $1", backup)
                            .compactMap { ContentHash(hex: $0.string("blob_sha256")) }
                        let stored = try await server.storedBlobs()
                        #expect(!chunks.isEmpty && Set(chunks).isSubset(of: stored))

                        // Two other namespaces' backups wait on their apps' locks.
                        let locks = [try lockTable(of: beta), try lockTable(of: gamma)]
                        var held: [(job: String, token: String)] = []
                        for namespace in ["beta", "gamma"] {
                            let token = try await server.makeToken(.operator, namespace: namespace, name: "\(namespace)-operator")
                            held.append((try await server.withClient(token: token) { client in
                                try await client.unary(Backups.createBackup, .with { $0.namespace = namespace; $0.environment = "shop" }).job.id
                            }, token))
                        }
                        try await eventually(within: .seconds(60)) {
                            try TestPostgres.query("postgres", """
                                SELECT count(*) AS n FROM pg_locks l JOIN pg_database d ON d.oid = l.database
                                WHERE NOT l.granted AND d.datname IN ($1, $2)
                                """, beta.database, gamma.database)[0].int64("n") == 2
                        }

                        try await server.withClient { _ = try await $0.unary(Backups.deleteBackup, .with { $0.id = backup }) }
                        // The collection is over once the content is gone and its claimed rows forgotten.
                        try await eventually(within: .seconds(20)) {
                            let claimed = try await TestPostgres.query(server.catalogDatabase,
                                                                       "SELECT count(*) AS n FROM blobs WHERE collecting_since IS NOT NULL")[0].int64("n")
                            return try await server.storedBlobs().isDisjoint(with: chunks) && claimed == 0
                        }
                        let statuses = try await TestPostgres.query(server.catalogDatabase, "SELECT status FROM jobs WHERE id = ANY($1::uuid[])",
                                                              "{\(held.map(\.job).joined(separator: ","))}").map { $0.string("status") }
                        #expect(statuses == ["running", "running"], "the held jobs were still running when collection ran")

                        // Released, the held backups finish with every blob they stored.
                        for lock in locks { try lock.query("ROLLBACK") }
                        for (job, token) in held {
                            try await server.withClient(token: token) { client in
                                let ended = try await waitForJob(job, on: client)
                                #expect(ended.status == .finished, "\(ended.error)")
                            }
                        }
                    }
                }
            }
        }
    }

    @Test func aBackupBlockedByItsAppsLockFailsNamingTheLock() async throws {
        try await withTestApp { app in
            try await withInProcessServer(configure: { $0.appDatabases.lockTimeout = "1s" }) { server in
                try await server.register(app)
                let lock = try PostgresConnection(app.connectionString)
                try lock.query("BEGIN")
                try lock.query("LOCK TABLE \"shop$order\" IN ACCESS EXCLUSIVE MODE")
                let job = try await server.withClient { client in
                    let created = try await client.unary(Backups.createBackup, .with { $0.namespace = "acme"; $0.environment = "shop-production" })
                    return try await waitForJob(created.job.id, on: client, timeout: .seconds(60))
                }
                try lock.query("ROLLBACK")
                #expect(job.status == .failed)
                #expect(job.error.contains("could not lock the app's tables within 1s") && job.error.contains("shop$order")
                        && job.error.contains("pid "), "\(job.error)")
            }
        }
    }
}
