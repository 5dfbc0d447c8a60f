import BackupClient
import BackupRules
import BackupStorage
import BackupTestSupport
import BackupWire
import Foundation
import Testing

/// Everything a restore may change about an environment, to compare before and after.
struct EnvironmentState: Equatable {
    let tables: [String: String]
    let files: [String: String]

    init(_ app: TestApp) throws {
        tables = try TestPostgres.tableFingerprints(app.database)
        files = try folderFingerprint(app.fileStore)
    }
}

/// Makes a finished backup of `app` as environment shop-production and stops the environment.
func finishedBackup(_ server: some BackupTestServer, _ app: TestApp, name: String = "shop-production") async throws -> Backup {
    try await server.register(app, as: name)
    return try await server.withClient { client in
        let created = try await client.unary(Backups.createBackup, .with { $0.namespace = TestServer.namespace; $0.environment = name })
        let job = try await waitForJob(created.job.id, on: client)
        #expect(job.status == .finished, "\(job.error)")
        _ = try await client.unary(Backups.setEnvironmentState, .with { $0.namespace = TestServer.namespace; $0.name = name; $0.state = .stopped })
        return try await client.unary(Backups.getBackup, .with { $0.id = created.backup.id })
    }
}

func restore(_ client: BackupClient, _ backup: Backup, to environment: String = "shop-production",
             databaseOnly: Bool = false, acceptVersionMismatch: Bool = false) async throws -> Job {
    let job = try await client.unary(Backups.restoreBackup, .with {
        $0.backupID = backup.id; $0.targetNamespace = TestServer.namespace; $0.targetEnvironment = environment
        $0.databaseOnly = databaseOnly; $0.acceptVersionMismatch = acceptVersionMismatch
    })
    return try await waitForJob(job.id, on: client)
}

/// Changes rows in every table and the file store: modifies, deletes and adds files.
/// Asks for a restore of `backupID` into the test namespace's shop-production; returns its job, queued.
func requestRestore(_ server: some BackupTestServer, _ backupID: String) async throws -> Job {
    try await server.withClient { client in
        try await client.unary(Backups.restoreBackup, .with {
            $0.backupID = backupID; $0.targetNamespace = TestServer.namespace; $0.targetEnvironment = "shop-production"
        })
    }
}

func changeEverything(_ app: TestApp) throws {
    try TestPostgres.query(app.database, "UPDATE \"shop$order\" SET status = 'lost' WHERE id % 3 = 0")
    try TestPostgres.query(app.database, "DELETE FROM \"shop$invoice\" WHERE id > 300")
    try TestPostgres.query(app.database, "INSERT INTO \"shop$customer\" VALUES (999999, 'New', 'new@example.com', now())")
    try TestPostgres.query(app.database, "CREATE TABLE added_after_backup (id int)")
    let files = try folderFingerprint(app.fileStore).keys.sorted()
    try "changed".write(toFile: "\(app.fileStore)/\(files[0])", atomically: false, encoding: .utf8)
    try FileManager.default.removeItem(atPath: "\(app.fileStore)/\(files[1])")
    try "new".write(toFile: "\(app.fileStore)/\(String(files[2].prefix(6)))new-document", atomically: false, encoding: .utf8)
}

func noStagingLeft(_ app: TestApp, sourceLocation: SourceLocation = #_sourceLocation) throws {
    #expect(try databases(containing: "\(app.database)_restore_").isEmpty, sourceLocation: sourceLocation)
    let parent = URL(fileURLWithPath: app.fileStore).deletingLastPathComponent().path
    let leftovers = try FileManager.default.contentsOfDirectory(atPath: parent).filter { $0.contains(".restore-") }
    #expect(leftovers.isEmpty, sourceLocation: sourceLocation)
}

