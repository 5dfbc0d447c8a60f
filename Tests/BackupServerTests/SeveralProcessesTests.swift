import BackupRules
import BackupStorage
import BackupTestSupport
import BackupWire
import Foundation
import Testing

/// Several backupd processes on one catalog and one S3 bucket, as in
/// `docs/deployment.md`: one serves the API only (`--max-jobs 0`), another
/// runs the jobs it queues, each with a work folder of its own, and a
/// download link works whichever process it reaches, and an upload goes on
/// through whichever process it reaches next; one killed
/// mid-upload leaves nothing the next cannot clear. Processes, because the
/// processes are the point.
@Suite struct SeveralProcessesTests {
    /// backupd killed (`kill -9`) while it sends a 200 MiB document in
    /// parts: no object is under the document's key, the next process's
    /// collection aborts the parts, fails the dead process's job once its
    /// lease has run out, and runs the environment's next backup. The first process reaches the store
    /// through a proxy that holds each part a quarter of a second, so the
    /// upload is still under way when the kill lands.
    @Test func aServerKilledMidMultipartUploadLeavesNoObjectAndTheNextProcessClearsUpAndTakesOver() async throws {
        let scratch = try ScratchDirectory("killed-multipart")
        defer { scratch.remove() }
        let storage = try await TestStorage.make(.objectStore, directory: scratch.path + "/blobs")
        let bucket = try #require(storage.bucket)
        try await withTestApp { app in
            try addDocument(to: app, size: 200 << 20, content: .incompressible)
            let document = try LocalFile.open(app.fileStore + "/ff/ff/ffffffff-0000-4000-8000-000000000001")
            let key = "sha256-" + (try document.contentHash().hash.hex)
            let slow = try FaultyStoreProxy(upstream: bucket.location.endpoint, slowDown: 0, reset: 0, stall: 0, partDelaySeconds: 0.25)
            defer { slow.stop() }
            let first = try await TestServer.start(arguments: ["--job-lease-seconds", "3"], storage: try await storage.reached(through: slow.endpoint))
            try await first.register(app)
            let killed = try await first.withClient { client in
                try await client.unary(Backups.createBackup, .with { $0.namespace = TestServer.namespace; $0.environment = "shop-production" })
            }
            // Killed as soon as the document's parts are on their way.
            var sending = false
            for _ in 0..<3000 where !sending {
                sending = try await !bucket.unfinishedUploads(prefix: key).isEmpty
                if !sending { try await Task.sleep(for: .milliseconds(10)) }
            }
            await first.stop(signal: SIGKILL)
            #expect(sending, "the document's multipart upload was never seen under way")
            #expect(try await bucket.size(of: key) == nil)

            let second = try await TestServer.start(arguments: ["--job-lease-seconds", "3"], catalogDatabase: first.catalogDatabase,
                                                    storage: storage, adminToken: first.adminToken, platformToken: first.platformToken)
            try await eventually(within: .seconds(30)) { try await bucket.unfinishedUploads(prefix: "").isEmpty }
            #expect(try await bucket.size(of: key) == nil)
            // The killed process's backup is failed by the next once its lease has run out, and the environment's next backup runs there.
            try await second.withClient { client in
                let ended = try await waitForJob(killed.job.id, on: client, timeout: .seconds(60))
                #expect(ended.status == .failed, "\(ended)")
                let next = try await client.unary(Backups.createBackup, .with { $0.namespace = TestServer.namespace; $0.environment = "shop-production" })
                let finished = try await waitForJob(next.job.id, on: client, timeout: .seconds(120))
                #expect(finished.status == .finished, "\(finished.error)")
            }
            #expect(try await bucket.size(of: key) == 200 << 20)
            await second.stop()
            await first.remove()
        }
    }

