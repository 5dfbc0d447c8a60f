import BackupClient
import BackupRules
import BackupStorage
import BackupPostgres
import BackupServer
import BackupTestSupport
import BackupWire
import Foundation
import Testing

/// The catalog's PostgreSQL restarted (not only its sessions ended) while
/// work is under way, on a cluster of the test's own: each job ends as
/// designed (FINISHED, or FAILED with its reason), nothing is left half
/// cataloged, what a failed job stored is collected, and the server goes on
/// serving once the catalog is back.
@Suite(.serialized) struct CatalogRestartTests {
    /// Calls `body` until it succeeds: while the catalog is down, calls fail UNAVAILABLE or INTERNAL.
    private func once<T: Sendable>(_ server: InProcessServer, _ body: @escaping @Sendable (BackupClient) async throws -> T) async throws -> T {
        let deadline = ContinuousClock.now + .seconds(60)
        while true {
            do {
                return try await server.withClient(body)
            } catch let error as RPCError where [.unavailable, .internal].contains(error.code) && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(50))
            }
        }
    }

    /// Stops the catalog's cluster until the server has found it gone (a call
    /// that needs it is answered UNAVAILABLE), then starts it again.
    private func restartCatalog(_ cluster: TestCluster, under server: InProcessServer, asking jobID: String) async throws {
        try await cluster.stop()
        let refused = await #expect(throws: RPCError.self) {
            try await server.withClient { try await $0.unary(Backups.getJob, .with { $0.id = jobID }) }
        }
        #expect(refused?.code == .unavailable, "\(String(describing: refused))")
        try await cluster.startAgain()
    }

    private func unfinished(_ catalog: TestCluster, _ database: String) throws -> Int64 {
        try PostgresConnection(catalog.connectionString(database))
            .query("SELECT count(*) AS n FROM snapshots WHERE status = 'processing'")[0].int64("n")
    }

    @Test func aBackupAndAnUploadOutliveARestartOfTheCatalogOrFailCleanly() async throws {
        let catalogCluster = try await TestCluster.start()
        defer { catalogCluster.remove() }
        try await withTestApp { app in
            let gate = try GatedTool("pg_dump")
            try await withInProcessServer(catalogCluster: catalogCluster, configure: {
                $0.jobs.tools.pgDump = gate.path
                $0.jobs.garbageCollectionInterval = .seconds(1)
                $0.jobs.pollInterval = .milliseconds(200)
            }) { server in
                try await server.register(app)
                let created = try await server.withClient { client in
                    try await client.unary(Backups.createBackup, .with { $0.namespace = "acme"; $0.environment = "shop-production" })
                }
                try await eventually(within: .seconds(60)) { gate.hasStarted }
                // An upload half sent before the restart.
                let archive = Array(repeating: UInt8(7), count: 200_000)
                let upload = try await server.withClient { try await startUpload($0, archive) }
                _ = try await server.withClient { try await sendChunks($0, upload, archive, from: 0, to: 100_000) }

                try await restartCatalog(catalogCluster, under: server, asking: created.job.id)
                gate.release()

                let backup = try await once(server) { try await waitForJob(created.job.id, on: $0) }
                #expect([.finished, .failed].contains(backup.status), "\(backup.status) \(backup.error)")
                // The upload goes on from what it kept.
                let resumed = try await once(server) { try await $0.unary(Backups.getUpload, .with { $0.uploadID = upload.id }) }
                #expect(resumed.state == .receiving && resumed.bytesReceived == 100_000)
                _ = try await once(server) { try await sendChunks($0, upload, archive, from: 100_000, to: archive.count) }
                let received = try await once(server) { try await $0.unary(Backups.getUpload, .with { $0.uploadID = upload.id }) }
                #expect(received.bytesReceived == 200_000)

                // The server serves, and a backup made now finishes whole.
                let again = try await once(server) { client in
                    let next = try await client.unary(Backups.createBackup, .with { $0.namespace = "acme"; $0.environment = "shop-production" })
                    return try await waitForJob(next.job.id, on: client)
                }
                #expect(again.status == .finished, "\(again.error)")
                let verified = try await once(server) { client in
                    let job = try await client.unary(Backups.verifyBackup, .with { $0.id = again.backupID })
                    return try await waitForJob(job.id, on: client)
                }
                #expect(verified.status == .finished)
                #expect(try unfinished(catalogCluster, server.catalogDatabase) == 0, "a backup was left half cataloged")
            }
        }
    }

    /// A restore and a download under way while the catalog restarts: the
    /// restore ends fully old or fully new with no staging copy left, the
    /// archive is prepared or fails with its reason, and a download of a
    /// ready archive is served again once the catalog is back.
    @Test func aRestoreAndADownloadOutliveARestartOfTheCatalog() async throws {
        let catalogCluster = try await TestCluster.start()
        defer { catalogCluster.remove() }
        try await withTestApp { app in
            let gate = try GatedTool("pg_restore")
            try await withInProcessServer(catalogCluster: catalogCluster, configure: {
                $0.jobs.tools.pgRestore = gate.path
                sweepingOften(&$0)
            }) { server in
                let backup = try await finishedBackup(server, app)
                let atBackup = try EnvironmentState(app)
                try changeEverything(app)
                let before = try EnvironmentState(app)
                let restore = try await requestRestore(server, backup.id)
                let download = try await server.withClient { try await $0.unary(Backups.requestDownload, .with { $0.backupID = backup.id }) }
                try await eventually(within: .seconds(60)) { gate.hasStarted }

                try await restartCatalog(catalogCluster, under: server, asking: restore.id)
                gate.release()

                let restored = try await once(server) { try await waitForJob(restore.id, on: $0) }
                let state = try EnvironmentState(app)
                if restored.status == .finished {
                    #expect(state.tables == atBackup.tables)
                } else {
                    #expect(restored.status == .failed && state == before, "\(restored.error)")
                }
                try await eventually(within: .seconds(30)) { try databases(containing: "\(app.database)_restore_").isEmpty }
                try noStagingLeft(app)

                let prepared = try await once(server) { try await waitForJob(download.jobID, on: $0) }
                #expect([.finished, .failed].contains(prepared.status), "\(prepared.error)")
                // Asked again once the catalog is back, the download is prepared (or still ready) and its URL opens.
                let again = try await once(server) { client in
                    let requested = try await client.unary(Backups.requestDownload, .with { $0.backupID = backup.id })
                    if !requested.jobID.isEmpty { _ = try await waitForJob(requested.jobID, on: client) }
                    return try await client.unary(Backups.getDownload, .with { $0.id = requested.id })
                }
                #expect(again.url.contains("/v1/downloads/"), "\(again)")
            }
        }
    }

    /// A download streaming while the catalog's PostgreSQL restarts goes on
    /// to its last byte (the archive is read from the cache, the catalog is
    /// asked only when a request arrives); a request that arrives while the
    /// catalog is down is answered 503, and once it is back the link opens
    /// again. A process, because downloads are served by its HTTPS listener.
    @Test func aDownloadStreamsThroughARestartOfTheCatalog() async throws {
        let catalogCluster = try await TestCluster.start()
        defer { catalogCluster.remove() }
        try await withTestApp { app in
            try addDocument(to: app, size: 6 << 20, content: .incompressible)
            let server = try await TestServer.start(catalogCluster: catalogCluster)
            let scratch = try ScratchDirectory("download-restart")
            defer { scratch.remove() }
            do {
                try await server.register(app)
                let download = try await server.withClient { client in
                    let created = try await client.unary(Backups.createBackup, .with { $0.namespace = "acme"; $0.environment = "shop-production" })
                    let backup = try await waitForJob(created.job.id, on: client)
                    let requested = try await client.unary(Backups.requestDownload, .with { $0.backupID = backup.backupID })
                    _ = try await waitForJob(requested.jobID, on: client)
                    return try await client.unary(Backups.getDownload, .with { $0.id = requested.id })
                }
                #expect(download.ready && download.sizeBytes > 6 << 20)
                let saved = scratch.path + "/archive.tar.gz"
                // About four seconds long at 1.5 MiB/s.
                let slow = try BackgroundCommand("/usr/bin/curl", ["-sS", "--cacert", TestServer.caFile, "--limit-rate", "1536k", "-o", saved, download.url])
                try await eventually(within: .seconds(30)) {
                    ((try? FileManager.default.attributesOfItem(atPath: saved)[.size] as? Int) ?? 0) > 1 << 20
                }
                try await catalogCluster.stop()
                let whileDown = try await fetch(download.url)
                #expect(whileDown.status == 503)
                try await catalogCluster.startAgain()
                try await eventually(within: .seconds(60)) { !slow.isRunning }
                #expect(slow.terminationStatus == 0)
                let bytes = try Data(contentsOf: URL(fileURLWithPath: saved))
                #expect(UInt64(bytes.count) == download.sizeBytes && ContentHash.of(bytes).hex == download.sha256)
                try await eventually(within: .seconds(30)) { try await fetch(download.url, extra: ["-r", "0-99", "-o", "/dev/null"]).status == 206 }
            } catch {
                print(server.log)
                await server.remove()
                throw error
            }
            await server.remove()
        }
    }
}
