import BackupRules
import BackupStorage
import BackupTestSupport
import BackupWire
import Foundation
import Testing

/// Jobs on an S3 store that misbehaves (`FaultyStoreProxy` between the
/// server and moto): busy answers and resets are retried and the backup,
/// its verification and its restore finish (stalls, which cost seconds
/// each, are shown on the store alone in `ObjectStoreFaultTests`); a store that refuses
/// everything fails the backup naming what the store said, and nothing is
/// cataloged or left in the bucket.
@Suite struct ObjectStoreJobTests {
    /// A server whose blobs are in a new bucket, reached through `proxy`.
    private func withServer(slowDown: Double, reset: Double, stall: Double,
                            _ body: (InProcessServer, ObjectStoreClient, FaultyStoreProxy) async throws -> Void) async throws {
        let scratch = try ScratchDirectory("faulty-server")
        defer { scratch.remove() }
        let bucket = try await BlobStoreKind.newBucket()
        let proxy = try FaultyStoreProxy(upstream: bucket.location.endpoint, slowDown: slowDown, reset: reset, stall: stall, stallSeconds: 3)
        defer { proxy.stop() }
        var location = bucket.location
        location.endpoint = proxy.endpoint
        var client = try ObjectStoreClient(location: location, credentials: try await MotoServer.shared.credentials, http: .shared)
        client.requestTimeout = .seconds(2)
        client.retries = RetryPolicy(attempts: 8, base: .milliseconds(20), cap: .milliseconds(200))
        let store = try ObjectBlobStore(client: client, scratchDirectory: scratch.path, partSize: TestStorage.partSize, partsInFlight: 2)
        try await withInProcessServer(blobStore: { _ in store }) { server in try await body(server, bucket, proxy) }
    }

    @Test func aBackupItsVerificationAndItsRestoreFinishThroughABusyAndResettingStore() async throws {
        try await withTestApp { app in
            try await withServer(slowDown: 0.15, reset: 0.05, stall: 0) { server, bucket, proxy in
                let atBackup = try EnvironmentState(app)
                let backup = try await finishedBackup(server, app)
                let referenced = Set(try referencedKeys(app))
                try changeEverything(app)
                try await server.withClient { client in
                    let verifying = try await client.unary(Backups.verifyBackup, .with { $0.id = backup.id })
                    let verified = try await waitForJob(verifying.id, on: client)
                    #expect(verified.status == .finished, "\(verified.error)")
                    let restored = try await restore(client, backup)
                    #expect(restored.status == .finished, "\(restored.error)")
                }
                // Every table and every referenced file as at the backup (delete-after-download files are not restored).
                let restored = try EnvironmentState(app)
                #expect(restored.tables == atBackup.tables)
                #expect(restored.files == atBackup.files.filter { referenced.contains(String($0.key.split(separator: "/").last!)) })
                let stored = try await bucket.list(prefix: "").count
                let rows = try await TestPostgres.query(server.catalogDatabase, "SELECT count(*) AS n FROM blobs")[0].int64("n")
                #expect(stored == Int(rows))
                let counts = proxy.counts
                #expect(counts.slowDown > 0 && counts.reset > 0, "\(counts)")
            }
        }
    }

    @Test func aBackupOnAStoreThatRefusesEverythingFailsNamingItAndCatalogsNothing() async throws {
        try await withTestApp { app in
            try await withServer(slowDown: 1, reset: 0, stall: 0) { server, bucket, _ in
                try await server.register(app)
                let job = try await server.withClient { client in
                    let created = try await client.unary(Backups.createBackup, .with {
                        $0.namespace = TestServer.namespace; $0.environment = "shop-production"
                    })
                    return try await waitForJob(created.job.id, on: client)
                }
                #expect(job.status == .failed && job.error.contains("SlowDown") && job.error.contains("object store"), "\(job.error)")
                let snapshots = try await TestPostgres.query(server.catalogDatabase, "SELECT status FROM snapshots").map { $0.string("status") }
                #expect(snapshots.allSatisfy { $0 == "failed" })
                #expect(try await TestPostgres.query(server.catalogDatabase, "SELECT count(*) AS n FROM blobs")[0].int64("n") == 0)
                #expect(try await bucket.list(prefix: "").isEmpty)
                #expect(try await bucket.unfinishedUploads(prefix: "").isEmpty)
            }
        }
    }
}
