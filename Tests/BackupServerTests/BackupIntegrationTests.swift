import BackupClient
import BackupRules
import BackupStorage
import BackupTestSupport
import BackupWire
import Foundation
import Testing

func createBackup(_ client: BackupClient, comment: String = "") async throws -> CreateBackupResponse {
    try await client.unary(Backups.createBackup, .with {
        $0.namespace = TestServer.namespace; $0.environment = "shop-production"; $0.comment = comment
    })
}

/// The file documents of the demo app that a backup must hold: with contents,
/// not delete-after-download.
func referencedKeys(_ app: TestApp) throws -> [String] {
    try TestPostgres.query(app.database, """
        SELECT "__uuid__" AS key FROM "system$filedocument" WHERE hascontents AND NOT deleteafterdownload ORDER BY 1
        """).map { $0.string("key") }
}

@discardableResult
func expectStatus(_ code: StatusCode, _ body: () async throws -> Void, sourceLocation: SourceLocation = #_sourceLocation) async -> RPCError? {
    do {
        try await body()
        Issue.record("expected \(code), the call succeeded", sourceLocation: sourceLocation)
        return nil
    } catch let error as RPCError {
        #expect(error.code == code, "\(error)", sourceLocation: sourceLocation)
        return error
    } catch {
        Issue.record("expected \(code), got \(error)", sourceLocation: sourceLocation)
        return nil
    }
}

@Suite(.serialized) struct BackupIntegrationTests {
    @Test func backupOfTheDemoAppRestoresToTheSameDataAndFiles() async throws {
        try await withTestApp { app in
            try await withInProcessServer(live: true) { server in
                try await server.register(app)
                let created = try await server.withClient { try await createBackup($0, comment: "round trip") }
                #expect(created.backup.status == .processing)
                #expect(created.job.status == .queued || created.job.status == .running)

                let (job, backup) = try await server.withClient { client in
                    (try await waitForJob(created.job.id, on: client),
                     try await client.unary(Backups.getBackup, .with { $0.id = created.backup.id }))
                }
                #expect(job.status == .finished, "\(job.error)")
                #expect(job.bytesDone == job.bytesTotal && job.bytesTotal == backup.sizeBytes)
                #expect(backup.status == .finished && backup.kind == .onDemand && backup.comment == "round trip")
                #expect(backup.packageVersion == "1.0.0" && backup.postgresVersion.hasPrefix("15"))
                #expect(backup.expiresUnixMS - backup.createdUnixMS == 14 * 86_400_000)
                let keys = try referencedKeys(app)
                #expect(keys.count == 302)
                #expect(backup.fileCount == UInt64(keys.count))

                // The dump restores into a scratch database with every table equal to the source.
                let folder = try ScratchDirectory("dump")
                defer { folder.remove() }
                let dumpPath = try await reassembledDump(server, backup.id, in: folder.path)
                #expect(ContentHash.of(try Data(contentsOf: URL(fileURLWithPath: dumpPath))).hex == backup.dumpSHA256)
                let scratch = try await TestPostgres.createDatabase("restored")
                defer { TestPostgres.dropDatabase(scratch) }
                let restore = try await runCommand("/usr/bin/pg_restore", ["--no-owner", "--exit-on-error",
                                                                     "--dbname=\(TestPostgres.connectionString(scratch))", dumpPath])
                #expect(restore.status == 0, "\(restore.standardError)")
                let source = try TestPostgres.tableFingerprints(app.database)
                #expect(source.count == 4)
                #expect(try TestPostgres.tableFingerprints(scratch) == source)

                // Every referenced file is in the blob store under the hash of its content.
                let manifest = try await TestPostgres.query(server.catalogDatabase,
                    "SELECT storage_key, sha256 FROM snapshot_files WHERE snapshot_id = $1 ORDER BY storage_key", backup.id)
                #expect(manifest.map { $0.string("storage_key") } == keys)
                for row in manifest {
                    let key = row.string("storage_key")
                    let original = try Data(contentsOf: URL(fileURLWithPath: "\(app.fileStore)/\(try FileStoreLayout.relativePath(forKey: key))"))
                    let hash = ContentHash.of(original)
                    #expect(row.string("sha256") == hash.hex)
                    #expect(try await server.storedContent(hash) == Array(original))
                }
                #expect((try? FileManager.default.contentsOfDirectory(atPath: server.blobDirectory + "/tmp"))?.isEmpty == true)
            }
        }
    }