@Suite(.serialized) struct RestoreTests {
    /// Helper finding: backupd asked the app's database for its own name
    /// with an unqualified `current_database()`, which a schema first on the
    /// app's search path answered: a name that does not exist crashed the
    /// server (an empty row list indexed), another database of the role was
    /// swapped instead of the environment's. backupd's own statements now
    /// resolve in `pg_catalog` only; the file query keeps the app's path.
    @Test func theAppsSearchPathCannotAnswerBackupdsOwnQuestions() async throws {
        try await withTestApp { app in
            let decoy = try await TestPostgres.createDatabase("decoy")
            try await withInProcessServer { server in
                for statement in [
                    "CREATE SCHEMA atk",
                    "CREATE FUNCTION atk.current_database() RETURNS name LANGUAGE sql AS $$ SELECT '\(decoy)'::name $$",
                    "CREATE VIEW atk.pg_database AS SELECT * FROM pg_catalog.pg_database WHERE datname = '\(decoy)'",
                ] { try await TestPostgres.query(app.database, statement) }
                try await TestPostgres.query("postgres", "ALTER DATABASE \(app.database) SET search_path = atk, public, pg_catalog")
                let atBackup = try EnvironmentState(app)
                // The file query still finds the app's tables on the app's own path.
                let backup = try await finishedBackup(server, app)
                #expect(backup.fileCount > 0)
                try changeEverything(app)
                let job = try await server.withClient { try await restore($0, backup) }
                #expect(job.status == .finished, "\(job.error)")
                #expect(try EnvironmentState(app).tables == atBackup.tables)
                #expect(try databases(containing: decoy) == [decoy], "the decoy was renamed")
                try noStagingLeft(app)
            }
            await TestPostgres.dropDatabase(decoy)
        }
    }

    /// Helper finding (second round): the restore's marker, planted by the
    /// tenant in its own store before the swap, kept a restore that failed
    /// before the swap RUNNING for good ("the restored files cannot be moved
    /// out yet"), its environment locked and its staging copies kept. Before
    /// the swap no folder is renamed, so such a marker counts for nothing.
    @Test func aMarkerPlantedInTheStoreBeforeTheSwapDoesNotHoldAFailedRestore() async throws {
        try await withTestApp { app in
            let gate = try GatedTool("pg_restore", failingWith: "pg_restore: error: simulated")
            try await withInProcessServer(configure: { $0.jobs.tools.pgRestore = gate.path }) { server in
                let backup = try await finishedBackup(server, app)
                let before = try EnvironmentState(app)
                let job = try await requestRestore(server, backup.id)
                try await eventually(within: .seconds(60)) { gate.hasStarted }
                let planted = app.fileStore + "/.backupd-restore-\(job.id)"
                #expect(FileManager.default.createFile(atPath: planted, contents: nil))
                gate.release()
                let ended = try await server.withClient { try await waitForJob(job.id, on: $0, timeout: .seconds(60)) }
                #expect(ended.status == .failed && ended.error.contains("simulated"), "\(ended.status) \(ended.error)")
                try FileManager.default.removeItem(atPath: planted)
                #expect(try EnvironmentState(app) == before)
                try noStagingLeft(app)
            }
        }
    }

    @Test func aRestoreBringsBackEveryTableAndFileAsTheyWereAtBackupTime() async throws {
        try await withTestApp { app in
            try await withInProcessServer { server in
                let atBackup = try EnvironmentState(app)
                let backup = try await finishedBackup(server, app)
                // The snapshot holds the referenced files only: delete-after-download ones are not restored.
                let referenced = Set(try referencedKeys(app))
                try changeEverything(app)
                #expect(try EnvironmentState(app) != atBackup)

                let job = try await server.withClient { try await restore($0, backup) }
                #expect(job.status == .finished, "\(job.error)")
                #expect(job.kind == .restore && job.bytesDone == job.bytesTotal && job.bytesTotal > 0)

                let restored = try EnvironmentState(app)
                #expect(restored.tables == atBackup.tables)
                #expect(Set(restored.files.keys.map { String($0.split(separator: "/").last!) }) == referenced)
                #expect(restored.files == atBackup.files.filter { referenced.contains(String($0.key.split(separator: "/").last!)) })
                try noStagingLeft(app)
                // The state before the restore is kept until the next one.
                #expect(try databases(containing: "\(app.database)_prerestore").count == 1)
                #expect(FileManager.default.fileExists(atPath: app.fileStore + ".prerestore"))

                let activity = try await server.withClient { client in
                    try await client.unary(Backups.listActivity, .with { $0.namespace = "acme"; $0.environment = "shop-production" })
                }
                #expect(activity.activity.first.map { $0.action == "restore" && $0.outcome == "FINISHED" } == true)
                // The environment stays stopped; starting it is the operator's call.
                let environment = try await server.withClient { client in
                    try await client.unary(Backups.getEnvironment, .with { $0.namespace = "acme"; $0.name = "shop-production" })
                }
                #expect(environment.state == .stopped)
            }
        }
    }

