@testable import BackupServer
import BackupCatalog
import BackupClient
import BackupRules
@testable import BackupStorage
import BackupTestSupport
import BackupWire
import Foundation
import Logging
import NIOPosix
import Testing

/// Object lock (issue 23), on moto's buckets made with it: the store retains
/// each finished backup's objects until the backup expires, extends an
/// object's retention when a later backup reuses it, refuses to delete a
/// retained object whoever asks, and collection removes objects only once
/// their retention ended. moto's lock goes by the real clock: one test
/// waits for a retention of two seconds to end.
@Suite struct ObjectLockTests {
    @Test func theStoreRetainsEachBackupUntilItExpiresAndCollectionWaitsForIt() async throws {
        try await TestCatalog.with { catalog, database, threadPool in
            try await TestCatalog.register(catalog)
            let scratch = try ScratchDirectory("object-lock")
            defer { scratch.remove() }
            let client = try await BlobStoreKind.newBucket(objectLock: true)
            let store = try ObjectBlobStore(client: client, scratchDirectory: scratch.path, partSize: TestStorage.partSize, objectLock: .compliance)
            #expect(try await store.canRetain())
            #expect(try await BlobStoreKind.newBucket().objectLockEnabled() == false)
            func stored(_ text: String) async throws -> StoredBlob {
                let path = scratch.path + "/\(UUID())"
                try text.write(toFile: path, atomically: false, encoding: .utf8)
                return try await onThread { try store.adopt(path) }
            }
            let (own, shared) = (try await stored("only the first backup's"), try await stored("shared by both backups"))
            _ = try await catalog.markBlobsUsed([own, shared])
            /// A finished backup whose dump is its first file, expiring at `expires`.
            func finishedBackup(_ files: [StoredBlob], expires: Date) async throws -> String {
                _ = try await catalog.createBackup(namespace: "acme", environment: "shop-production", kind: .onDemand, comment: "", actor: "t")
                let claimed = try #require(try await catalog.claimNextJob(owner: "t", leaseSeconds: 300, perNamespace: 1))
                try await catalog.finishBackup(jobID: claimed.job.id, owner: "t", manifest: BackupManifest(
                    dump: .blob(files[0]), files: files.enumerated().map { ("file-\($0.offset)", $0.element) }, postgresVersion: "17",
                    databaseSize: 0))
                try await TestPostgres.query(database, "UPDATE snapshots SET expires_at = to_timestamp($2::double precision) WHERE id = $1",
                                             claimed.job.backupID, String(expires.timeIntervalSince1970))
                return claimed.job.backupID
            }
            let locks = RetentionLocks(catalog: catalog, store: store, margin: .zero, cap: .seconds(7200), logger: Logger(label: "test"))

            // The first backup expires in two seconds: both its objects are retained until then, once.
            let soon = Date().addingTimeInterval(2)
            let first = try await finishedBackup([own, shared], expires: soon)
            #expect(try await locks.run() == (2, 0))
            #expect(try await locks.run() == (0, 0))
            let retained = try #require(try await client.retention(of: store.key(own.hash)))
            #expect(retained.mode == .compliance && retained.until >= soon.addingTimeInterval(-0.001) && retained.until <= soon.addingTimeInterval(1))

            // A second backup, expiring in an hour, reuses the shared object: its retention is extended, the other's is not.
            let later = Date().addingTimeInterval(3600)
            _ = try await finishedBackup([shared], expires: later)
            #expect(try await locks.run() == (1, 0))
            #expect(try await client.retention(of: store.key(shared.hash)).map { $0.until >= later.addingTimeInterval(-0.001) } == true)
            #expect(try await client.retention(of: store.key(own.hash))?.until == retained.until)

            // Helper finding: a tenant's retention of ten years bound the bucket's owner for ten years at once. Objects are
            // retained the operator's cap ahead (two hours here), and extended as time passes.
            let long = try await stored("kept for ten years")
            _ = try await catalog.markBlobsUsed([long])
            _ = try await finishedBackup([long], expires: Date().addingTimeInterval(3650 * 86_400))
            #expect(try await locks.run() == (1, 0))
            let capped = try #require(try await client.retention(of: store.key(long.hash))).until.timeIntervalSinceNow
            #expect(capped > 7100 && capped < 7300, "\(capped)")

            // The first backup deleted before it expires: collection leaves its objects, and the store refuses to delete one early.
            _ = try await catalog.deleteBackup(id: first, actor: "t")
            let collector = BlobCollector(catalog: catalog, store: store, threadPool: threadPool)
            #expect(try await collector.collect() == 0)
            // Helper finding: with the catalog's date behind the store's (a catalog restored from its own backup), the store's
            // refusal stopped every collection. The refused object's date is recorded instead, and collection goes on.
            try await TestPostgres.query(database, "UPDATE blobs SET retain_until = NULL WHERE sha256 = $1", own.hash.hex)
            #expect(try await collector.collect() == 0)
            let recorded = try await TestPostgres.query(database, "SELECT unix_ms(retain_until) AS ms FROM blobs WHERE sha256 = $1", own.hash.hex)
            #expect(abs(Double(recorded[0].int64("ms")) / 1000 - retained.until.timeIntervalSince1970) < 1)
            let early = try await onThread { store.remove(all: [own.hash]) }
            #expect(early.removed.isEmpty && "\(early.failure.map { "\($0)" } ?? "")".contains("AccessDenied"), "\(early)")
            #expect(try await onThread { try store.contains(own.hash) })

            // Once its retention ended (moto's clock is the real one), collection removes it, every version; the shared one stays.
            try await Task.sleep(for: .seconds(max(0, retained.until.timeIntervalSinceNow) + 0.5))
            #expect(try await collector.collect() == 1)
            #expect(try await client.versions(prefix: store.key(own.hash)).isEmpty)
            #expect(try await onThread { try store.contains(shared.hash) })
        }
    }

