import BackupClient
import BackupRules
import BackupStorage
import BackupTestSupport
import BackupWire
import Foundation
import Testing

/// backupd killed outright (`kill -9`; a process, because that is the
/// point) while it validates an upload or prepares an archive: the next
/// process fails the job with the reason, catalogs nothing half done, and
/// its sweeps leave no spool file, scratch file, partial archive or blob behind.
@Suite(.serialized) struct KilledServerTests {
    @Test func aServerKilledWhileValidatingAnUploadLeavesNothingHalfDone() async throws {
        try await withTestApp { app in
            // pg_restore --list, the validation's check of the dump, is held: backupd is killed in the middle of it.
            let gate = try GatedTool("pg_restore")
            let first = try await TestServer.start(arguments: ["--job-lease-seconds", "2", "--pg-restore", gate.path])
            try await first.register(app)
            let archivePath = try ScratchDirectory("killed-upload")
            defer { archivePath.remove() }
            // An archive of this app, made the way downloads make one, uploaded back.
            let backup = try await first.withClient { client in
                let created = try await client.unary(Backups.createBackup, .with { $0.namespace = "acme"; $0.environment = "shop-production" })
                return try await waitForJob(created.job.id, on: client)
            }
            #expect(try await first.backupctl(["download", backup.backupID, "-o", archivePath.path + "/a.tar.gz"]).status == 0)
            let content = Array(try Data(contentsOf: URL(fileURLWithPath: archivePath.path + "/a.tar.gz")))
            let upload = try await first.withClient { client in
                let upload = try await startUpload(client, content)
                try await sendChunks(client, upload, content, from: 0, to: content.count, chunk: 1 << 20)
                return try await client.unary(Backups.finishUpload, .with { $0.uploadID = upload.id })
            }
            try await eventually(within: .seconds(60)) { gate.hasStarted }
            await first.stop(signal: SIGKILL)
            gate.release()

            let second = try await TestServer.start(arguments: ["--job-lease-seconds", "2"], catalogDatabase: first.catalogDatabase,
                                                    storage: first.storage, adminToken: first.adminToken)
            do {
                let ended = try await second.withClient { try await waitForJob(upload.jobID, on: $0, timeout: .seconds(60)) }
                #expect(ended.status == .failed)
                let failed = try await second.withClient { try await $0.unary(Backups.getUpload, .with { $0.uploadID = upload.id }) }
                #expect(failed.state == .failed && failed.backupID.isEmpty, "\(failed)")
                let backups = try await TestPostgres.query(second.catalogDatabase, "SELECT count(*) AS n FROM snapshots WHERE kind = 'uploaded'")
                #expect(backups[0].int64("n") == 0)
                // Spool file, scratch dump and the blobs only the upload had go with the sweeps; the first backup's stay.
                try await eventually(within: .seconds(90)) {
                    let spool = (try? FileManager.default.contentsOfDirectory(atPath: second.blobDirectory + "/uploads")) ?? []
                    let scratch = (try? FileManager.default.contentsOfDirectory(atPath: second.blobDirectory + "/tmp")) ?? []
                    return spool.isEmpty && !scratch.contains { $0.contains(upload.jobID) }
                }
                let verified = try await second.withClient { client in
                    let job = try await client.unary(Backups.verifyBackup, .with { $0.id = backup.backupID })
                    return try await waitForJob(job.id, on: client)
                }
                #expect(verified.status == .finished, "\(verified.error)")
            } catch {
                print(second.log)
                throw error
            }
            await second.remove()
            await first.remove()
        }
    }

    /// backupd killed while it writes a download's archive: the next process
    /// fails the preparation with its reason once the lease runs out, its
    /// sweep removes the partial file, and the download asked again is
    /// prepared whole.
    @Test func aServerKilledWhilePreparingAnArchiveLeavesNoPartialFileAndPreparesItAgain() async throws {
        try await withTestApp { app in
            // 48 MiB of text at gzip level 9: the archive takes seconds to write.
            try addDocument(to: app, size: 48 << 20, content: .text)
            let first = try await TestServer.start(arguments: ["--job-lease-seconds", "2", "--archive-gzip-level", "9"])
            try await first.register(app)
            let cache = first.blobDirectory + "/archives"
            let backupID = try await first.withClient { client in
                let created = try await client.unary(Backups.createBackup, .with { $0.namespace = "acme"; $0.environment = "shop-production" })
                return try await waitForJob(created.job.id, on: client).backupID
            }
            @Sendable func partials() -> [String] {
                ((try? FileManager.default.contentsOfDirectory(atPath: cache)) ?? []).filter { $0.hasSuffix(".partial") }
            }
            // Watched and killed from a thread of its own, started before the download is asked for, the moment the
            // partial file is there: a watch on the cooperative pool, or on the tests' shared blocking threads, busy
            // with other tests, once began only after the seconds the archive took.
            let pid = first.processIdentifier
            let watch = Task {
                await withCheckedContinuation { (done: CheckedContinuation<Bool, Never>) in
                    Thread {
                        let deadline = Date().addingTimeInterval(60)
                        while Date() < deadline {
                            if !partials().isEmpty { kill(pid, SIGKILL); done.resume(returning: true); return }
                            usleep(2_000)
                        }
                        done.resume(returning: false)
                    }.start()
                }
            }
            let download = try await first.withClient { try await $0.unary(Backups.requestDownload, .with { $0.backupID = backupID }) }
            let killedMidWrite = await watch.value
            await first.stop(signal: SIGKILL)
            if !killedMidWrite { print(first.log) }
            #expect(killedMidWrite && partials().count == 1)

            let second = try await TestServer.start(arguments: ["--job-lease-seconds", "2"], catalogDatabase: first.catalogDatabase,
                                                    storage: first.storage, adminToken: first.adminToken)
            do {
                let ended = try await second.withClient { try await waitForJob(download.jobID, on: $0, timeout: .seconds(60)) }
                #expect(ended.status == .failed && !ended.error.isEmpty, "\(ended.status) \(ended.error)")
                try await eventually(within: .seconds(90)) { partials().isEmpty }
                let again = try await second.withClient { client in
                    let requested = try await client.unary(Backups.requestDownload, .with { $0.backupID = backupID })
                    #expect(try await waitForJob(requested.jobID, on: client).status == .finished)
                    return try await client.unary(Backups.getDownload, .with { $0.id = requested.id })
                }
                #expect(again.ready)
                let saved = try ScratchDirectory("killed-archive")
                defer { saved.remove() }
                #expect(try await curl(["-o", saved.path + "/a.tar.gz", again.url]).status == 0)
                let bytes = try Data(contentsOf: URL(fileURLWithPath: saved.path + "/a.tar.gz"))
                #expect(ContentHash.of(bytes).hex == again.sha256)
                #expect(partials().isEmpty)
            } catch {
                print(second.log)
                await second.remove()
                await first.remove()  // its folder holds the blobs both used
                throw error
            }
            await second.remove()
            await first.remove()
        }
    }
}