    @Test func aBackupRestoresIntoAnotherEnvironmentOfTheNamespace() async throws {
        try await withTestApp { production in
            try await withTestApp { acceptance in
                try await withInProcessServer { server in
                    try await TestPostgres.query(production.database, "UPDATE \"shop$customer\" SET name = 'Production ' || id")
                    let atBackup = try EnvironmentState(production)
                    let backup = try await finishedBackup(server, production)
                    try await server.register(acceptance, as: "shop-acceptance")
                    try await server.withClient { client in
                        _ = try await client.unary(Backups.setEnvironmentState, .with {
                            $0.namespace = "acme"; $0.name = "shop-acceptance"; $0.state = .stopped
                        })
                        let job = try await restore(client, backup, to: "shop-acceptance")
                        #expect(job.status == .finished, "\(job.error)")
                    }
                    #expect(try TestPostgres.tableFingerprints(acceptance.database) == atBackup.tables)
                    #expect(try EnvironmentState(production) == atBackup)
                }
            }
        }
    }

    @Test func restoringAcrossNamespacesIsRefusedWhateverTheCallersRoles() async throws {
        try await withTestApp { app in
            try await withTestApp { other in
                try await withInProcessServer { server in
                    let backup = try await finishedBackup(server, app)
                    let otherAdmin = try await server.makeToken(.admin, namespace: "other", name: "other-admin")
                    _ = try await server.withClient(token: server.platformToken) { client in
                        try await client.unary(Backups.registerEnvironment, .with {
                            $0.namespace = "other"; $0.name = "shop-production"; $0.app = "shop"; $0.databaseURL = other.connectionString
                            $0.fileStorePath = other.fileStore; $0.packageVersion = "1.0.0"; $0.state = .stopped
                        })
                    }
                    let before = try EnvironmentState(other)
                    // An admin here may not send this namespace's backup elsewhere…
                    let outward = await expectStatus(.permissionDenied) {
                        _ = try await server.withClient { client in
                            try await client.unary(Backups.restoreBackup, .with {
                                $0.backupID = backup.id; $0.targetNamespace = "other"; $0.targetEnvironment = "shop-production"
                            })
                        }
                    }
                    #expect(outward?.message.contains("namespace acme") == true)
                    // …and to the other namespace's admin it does not exist.
                    await expectStatus(.notFound) {
                        _ = try await server.withClient(token: otherAdmin) { client in
                            try await client.unary(Backups.restoreBackup, .with {
                                $0.backupID = backup.id; $0.targetNamespace = "other"; $0.targetEnvironment = "shop-production"
                            })
                        }
                    }
                    #expect(try EnvironmentState(other) == before)
                    let restoreJobs = try await TestPostgres.query(server.catalogDatabase, "SELECT count(*) AS n FROM jobs WHERE kind = 'restore'")
                    #expect(restoreJobs[0].string("n") == "0")
                }
            }
        }
    }