    /// Helper finding: `backupd store migrate` pointed backups at encrypted
    /// copies that were never retained (the backups kept the date of their
    /// plain objects). Now the copies are retained at the next look, and the
    /// plain objects stay until their own date.
    @Test func copiesMadeByStoreMigrateAreRetainedLikeTheBackupsObjects() async throws {
        try await TestCatalog.with { catalog, database, threadPool in
            try await TestCatalog.register(catalog)
            let scratch = try ScratchDirectory("object-lock-migrate")
            defer { scratch.remove() }
            let client = try await BlobStoreKind.newBucket(objectLock: true)
            let store = try ObjectBlobStore(client: client, scratchDirectory: scratch.path, partSize: TestStorage.partSize, objectLock: .governance)
            let path = scratch.path + "/document"
            try "kept before encryption".write(toFile: path, atomically: false, encoding: .utf8)
            let plain = try await onThread { try store.adopt(path) }
            _ = try await catalog.markBlobsUsed([plain])
            _ = try await catalog.createBackup(namespace: "acme", environment: "shop-production", kind: .onDemand, comment: "", actor: "t")
            let claimed = try #require(try await catalog.claimNextJob(owner: "t", leaseSeconds: 300, perNamespace: 1))
            try await catalog.finishBackup(jobID: claimed.job.id, owner: "t", manifest: BackupManifest(
                dump: .blob(plain), files: [("document", plain)], postgresVersion: "17", databaseSize: 0))
            let locks = RetentionLocks(catalog: catalog, store: store, margin: .zero, cap: .seconds(86_400 * 400), logger: Logger(label: "test"))
            #expect(try await locks.run() == (1, 0))

            let migration = StoreMigration(catalog: catalog, store: store, masterKeys: try StorageKeys(parsing: testStorageKeys),
                                           threadPool: threadPool, clock: ContinuousClock())
            let outcome = try await migration.run { _ in }
            #expect(outcome.copied == 1 && outcome.left == 0 && outcome.removed == 0, "\(outcome)")
            let sealed = try #require(ContentHash(hex: try await TestPostgres.query(database,
                "SELECT blob FROM snapshot_files WHERE snapshot_id = $1", claimed.job.backupID)[0].string("blob")))
            #expect(sealed != plain.hash)
            #expect(try await client.retention(of: store.key(sealed)) == nil)
            #expect(try await locks.run() == (1, 0))
            #expect(try await client.retention(of: store.key(sealed))?.mode == .governance)
            #expect(try await onThread { try store.contains(plain.hash) }, "the plain object stays until its own date")
            #expect(try await TestPostgres.query(database, "SELECT count(*) AS n FROM collection_fences")[0].string("n") == "0")
        }
    }

    /// backupd with --s3-object-lock: a bucket made without object lock is
    /// refused at start; on one made with it, a backup's objects are
    /// retained until its expiry moments after it finishes. The flags and
    /// the runner's wiring are the point.
    @Test func backupdRetainsWhatABackupStoresAndRefusesABucketWithoutObjectLock() async throws {
        let scratch = try ScratchDirectory("object-lock-serve")
        defer { scratch.remove() }
        let plain = try await TestStorage.make(.objectStore, directory: scratch.path + "/plain")
        await #expect { _ = try await TestServer.start(arguments: ["--s3-object-lock", "compliance"], storage: plain) } throws: {
            "\($0)".contains("the bucket was not made with object lock")
        }
        let locked = try await TestStorage.make(.objectStore, directory: scratch.path + "/locked", objectLock: true)
        try await withTestApp { app in
            let server = try await TestServer.start(arguments: ["--s3-object-lock", "governance", "--s3-object-lock-margin-days", "1"], storage: locked)
            let backup = try await finishedBackup(server, app)
            let expires = Date(timeIntervalSince1970: Double(backup.expiresUnixMS) / 1000).addingTimeInterval(86_400)
            let client = try #require(locked.bucket)
            let names = try await TestPostgres.query(server.catalogDatabase, """
                SELECT blob FROM snapshot_files WHERE snapshot_id = $1 UNION SELECT blob FROM dump_chunks WHERE snapshot_id = $1
                """, backup.id).map { $0.string("blob") }
            #expect(!names.isEmpty)
            try await eventually(within: .seconds(60)) {
                try await TestPostgres.query(server.catalogDatabase, "SELECT retained_until IS NOT NULL AS done FROM snapshots WHERE id = $1",
                                             backup.id)[0].bool("done")
            }
            for name in names {
                let retention = try await client.retention(of: ObjectBlobStore.keyPrefix + name)
                #expect(retention?.mode == .governance && (retention?.until ?? .distantPast) >= expires.addingTimeInterval(-0.001), "\(name)")
            }
            await server.remove()
        }
    }
}