    /// Documents that share content (here every one holds the same bytes)
    /// are stored once and back up and restore like any others.
    @Test func documentsThatShareContentBackUpAndRestore() async throws {
        try await withTestApp { app in
            for key in try referencedKeys(app) {
                try Data("the same bytes".utf8).write(to: URL(fileURLWithPath: "\(app.fileStore)/\(try FileStoreLayout.relativePath(forKey: key))"))
            }
            try await withInProcessServer { server in
                let backup = try await finishedBackup(server, app)
                #expect(backup.fileCount == UInt64(try referencedKeys(app).count) && backup.fileCount > 1)
                let verified = try await server.withClient { client in
                    try await waitForJob(try await client.unary(Backups.verifyBackup, .with { $0.id = backup.id }).id, on: client)
                }
                #expect(verified.status == .finished, "\(verified.error)")
            }
        }
    }

    @Test func aReferencedFileMissingFromTheStoreFailsTheBackupNamingIt() async throws {
        try await withTestApp { app in
            try await withInProcessServer { server in
                try await server.register(app)
                let missing = try referencedKeys(app)[17]
                try FileManager.default.removeItem(atPath: "\(app.fileStore)/\(try FileStoreLayout.relativePath(forKey: missing))")

                let created = try await server.withClient { try await createBackup($0) }
                let (job, backup) = try await server.withClient { client in
                    (try await waitForJob(created.job.id, on: client),
                     try await client.unary(Backups.getBackup, .with { $0.id = created.backup.id }))
                }
                #expect(job.status == .failed && job.error.contains(missing))
                #expect(backup.status == .failed && backup.error.contains(missing) && backup.error.contains("missing"))
                let files = try await TestPostgres.query(server.catalogDatabase, "SELECT count(*) AS n FROM snapshot_files")
                #expect(files[0].string("n") == "0")
                let activity = try await server.withClient { client in
                    try await client.unary(Backups.listActivity, .with { $0.namespace = "acme"; $0.environment = "shop-production" })
                }
                #expect(activity.activity.first?.outcome == "FAILED")
            }
        }
    }

    @Test func tokensAreCheckedForNamespaceAndRole() async throws {
        try await withTestApp { app in
            try await withInProcessServer { server in
                try await server.register(app)
                let viewer = try await server.makeToken(.viewer, name: "viewer")
                let operatorToken = try await server.makeToken(.operator, name: "operator")
                let otherAdmin = try await server.makeToken(.admin, namespace: "other", name: "other-admin")

                // A viewer lists but cannot create.
                let list = try await server.withClient(token: viewer) { client in
                    try await client.unary(Backups.listBackups, .with { $0.namespace = "acme" })
                }
                #expect(list.backups.isEmpty)
                let denied = await expectStatus(.permissionDenied) {
                    _ = try await server.withClient(token: viewer) { try await createBackup($0) }
                }
                #expect(denied?.message.contains("needs operator") == true)
                // An operator cannot register environments or make tokens.
                await expectStatus(.permissionDenied) {
                    _ = try await server.withClient(token: operatorToken) { client in
                        try await client.unary(Backups.createToken, .with { $0.namespace = "acme"; $0.role = .admin; $0.name = "x" })
                    }
                }
                // An admin elsewhere is nobody here.
                let elsewhere = await expectStatus(.permissionDenied) {
                    _ = try await server.withClient(token: otherAdmin) { try await createBackup($0) }
                }
                #expect(elsewhere?.message.contains("namespace other") == true)
                // Unknown, malformed and revoked tokens are not authenticated.
                await expectStatus(.unauthenticated) {
                    _ = try await server.withClient(token: "bkd_not-a-real-token") { try await $0.unary(Backups.serverInfo, ServerInfoRequest()) }
                }
                let tokens = try await server.withClient { try await $0.unary(Backups.listTokens, .with { $0.namespace = "acme" }) }
                let viewerID = try #require(tokens.tokens.first { $0.name == "viewer" }?.id)
                _ = try await server.withClient { try await $0.unary(Backups.revokeToken, .with { $0.id = viewerID }) }
                await expectStatus(.unauthenticated) {
                    _ = try await server.withClient(token: viewer) { try await $0.unary(Backups.serverInfo, ServerInfoRequest()) }
                }
                // Only hashes are stored.
                let stored = try await TestPostgres.query(server.catalogDatabase, "SELECT secret_sha256 FROM tokens").map { $0.string("secret_sha256") }
                #expect(!stored.contains(viewer) && stored.contains(AccessTokenSecret(presented: viewer).digest.hex))
            }
        }
    }