    @Test func everyPreconditionIsCheckedBeforeAnythingIsTouched() async throws {
        try await withTestApp { app in
            let gate = try GatedTool("pg_dump")
            gate.release()
            try await withInProcessServer(configure: { $0.jobs.tools.pgDump = gate.path }) { server in
                let backup = try await finishedBackup(server, app)
                gate.hold()
                let before = try EnvironmentState(app)
                let viewer = try await server.makeToken(.viewer, name: "viewer")
                try await server.withClient { client in
                    let request = RestoreBackupRequest.with {
                        $0.backupID = backup.id; $0.targetNamespace = "acme"; $0.targetEnvironment = "shop-production"
                    }
                    // Running target.
                    _ = try await client.unary(Backups.setEnvironmentState, .with { $0.namespace = "acme"; $0.name = "shop-production"; $0.state = .running })
                    let running = await expectStatus(.failedPrecondition) { _ = try await client.unary(Backups.restoreBackup, request) }
                    #expect(running?.message.contains("stop the environment first") == true)
                    _ = try await client.unary(Backups.setEnvironmentState, .with { $0.namespace = "acme"; $0.name = "shop-production"; $0.state = .stopped })

                    // Package version differs.
                    _ = try await client.unary(Backups.updateEnvironment, .with { $0.namespace = "acme"; $0.name = "shop-production"; $0.packageVersion = "2.0.0" })
                    let mismatch = await expectStatus(.failedPrecondition) { _ = try await client.unary(Backups.restoreBackup, request) }
                    #expect(mismatch?.message.contains("1.0.0") == true && mismatch?.message.contains("2.0.0") == true)
                    _ = try await client.unary(Backups.updateEnvironment, .with { $0.namespace = "acme"; $0.name = "shop-production"; $0.packageVersion = "1.0.0" })

                    // A viewer may not restore.
                    await expectStatus(.permissionDenied) {
                        _ = try await server.withClient(token: viewer) { try await $0.unary(Backups.restoreBackup, request) }
                    }

                    // Another job runs on the target: a backup (held at its dump), which is still processing.
                    let running2 = try await client.unary(Backups.createBackup, .with { $0.namespace = "acme"; $0.environment = "shop-production" })
                    let busy = await expectStatus(.failedPrecondition) { _ = try await client.unary(Backups.restoreBackup, request) }
                    #expect(busy?.message.contains(running2.job.id) == true)
                    // A backup that is not finished cannot be restored.
                    let unfinished = await expectStatus(.failedPrecondition) {
                        _ = try await client.unary(Backups.restoreBackup, .with {
                            $0.backupID = running2.backup.id; $0.targetNamespace = "acme"; $0.targetEnvironment = "shop-production"
                        })
                    }
                    #expect(unfinished?.message.contains("not finished") == true)
                    gate.release()
                    _ = try await waitForJob(running2.job.id, on: client)
                }
                #expect(try EnvironmentState(app) == before)
                let restoreJobs = try await TestPostgres.query(server.catalogDatabase, "SELECT count(*) AS n FROM jobs WHERE kind = 'restore'")
                #expect(restoreJobs[0].string("n") == "0")
                try noStagingLeft(app)
            }
        }
    }

    @Test func aMismatchedVersionRestoresWhenAccepted() async throws {
        try await withTestApp { app in
            try await withInProcessServer { server in
                let backup = try await finishedBackup(server, app)
                try await server.withClient { client in
                    _ = try await client.unary(Backups.updateEnvironment, .with { $0.namespace = "acme"; $0.name = "shop-production"; $0.packageVersion = "2.0.0" })
                    let job = try await restore(client, backup, databaseOnly: true, acceptVersionMismatch: true)
                    #expect(job.status == .finished, "\(job.error)")
                }
            }
        }
    }

    @Test func aCorruptDumpFailsTheRestoreAndLeavesTheTargetAsItWas() async throws {
        try await withTestApp { app in
            try await withInProcessServer(live: true) { server in
                let backup = try await finishedBackup(server, app)
                try changeEverything(app)
                let before = try EnvironmentState(app)
                try await server.storage.replaceContent(of: try storedDump(server, backup.id).blobs[0].hash, with: Array("corruption".utf8))

                let job = try await server.withClient { try await restore($0, backup) }
                #expect(job.status == .failed && job.error.contains("corrupt"))
                #expect(try EnvironmentState(app) == before)
                try noStagingLeft(app)
                let activity = try await server.withClient { client in
                    try await client.unary(Backups.listActivity, .with { $0.namespace = "acme"; $0.environment = "shop-production" })
                }
                #expect(activity.activity.first.map { $0.outcome == "FAILED" && $0.detail.contains("corrupt") } == true)
            }
        }
    }

