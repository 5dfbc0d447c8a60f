import BackupRules
import BackupStorage
import BackupTestSupport
import BackupWire
import Foundation
import Testing

/// Several backupd processes on one catalog and one S3 bucket, as in
/// `docs/deployment.md`: one serves the API only (`--max-jobs 0`), another
/// runs the jobs it queues, each with a work folder of its own.
@Suite struct SeveralProcessesTests {
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
                let rows = try await TestPostgres.query(api.catalogDatabase, "SELECT sha256 FROM blobs").map { ContentHash(hex: $0.string("sha256"))! }
                #expect(try await api.storedBlobs() == Set(rows) && !rows.isEmpty)
                #expect(!FileManager.default.fileExists(atPath: scratch.path + "/api/sha256") && !FileManager.default.fileExists(atPath: scratch.path + "/worker/sha256"))
            } catch {
                Issue.record(error)
            }
            await worker.stop()
            await api.remove()
        }
    }
}