    @Test func anEnvironmentRunsOneJobAtATime() async throws {
        try await withTestApp { app in
            let gate = try GatedTool("pg_dump")
            try await withInProcessServer(configure: { $0.jobs.tools.pgDump = gate.path }) { server in
                try await server.register(app)
                defer { gate.release() }
                let outcomes = try await server.withClient { client in
                    try await withThrowingTaskGroup(of: Result<CreateBackupResponse, RPCError>.self) { group in
                        for _ in 0..<2 {
                            group.addTask {
                                do { return .success(try await createBackup(client)) } catch let error as RPCError { return .failure(error) }
                            }
                        }
                        return try await group.reduce(into: []) { $0.append($1) }
                    }
                }
                let created = outcomes.compactMap { try? $0.get() }
                let refused = outcomes.compactMap { if case .failure(let error) = $0 { error } else { nil } }
                #expect(created.count == 1 && refused.count == 1)
                let winner = try #require(created.first)
                #expect(refused.first?.code == .failedPrecondition)
                #expect(refused.first?.message.contains(winner.job.id) == true)
                gate.release()
                let backups = try await server.withClient { client in
                    _ = try await waitForJob(winner.job.id, on: client)
                    return try await client.unary(Backups.listBackups, .with { $0.namespace = "acme" })
                }
                #expect(backups.backups.map(\.id) == [winner.backup.id])
            }
        }
    }

    @Test func badInputIsRefusedAndChangesNothing() async throws {
        try await withTestApp { app in
            try await withInProcessServer { server in
                try await server.register(app)
                try await server.withClient(token: server.platformToken) { platform in
                    let bad = await expectStatus(.invalidArgument) {
                        _ = try await platform.unary(Backups.registerEnvironment, .with {
                            $0.namespace = "acme"; $0.name = "Bad Name!"; $0.app = "shop"; $0.databaseURL = app.connectionString
                            $0.fileStorePath = app.fileStore + "-other"
                        })
                    }
                    #expect(bad?.message.contains("Bad Name!") == true)
                    await expectStatus(.invalidArgument) {
                        _ = try await platform.unary(Backups.registerEnvironment, .with {
                            $0.namespace = "acme"; $0.name = "relative"; $0.app = "shop"; $0.databaseURL = app.connectionString
                            $0.fileStorePath = "files"
                        })
                    }
                    await expectStatus(.alreadyExists) {
                        _ = try await platform.unary(Backups.registerEnvironment, .with {
                            $0.namespace = "acme"; $0.name = "shop-production"; $0.app = "shop"; $0.databaseURL = app.connectionString
                            $0.fileStorePath = app.fileStore
                        })
                    }
                }
                try await server.withClient { client in
                    let environments = try await client.unary(Backups.listEnvironments, ListEnvironmentsRequest())
                    #expect(environments.environments.map(\.name) == ["shop-production"])

                    await expectStatus(.invalidArgument) { _ = try await client.unary(Backups.getBackup, .with { $0.id = "nope" }) }
                    let notFound = await expectStatus(.notFound) {
                        _ = try await client.unary(Backups.getBackup, .with { $0.id = UUID().uuidString })
                    }
                    #expect(notFound?.message.contains("does not exist") == true)
                    await expectStatus(.notFound) {
                        _ = try await client.unary(Backups.createBackup, .with { $0.namespace = "acme"; $0.environment = "nowhere" })
                    }
                    await expectStatus(.invalidArgument) {
                        _ = try await client.unary(Backups.listBackups, .with { $0.namespace = "acme"; $0.pageSize = 501 })
                    }
                    await expectStatus(.invalidArgument) {
                        _ = try await client.unary(Backups.listBackups, .with { $0.namespace = "acme"; $0.pageToken = "garbage" })
                    }
                    let jobs = try await TestPostgres.query(server.catalogDatabase, "SELECT count(*) AS n FROM jobs")
                    #expect(jobs[0].string("n") == "0")

                    // An environment with backups is not deleted unless forced.
                    let created = try await createBackup(client)
                    _ = try await waitForJob(created.job.id, on: client)
                }
                try await server.withClient(token: server.platformToken) { platform in
                    await expectStatus(.failedPrecondition) {
                        _ = try await platform.unary(Backups.deleteEnvironment, .with { $0.namespace = "acme"; $0.name = "shop-production" })
                    }
                    let forced = try await platform.unary(Backups.deleteEnvironment, .with {
                        $0.namespace = "acme"; $0.name = "shop-production"; $0.force = true
                    })
                    #expect(forced.deletedBackups == 1)
                }
            }
        }
    }