    @Test func aMissingFileBlobFailsTheRestoreAndLeavesTheTargetAsItWas() async throws {
        try await withTestApp { app in
            try await withInProcessServer(live: true) { server in
                let backup = try await finishedBackup(server, app)
                try changeEverything(app)
                let before = try EnvironmentState(app)
                let row = try await TestPostgres.query(server.catalogDatabase,
                    "SELECT storage_key, sha256 FROM snapshot_files WHERE snapshot_id = $1 ORDER BY storage_key DESC LIMIT 1", backup.id)[0]
                let (store, hash) = (try server.storage.open(), ContentHash(hex: row.string("sha256"))!)
                try await onThread { try store.remove(hash) }

                let job = try await server.withClient { try await restore($0, backup) }
                #expect(job.status == .failed && job.error.contains(row.string("storage_key")) && job.error.contains("missing"))
                #expect(try EnvironmentState(app) == before)
                try noStagingLeft(app)
            }
        }
    }

    @Test func aBackupdKilledMidRestoreIsCleanedUpAtTheNextStart() async throws {
        try await withTestApp { app in
            let gate = try GatedTool("pg_restore")
            defer { gate.release() }
            let first = try await TestServer.start(arguments: ["--pg-restore", gate.path, "--job-lease-seconds", "2"])
            let backup = try await finishedBackup(first, app)
            try changeEverything(app)
            let before = try EnvironmentState(app)
            let job = try await requestRestore(first, backup.id)
            try await eventually { try !databases(containing: "\(app.database)_restore_").isEmpty }
            // While the restore runs, the environment cannot be started.
            await expectStatus(.failedPrecondition) {
                _ = try await first.withClient { client in
                    try await client.unary(Backups.setEnvironmentState, .with { $0.namespace = "acme"; $0.name = "shop-production"; $0.state = .running })
                }
            }
            await first.stop(signal: SIGKILL)

            let second = try await TestServer.start(arguments: ["--job-lease-seconds", "2"], catalogDatabase: first.catalogDatabase,
                                                    storage: first.storage, adminToken: first.adminToken)
            do {
                let ended = try await second.withClient { try await waitForJob(job.id, on: $0, timeout: .seconds(60)) }
                #expect(ended.status == .failed && ended.error.contains("target is unchanged"))
                #expect(try EnvironmentState(app) == before)
                try noStagingLeft(app)
                // Nor its copy of the dump in the scratch folder.
                #expect(!(try FileManager.default.contentsOfDirectory(atPath: first.blobDirectory + "/tmp")).contains { $0.contains(job.id) })
                // The environment can be restored again afterwards.
                let again = try await second.withClient { try await restore($0, backup) }
                #expect(again.status == .finished, "\(again.error)")
            } catch {
                print(second.log)
                throw error
            }
            await second.remove()
            await first.remove()
        }
    }

    @Test func thePreviousStateCanBeDroppedRightAway() async throws {
        try await withTestApp { app in
            try await withInProcessServer(configure: { $0.jobs.keepPreviousOnRestore = false }) { server in
                let backup = try await finishedBackup(server, app)
                let job = try await server.withClient { try await restore($0, backup) }
                #expect(job.status == .finished, "\(job.error)")
                #expect(try databases(containing: "\(app.database)_prerestore").isEmpty)
                #expect(!FileManager.default.fileExists(atPath: app.fileStore + ".prerestore"))
                try noStagingLeft(app)
            }
        }
    }