    @Test func anAPIOnlyProcessQueuesJobsThatAnotherRunsOnTheSameBucket() async throws {
        let scratch = try ScratchDirectory("several")
        defer { scratch.remove() }
        let storage = try await TestStorage.make(.objectStore, directory: scratch.path + "/api")
        try await withTestApp { app in
            let api = try await TestServer.start(arguments: ["--max-jobs", "0"], storage: storage)
            let worker: TestServer
            do {
                worker = try await TestServer.start(catalogDatabase: api.catalogDatabase, storage: try storage.shared(workFolder: scratch.path + "/worker"),
                                                    adminToken: api.adminToken, platformToken: api.platformToken)
            } catch {
                await api.remove()
                throw error
            }
            do {
                let atBackup = try EnvironmentState(app)
                let backup = try await finishedBackup(api, app)
                let referenced = Set(try referencedKeys(app))
                try changeEverything(app)
                let restored = try await api.withClient { try await restore($0, backup) }
                #expect(restored.status == .finished, "\(restored.error)")
                let state = try EnvironmentState(app)
                #expect(state.tables == atBackup.tables)
                #expect(state.files == atBackup.files.filter { referenced.contains(String($0.key.split(separator: "/").last!)) })
                // Both jobs ran in the worker (each job's log lines name it); the bucket holds the backup's blobs, the work folders none.
                let jobs = try await TestPostgres.query(api.catalogDatabase, "SELECT id FROM jobs").map { $0.string("id") }
                #expect(jobs.count == 2 && jobs.allSatisfy { worker.log.contains($0) && !api.log.contains($0) })

                // A download the worker prepared is served by either process, whichever its signed link reaches.
                let download = try await api.withClient { try await readyDownload($0, backup) }
                #expect(download.url.contains("//\(api.address)/"))
                for server in [api, worker] {
                    let file = scratch.path + "/fetched-from-\(server.processIdentifier)"
                    let url = download.url.replacingOccurrences(of: "//\(api.address)/", with: "//\(server.address)/")
                    let fetched = try await curl(["-o", file, "-w", "%{http_code}", url])
                    #expect(fetched.standardOutput == "200", "\(fetched.standardError)")
                    #expect(try LocalFile.open(file).contentHash().hash.hex == download.sha256)
                }

                // That archive uploaded: half through one process, the rest through the other (which has no
                // running hash of it and reads its segments back from the bucket), validated by the worker.
                let archive = Array(try Data(contentsOf: URL(fileURLWithPath: scratch.path + "/fetched-from-\(api.processIdentifier)")))
                let upload = try await api.withClient { try await startUpload($0, archive) }
                let half = archive.count / 2
                #expect(try await api.withClient { try await sendChunks($0, upload, archive, from: 0, to: half) }.bytesReceived == UInt64(half))
                let received = try await worker.withClient { try await sendChunks($0, upload, archive, from: half, to: archive.count) }
                #expect(received.bytesReceived == UInt64(archive.count))
                let uploaded = try await api.withClient { client in
                    let validating = try await client.unary(Backups.finishUpload, .with { $0.uploadID = upload.id })
                    _ = try await waitForJob(validating.jobID, on: client)
                    return try await client.unary(Backups.getUpload, .with { $0.uploadID = upload.id })
                }
                #expect(uploaded.state == .finished && !uploaded.backupID.isEmpty, "\(uploaded.error)")
                #expect(worker.log.contains(uploaded.jobID) && !api.log.contains(uploaded.jobID))

                // The bucket holds what the catalog records, the work folders no blob.
                let rows = try await TestPostgres.query(api.catalogDatabase, "SELECT sha256 FROM blobs").map { ContentHash(hex: $0.string("sha256"))! }
                #expect(try await api.storedBlobs() == Set(rows) && !rows.isEmpty)
                #expect(!FileManager.default.fileExists(atPath: scratch.path + "/api/sha256") && !FileManager.default.fileExists(atPath: scratch.path + "/worker/sha256"))

                // Helper findings: a process without the running hash read every segment back before looking at the
                // call's first chunk (tiny refused calls made it read an upload again and again), and a segment damaged
                // in the store left the upload to fail every resume until it expired, or failed its validation as the
                // tenant's broken archive. Now a refused first chunk reads nothing, and the damage fails the upload, named.
                func damagedUpload(sending: Int) async throws -> Upload {
                    let upload = try await api.withClient { try await startUpload($0, archive) }
                    _ = try await api.withClient { try await sendChunks($0, upload, archive, from: 0, to: sending) }
                    let first = try await TestPostgres.query(api.catalogDatabase, """
                        SELECT sha256 FROM upload_segments WHERE upload_id = $1 ORDER BY first_byte LIMIT 1
                        """, upload.id)[0].string("sha256")
                    try await api.damage(try #require(ContentHash(hex: first))) { $0[0] &+= 1 }
                    return upload
                }
                let resumed = try await damagedUpload(sending: half)
                await expectStatus(.outOfRange) {
                    _ = try await worker.withClient { try await sendChunks($0, resumed, archive, from: half + 1, to: archive.count) }
                }
                let lost = await expectStatus(.dataLoss) {
                    _ = try await worker.withClient { try await sendChunks($0, resumed, archive, from: half, to: archive.count) }
                }
                #expect(lost?.message.contains("damaged in the server's storage") == true, "\(String(describing: lost))")
                #expect(try await api.withClient { try await $0.unary(Backups.getUpload, .with { $0.uploadID = resumed.id }) }.state == .failed)
                let validated = try await damagedUpload(sending: archive.count)
                let failed = try await api.withClient { client in
                    let validating = try await client.unary(Backups.finishUpload, .with { $0.uploadID = validated.id })
                    return try await waitForJob(validating.jobID, on: client)
                }
                #expect(failed.status == .failed && failed.error.contains("is corrupt") && !failed.error.contains("not a valid snapshot"),
                        "\(failed.error)")

            } catch {
                Issue.record(error)
            }
            await worker.stop()
            await api.remove()
        }
    }
}