    @Test func deletingABackupRemovesOnlyBlobsNoOtherBackupUses() async throws {
        try await withTestApp { app in
            try await withInProcessServer(live: true) { server in
                try await server.register(app)
                try await server.withClient { client in
                    let first = try await createBackup(client)
                    _ = try await waitForJob(first.job.id, on: client)
                    // Change one file and some rows: the second backup shares every other blob.
                    let changedKey = try referencedKeys(app)[0]
                    try "changed".write(toFile: "\(app.fileStore)/\(try FileStoreLayout.relativePath(forKey: changedKey))",
                                        atomically: true, encoding: .utf8)
                    try await TestPostgres.query(app.database, "UPDATE \"shop$order\" SET status = 'cancelled' WHERE id < 10")
                    let second = try await createBackup(client)
                    _ = try await waitForJob(second.job.id, on: client)

                    let blobs = { () throws -> Set<String> in
                        Set(try TestPostgres.query(server.catalogDatabase, "SELECT sha256 FROM blobs").map { $0.string("sha256") })
                    }
                    let secondBlobs = await Set(try TestPostgres.query(server.catalogDatabase, """
                        SELECT sha256 FROM snapshot_files WHERE snapshot_id = $1 UNION SELECT blob_sha256 FROM dump_chunks WHERE snapshot_id = $1
                        """, second.backup.id).map { $0.string("sha256") })
                    #expect(try blobs().count == secondBlobs.count + 2)  // first's old file and its dump's one chunk

                    _ = try await client.unary(Backups.deleteBackup, .with { $0.id = first.backup.id })
                    await expectStatus(.notFound) { _ = try await client.unary(Backups.getBackup, .with { $0.id = first.backup.id }) }
                    try await eventually { try blobs() == secondBlobs }
                    for hex in secondBlobs { _ = try await server.storedContent(ContentHash(hex: hex)!) }

                    _ = try await client.unary(Backups.deleteBackup, .with { $0.id = second.backup.id })
                    try await eventually {
                        let stored = try await server.storedBlobs()
                        return try blobs().isEmpty && stored.isDisjoint(with: secondBlobs.map { ContentHash(hex: $0)! })
                    }
                }
            }
        }
    }

    @Test func scratchFilesOfJobsThatNoLongerRunAreSwept() async throws {
        try await withTestServer { server in
            let scratch = server.blobDirectory + "/tmp"
            let orphanDump = "\(scratch)/dump-\(UUID().uuidString.lowercased()).backup"
            let oldPartial = "\(scratch)/abandoned.partial"
            let freshPartial = "\(scratch)/in-progress.partial"
            for path in [orphanDump, oldPartial, freshPartial] {
                #expect(FileManager.default.createFile(atPath: path, contents: Data("left behind".utf8)))
            }
            try FileManager.default.setAttributes([.modificationDate: Date().addingTimeInterval(-2 * 86_400)], ofItemAtPath: oldPartial)
            // A restart collects garbage at once.
            await server.stop()
            let restarted = try await TestServer.start(catalogDatabase: server.catalogDatabase, storage: server.storage,
                                                       adminToken: server.adminToken)
            try await eventually {
                !FileManager.default.fileExists(atPath: orphanDump) && !FileManager.default.fileExists(atPath: oldPartial)
            }
            #expect(FileManager.default.fileExists(atPath: freshPartial))
            await restarted.remove()
        }
    }