    @Test func aDatabaseOnlyRestoreLeavesTheFilesAlone() async throws {
        try await withTestApp { app in
            try await withInProcessServer { server in
                let atBackup = try EnvironmentState(app)
                let backup = try await finishedBackup(server, app)
                try changeEverything(app)
                let filesBefore = try folderFingerprint(app.fileStore)

                let job = try await server.withClient { try await restore($0, backup, databaseOnly: true) }
                #expect(job.status == .finished, "\(job.error)")
                #expect(try TestPostgres.tableFingerprints(app.database) == atBackup.tables)
                #expect(try folderFingerprint(app.fileStore) == filesBefore)
                #expect(!FileManager.default.fileExists(atPath: app.fileStore + ".prerestore"))
            }
        }
    }

    @Test func theCLIRestoresAndWarnsAboutAVersionMismatch() async throws {
        try await withTestApp { app in
            try await withInProcessServer(live: true) { server in
                let backup = try await finishedBackup(server, app)
                _ = try await server.withClient { client in
                    try await client.unary(Backups.updateEnvironment, .with { $0.namespace = "acme"; $0.name = "shop-production"; $0.packageVersion = "1.1.0" })
                }
                let warned = try await server.backupctl(["restore", backup.id, "--to", "shop-production"])
                #expect(warned.status != 0)
                #expect(warned.standardError.contains("1.0.0") && warned.standardError.contains("1.1.0")
                        && warned.standardError.contains("--accept-version-mismatch"))
                await #expect(try TestPostgres.query(server.catalogDatabase, "SELECT count(*) AS n FROM jobs WHERE kind = 'restore'")[0].string("n") == "0")

                let restored = try await server.backupctl(["restore", backup.id, "--to", "acme/shop-production", "--accept-version-mismatch",
                                                     "--wait", "--json"])
                #expect(restored.status == 0, "\(restored.standardError)")
                #expect(restored.standardOutput.contains("JOB_STATUS_FINISHED"))
                let activity = try await server.backupctl(["activity", "--env", "acme/shop-production"])
                #expect(activity.standardOutput.contains("restore") && activity.standardOutput.contains("FINISHED"))
            }
        }
    }
}

@Suite(.serialized) struct RestoreRecoveryIntegrationTests {
    /// backupd killed right after each step from the swap on: the next
    /// process ends the restore fully old (before the databases were
    /// swapped) or fully new (after), never mixed.
    @Test(arguments: [("swap-recorded", false), ("folders-swapped", false), ("databases-swapped", true)])
    func aRestoreKilledAtAStepEndsFullyOldOrFullyNew(_ step: String, _ restored: Bool) async throws {
        try await withTestApp { app in
            // Each server is removed (process, catalog, scratch) however the test ends.
            try await withTestServer(arguments: ["--die-after-restore-step", step, "--job-lease-seconds", "2"]) { first in
                let backup = try await finishedBackup(first, app)
                let atBackup = try EnvironmentState(app)
                try changeEverything(app)
                let before = try EnvironmentState(app)
                let job = try await requestRestore(first, backup.id)
                try await eventually(within: .seconds(60)) { !first.isRunning }
                let recorded = try await TestPostgres.query(first.catalogDatabase, "SELECT step FROM restores WHERE job_id = $1", job.id)[0]
                #expect(recorded.string("step") == step)

                let second = try await TestServer.start(arguments: ["--job-lease-seconds", "2"], catalogDatabase: first.catalogDatabase,
                                                        storage: first.storage, adminToken: first.adminToken)
                do {
                    let ended = try await second.withClient { try await waitForJob(job.id, on: $0, timeout: .seconds(60)) }
                    let state = try EnvironmentState(app)
                    if restored {
                        #expect(ended.status == .finished, "\(ended.error)")
                        #expect(state.tables == atBackup.tables)
                        #expect(Set(state.files.keys.map { String($0.split(separator: "/").last!) }) == Set(try referencedKeys(app)))
                        #expect(!state.files.keys.contains { $0.contains(".backupd-restore-") })
                    } else {
                        #expect(ended.status == .failed && ended.error.contains("after step \(step)")
                                && ended.error.contains("target is unchanged"), "\(ended.error)")
                        #expect(state == before)
                    }
                    try noStagingLeft(app)
                } catch {
                    print(second.log)
                    await second.remove()
                    throw error
                }
                await second.remove()
            }
        }
    }
}