    @Test func watchJobStreamsProgressToTheEnd() async throws {
        try await withTestApp { app in
            let gate = try GatedTool("pg_dump")
            try await withInProcessServer(configure: { $0.jobs.tools.pgDump = gate.path }) { server in
                try await server.register(app)
                // The dump goes on once the job is running.
                let releasing = Task {
                    try await eventually(within: .seconds(60)) { gate.hasStarted }
                    gate.release()
                }
                defer { releasing.cancel(); gate.release() }
                let updates = try await server.withClient { client in
                    let created = try await createBackup(client)
                    let collected = UpdateLog()
                    try await client.serverStreaming(Backups.watchJob, .with { $0.id = created.job.id }) { await collected.add($0) }
                    return await collected.jobs
                }
                #expect(updates.count >= 2)
                #expect(updates.last?.status == .finished)
                #expect(updates.last.map { $0.bytesDone == $0.bytesTotal && $0.bytesTotal > 0 } == true)
                #expect(updates.contains { $0.status == .running })
            }
        }
    }

    @Test func aDeadlineEndsACallThatRunsTooLong() async throws {
        try await withTestApp { app in
            let gate = try GatedTool("pg_dump")
            try await withInProcessServer(configure: { $0.jobs.tools.pgDump = gate.path }) { server in
                try await server.register(app)
                defer { gate.release() }
                try await server.withClient { client in
                    let created = try await createBackup(client)
                    await expectStatus(.deadlineExceeded) {
                        try await client.call(Backups.watchJob, requests: [.with { $0.id = created.job.id }],
                                              timeout: .milliseconds(300)) { _ in }
                    }
                    // The connection still serves other calls.
                    #expect(try await client.unary(Backups.getJob, .with { $0.id = created.job.id }).id == created.job.id)
                }
            }
        }
    }

    @Test func manyCallsShareOneConnection() async throws {
        try await withTestApp { app in
            try await withInProcessServer { server in
                try await server.register(app)
                let names = try await server.withClient { client in
                    try await withThrowingTaskGroup(of: String.self) { group in
                        for index in 0..<40 {
                            group.addTask {
                                index.isMultiple(of: 2)
                                    ? try await client.unary(Backups.getEnvironment, .with { $0.namespace = "acme"; $0.name = "shop-production" }).name
                                    : try await client.unary(Backups.serverInfo, ServerInfoRequest()).callerTokenName
                            }
                        }
                        return try await group.reduce(into: [String]()) { $0.append($1) }
                    }
                }
                #expect(names.filter { $0 == "shop-production" }.count == 20)
                #expect(names.filter { $0 == "test-admin" }.count == 20)
            }
        }
    }

    @Test func pagesOfBackupsAreNewestFirst() async throws {
        try await withTestApp { app in
            try await withInProcessServer { server in
                try await server.register(app)
                try await server.withClient { client in
                    var ids: [String] = []
                    for index in 0..<3 {
                        let created = try await createBackup(client, comment: "backup \(index)")
                        _ = try await waitForJob(created.job.id, on: client)
                        ids.append(created.backup.id)
                    }
                    let first = try await client.unary(Backups.listBackups, .with { $0.namespace = "acme"; $0.pageSize = 2 })
                    #expect(first.backups.map(\.id) == [ids[2], ids[1]] && !first.nextPageToken.isEmpty)
                    let second = try await client.unary(Backups.listBackups, .with {
                        $0.namespace = "acme"; $0.pageSize = 2; $0.pageToken = first.nextPageToken
                    })
                    #expect(second.backups.map(\.id) == [ids[0]] && second.nextPageToken.isEmpty)
                    let failedOnly = try await client.unary(Backups.listBackups, .with { $0.namespace = "acme"; $0.status = .failed })
                    #expect(failedOnly.backups.isEmpty)
                }
            }
        }
    }
}

actor UpdateLog {
    var jobs: [Job] = []
    func add(_ job: Job) { jobs.append(job) }
}

/// Retries `condition` for a few seconds (background work such as garbage collection).
func eventually(within timeout: Duration = .seconds(10), _ condition: () async throws -> Bool,
                sourceLocation: SourceLocation = #_sourceLocation) async throws {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(20))
    }
    if try await condition() { return }
    Issue.record("condition did not become true within \(timeout)", sourceLocation: sourceLocation)
}
