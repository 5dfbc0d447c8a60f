import BackupCatalog
import BackupClient
import BackupRules
import BackupStorage
import BackupServer
import BackupTestSupport
import BackupWire
import Foundation
import Testing

/// Asks for a download of `backup` and waits until its archive is ready.
func readyDownload(_ client: BackupClient, _ backup: Backup, databaseOnly: Bool = false) async throws -> Download {
    let requested = try await client.unary(Backups.requestDownload, .with { $0.backupID = backup.id; $0.databaseOnly = databaseOnly })
    let job = try await waitForJob(requested.jobID, on: client)
    #expect(job.status == .finished, "\(job.error)")
    return try await client.unary(Backups.getDownload, .with { $0.id = requested.id })
}

/// The blobs of a server's ready archives that its store holds.
func storedArchives(_ server: some BackupTestServer) async throws -> [ContentHash] {
    let ready = try await TestPostgres.query(server.catalogDatabase, "SELECT blob FROM archives WHERE state = 'ready'")
        .compactMap { ContentHash(hex: $0.string("blob")) }
    let stored = try await server.storedBlobs()
    return ready.filter(stored.contains)
}

/// What an upload has received: its segments' content from the store, in order.
func receivedContent(_ server: some BackupTestServer, _ upload: Upload) async throws -> [UInt8] {
    let segments = try await TestPostgres.query(server.catalogDatabase, """
        SELECT sha256 FROM upload_segments WHERE upload_id = $1 ORDER BY first_byte
        """, upload.id).map { try #require(ContentHash(hex: $0.string("sha256"))) }
    var bytes: [UInt8] = []
    for segment in segments { bytes += try await server.storedContent(segment) }
    return bytes
}

/// Writes a stored archive to a file of its own, for tar and pg_restore to read.
func archiveFile(_ server: some BackupTestServer, _ archive: ContentHash) async throws -> String {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("archive-\(UUID().uuidString)").path
    try Data(try await server.storedContent(archive)).write(to: URL(fileURLWithPath: path))
    return path
}

/// A server that sweeps its archive cache, looks for work, five times a
/// second, and collects unreferenced blobs every second.
func sweepingOften(_ configuration: inout ServerConfiguration) {
    configuration.jobs.sweepInterval = .milliseconds(200)
    configuration.jobs.pollInterval = .milliseconds(200)
    configuration.jobs.garbageCollectionInterval = .seconds(1)
}

/// Preparing downloads through the API: the archive job, its archive in the
/// cache, sharing, the cache's limit, expiry and deletion.
@Suite(.serialized) struct DownloadTests {
    @Test func aFullArchiveIsPreparedOnceAndSharedByLaterRequests() async throws {
        try await withTestApp { app in
            try await withInProcessServer { server in
                let backup = try await finishedBackup(server, app)
                try await server.withClient { client in
                    let requested = try await client.unary(Backups.requestDownload, .with { $0.backupID = backup.id })
                    #expect(!requested.jobID.isEmpty && requested.url.isEmpty && requested.filename.hasPrefix("files_and_database-"))
                    let job = try await waitForJob(requested.jobID, on: client)
                    #expect(job.status == .finished && job.kind == .archive && job.bytesDone == job.bytesTotal && job.bytesTotal > 0)
                    let ready = try await client.unary(Backups.getDownload, .with { $0.id = requested.id })
                    #expect(ready.ready && ready.backupID == backup.id && !ready.databaseOnly)
                    let stamp = utcTime(backup.createdUnixMS / 1000, format: "%Y%m%d%H%M")
                    #expect(ready.filename == "files_and_database-\(backup.id.prefix(8))-\(stamp).tar.gz")
                    #expect(ready.url.hasPrefix("https://127.0.0.1:7443/v1/downloads/\(ready.id)/\(ready.filename)?expires="))
                    #expect(ready.url.contains("&kid=test-new&sig="))
                    let lifetime = ready.urlExpiresUnixMS - Int64(Date().timeIntervalSince1970 * 1000)
                    #expect(lifetime > 7 * 3600 * 1000 && lifetime <= 8 * 3600 * 1000)

                    // The one archive in the store is what GetDownload describes, and plain tar reads it.
                    let stored = try await storedArchives(server)
                    #expect(stored.map(\.hex) == [ready.sha256])
                    let path = try await archiveFile(server, stored[0])
                    defer { try? FileManager.default.removeItem(atPath: path) }
                    let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
                    #expect(UInt64(bytes.count) == ready.sizeBytes && ContentHash.of(bytes).hex == ready.sha256)
                    let listed = try await runCommand("/bin/tar", ["-tzf", path])
                    let members = listed.standardOutput.split(separator: "\n").map(String.init)
                    #expect(members.prefix(2) == [".metadata", "db/db.backup"])
                    #expect(members.count == 2 + Int(backup.fileCount) && members.dropFirst(2).allSatisfy { $0.hasPrefix("tree/") })

                    // A second request shares the archive: no new job, ready at once, a URL of its own.
                    let again = try await client.unary(Backups.requestDownload, .with { $0.backupID = backup.id })
                    #expect(again.ready && again.jobID == requested.jobID && again.id != requested.id && again.sha256 == ready.sha256)
                    #expect(try await storedArchives(server).count == 1)

                    let activity = try await client.unary(Backups.listActivity, .with { $0.namespace = TestServer.namespace }).activity
                    #expect(activity.filter { $0.action == "download" && $0.outcome == "REQUESTED" && $0.actor == "test-admin" }.count == 2)
                    #expect(activity.contains { $0.action == "archive" && $0.outcome == "FINISHED" && $0.backupID == backup.id })
                }
            }
        }
    }

    @Test func aDatabaseOnlyDownloadIsTheBareDump() async throws {
        try await withTestApp { app in
            try await withInProcessServer { server in
                let backup = try await finishedBackup(server, app)
                let ready = try await server.withClient { try await readyDownload($0, backup, databaseOnly: true) }
                #expect(ready.databaseOnly && ready.filename.hasPrefix("database-\(backup.id.prefix(8))-") && ready.filename.hasSuffix(".backup"))
                #expect(ready.sha256 == backup.dumpSHA256 && ready.sizeBytes == backup.databaseBytes)
                let path = try await archiveFile(server, try #require(ContentHash(hex: ready.sha256)))
                defer { try? FileManager.default.removeItem(atPath: path) }
                let listed = try await runCommand("/usr/bin/pg_restore", ["--list", path])
                #expect(listed.status == 0 && listed.standardOutput.contains("TABLE DATA"))
            }
        }
    }

    @Test func aFullCacheRefusesWithResourceExhaustedAndRecordsNothing() async throws {
        try await withTestApp { app in
            try await withInProcessServer(configure: { $0.downloads.cacheBytes = 1024 }) { server in
                let backup = try await finishedBackup(server, app)
                let refused = await expectStatus(.resourceExhausted) {
                    _ = try await server.withClient { try await $0.unary(Backups.requestDownload, .with { $0.backupID = backup.id }) }
                }
                #expect(refused?.message.contains("namespace acme's archives take 0 of the 512 bytes of the archive cache it may use") == true)
                for table in ["downloads", "archives"] {
                    await #expect(try TestPostgres.query(server.catalogDatabase, "SELECT count(*) AS n FROM \(table)")[0].int64("n") == 0)
                }
                await #expect(try TestPostgres.query(server.catalogDatabase, "SELECT count(*) AS n FROM jobs WHERE kind = 'archive'")[0].int64("n") == 0)
                await #expect(try TestPostgres.query(server.catalogDatabase, "SELECT count(*) AS n FROM activity WHERE action = 'download'")[0].int64("n") == 0)
                #expect(try await storedArchives(server).isEmpty)
            }
        }
    }

    /// Helper finding: one namespace's archives could fill the whole cache
    /// (cheaply, as backups that deduplicate) and lock every other namespace
    /// out, and the refusal told how much all namespaces had prepared.
    @Test func oneNamespaceTakesAtMostItsShareOfTheArchiveCache() async throws {
        try await withTestApp { app in
            try await withTestApp { otherApp in
                try await withInProcessServer(configure: { $0.downloads.cacheBytes = 100_000_000 }) { server in
                    let first = try await finishedBackup(server, app)
                    _ = try await server.withClient { try await readyDownload($0, first) }
                    // acme's archives take all but 10 kB of the 50 MB a namespace may use: its next archive does not fit.
                    try await TestPostgres.query(server.catalogDatabase, "UPDATE archives SET size = 49990000")
                    let refused = await expectStatus(.resourceExhausted) {
                        _ = try await server.withClient { try await $0.unary(Backups.requestDownload, .with { $0.backupID = first.id; $0.databaseOnly = true }) }
                    }
                    #expect(refused?.message.hasPrefix("namespace acme's archives take 49990000 of the 50000000 bytes") == true)

                    // Another namespace still gets its archive.
                    let otherAdmin = try await server.makeToken(.admin, namespace: "other", name: "other-admin")
                    try await server.withClient(token: server.platformToken) { client in
                        _ = try await client.unary(Backups.registerEnvironment, .with {
                            $0.namespace = "other"; $0.name = "shop"; $0.app = "shop"
                            $0.databaseURL = otherApp.connectionString; $0.fileStorePath = otherApp.fileStore
                        })
                    }
                    try await server.withClient(token: otherAdmin) { client in
                        let created = try await client.unary(Backups.createBackup, .with { $0.namespace = "other"; $0.environment = "shop" })
                        #expect(try await waitForJob(created.job.id, on: client).status == .finished)
                        let theirs = try await client.unary(Backups.getBackup, .with { $0.id = created.backup.id })
                        #expect(try await readyDownload(client, theirs).ready)
                        // When the cache as a whole is full, the refusal says so and nothing of what others hold.
                        try await TestPostgres.query(server.catalogDatabase, """
                            UPDATE archives a SET size = 99000000 FROM snapshots s WHERE s.id = a.snapshot_id AND s.id = $1
                            """, first.id)
                        let full = await expectStatus(.resourceExhausted) {
                            _ = try await client.unary(Backups.requestDownload, .with { $0.backupID = theirs.id; $0.databaseOnly = true })
                        }
                        #expect(full?.message.hasPrefix("the archive cache is full, and this archive needs up to ") == true)
                        #expect(full?.message.contains("acme") == false && full?.message.contains("99000000") == false)
                    }
                }
            }
        }
    }

    /// Helper finding: the disk's refusal told the free space and the sum of
    /// every namespace's archives being prepared.
    @Test func aFullDiskRefusesNamingOnlyThisArchive() async throws {
        try await withTestApp { app in
            try await withInProcessServer(configure: { $0.downloads.reservedDiskBytes = 1 << 60 }) { server in
                let backup = try await finishedBackup(server, app)
                let refused = await expectStatus(.resourceExhausted) {
                    _ = try await server.withClient { try await $0.unary(Backups.requestDownload, .with { $0.backupID = backup.id; $0.databaseOnly = true }) }
                }
                #expect(refused?.message == "the archive cache's disk has too little free space for an archive of up to "
                        + "\(backup.databaseBytes) bytes (it keeps \(1 << 60) bytes free); try again later")
                // The request was taken back whole: no archive, no job to prepare it, no activity entry.
                await #expect(try TestPostgres.query(server.catalogDatabase, "SELECT count(*) AS n FROM archives")[0].int64("n") == 0)
                await #expect(try TestPostgres.query(server.catalogDatabase, "SELECT count(*) AS n FROM jobs WHERE kind = 'archive'")[0].int64("n") == 0)
                await #expect(try TestPostgres.query(server.catalogDatabase, "SELECT count(*) AS n FROM activity WHERE action = 'download'")[0].int64("n") == 0)
            }
        }
    }

    /// Helper finding: two requests for one backup's archive on a full disk;
    /// the first one's withdrawal deleted the archive the second had just
    /// joined (INTERNAL, or a download that then did not exist). A request
    /// now either gets a download that exists or is refused, whatever the order.
    @Test func requestsRacingOnAFullDiskEachGetADownloadThatExistsOrARefusal() async throws {
        try await withTestApp { app in
            try await withInProcessServer(configure: { $0.downloads.reservedDiskBytes = 1 << 60 }) { server in
                let backup = try await finishedBackup(server, app)
                try await server.withClient { client in
                    for _ in 0..<10 {
                        let outcomes = try await withThrowingTaskGroup(of: Result<Download, RPCError>.self) { group in
                            for _ in 0..<2 {
                                group.addTask {
                                    do { return .success(try await client.unary(Backups.requestDownload, .with { $0.backupID = backup.id })) }
                                    catch let error as RPCError { return .failure(error) }
                                }
                            }
                            return try await group.reduce(into: []) { $0.append($1) }
                        }
                        for outcome in outcomes {
                            switch outcome {
                            case .success(let download):
                                _ = try await client.unary(Backups.getDownload, .with { $0.id = download.id })
                            case .failure(let error):
                                #expect(error.code == .resourceExhausted, "\(error)")
                            }
                        }
                    }
                }
            }
        }
    }

    /// Found by a full run: the disk was checked after the request's job was
    /// queued and committed, so a runner could take the job up before a
    /// refusal took it back; it ran on the full disk and failed, and the
    /// next request, made once there was room, joined that failing job.
    /// The disk is now checked before anything is recorded: a job of a
    /// refused request never exists, even for a moment.
    @Test func aRequestRefusedForTheDisksRoomNeverQueuesAJob() async throws {
        try await withTestApp { app in
            try await withInProcessServer(configure: { $0.downloads.reservedDiskBytes = 1 << 60 }) { server in
                let backup = try await finishedBackup(server, app)
                // Every archive job ever inserted, whatever becomes of it.
                for statement in [
                    "CREATE TABLE archive_jobs_seen (id uuid)",
                    """
                    CREATE FUNCTION see_archive_job() RETURNS trigger LANGUAGE plpgsql AS $$
                    BEGIN INSERT INTO archive_jobs_seen VALUES (NEW.id); RETURN NULL; END $$
                    """,
                    """
                    CREATE TRIGGER archive_jobs_seen AFTER INSERT ON jobs FOR EACH ROW WHEN (NEW.kind = 'archive')
                        EXECUTE FUNCTION see_archive_job()
                    """,
                ] { try await TestPostgres.query(server.catalogDatabase, statement) }
                try await server.withClient { client in
                    let refused = await expectStatus(.resourceExhausted) {
                        _ = try await client.unary(Backups.requestDownload, .with { $0.backupID = backup.id })
                    }
                    #expect(refused?.message.contains("free") == true, "\(String(describing: refused))")
                }
                await #expect(try TestPostgres.query(server.catalogDatabase, "SELECT id FROM archive_jobs_seen").isEmpty)
                await #expect(try TestPostgres.query(server.catalogDatabase, "SELECT id FROM archives").isEmpty)
                await #expect(try TestPostgres.query(server.catalogDatabase, "SELECT id FROM activity WHERE action = 'download'").isEmpty)
            }
        }
    }

    /// Helper finding: a ready archive whose file was lost (the cache moved,
    /// or was on a disk that did not survive a restart) was shared forever,
    /// each new request handing out a URL that answered 404. Archives are
    /// blobs of the store now; one the store lost is forgotten the same way.
    @Test func aReadyArchiveWhoseBlobWasLostIsForgottenAndPreparedAgain() async throws {
        try await withTestApp { app in
            try await withInProcessServer(configure: sweepingOften) { server in
                let backup = try await finishedBackup(server, app)
                try await server.withClient { client in
                    let first = try await readyDownload(client, backup)
                    try await server.removeBlob(try #require(ContentHash(hex: first.sha256)))
                    try await eventually {
                        try TestPostgres.query(server.catalogDatabase, "SELECT count(*) AS n FROM archives")[0].int64("n") == 0
                    }
                    let again = try await readyDownload(client, backup)
                    #expect(again.jobID != first.jobID && again.sha256 == first.sha256)
                    #expect(try await storedArchives(server).map(\.hex) == [again.sha256])
                }
            }
        }
    }

    @Test func onlyAFinishedBackupIsDownloadedAndBadIdsAreNamed() async throws {
        try await withInProcessServer { server in
            try await server.withClient { client in
                let malformed = await expectStatus(.invalidArgument) {
                    _ = try await client.unary(Backups.requestDownload, .with { $0.backupID = "../../etc/passwd" })
                }
                #expect(malformed?.message == "backup id \"../../etc/passwd\" is not a UUID")
                let unknown = await expectStatus(.invalidArgument) { _ = try await client.unary(Backups.getDownload, .with { $0.id = "x" }) }
                #expect(unknown?.message == "download id \"x\" is not a UUID")
            }
            let failed = UUID().uuidString.lowercased()
            try await TestPostgres.query(server.catalogDatabase, "INSERT INTO namespaces (name) VALUES ('acme') ON CONFLICT DO NOTHING")
            try await TestPostgres.query(server.catalogDatabase, """
                INSERT INTO environments (namespace, name, app, database_url, file_store_path, file_query, state)
                VALUES ('acme', 'spare', 'shop', 'dbname=x', '/nowhere', 'SELECT 1', 'running')
                """)
            try await TestPostgres.query(server.catalogDatabase,
                                   "INSERT INTO snapshots (id, environment_id, status, kind) SELECT $1, id, 'failed', 'on-demand' FROM environments", failed)
            let refused = await expectStatus(.failedPrecondition) {
                _ = try await server.withClient { try await $0.unary(Backups.requestDownload, .with { $0.backupID = failed }) }
            }
            #expect(refused?.message == "backup \(failed) is failed; only a finished backup can be downloaded")
        }
    }

    @Test func deletingTheBackupRemovesItsArchiveAndItsDownloads() async throws {
        try await withTestApp { app in
            try await withInProcessServer { server in
                let backup = try await finishedBackup(server, app)
                let ready = try await server.withClient { client in
                    let ready = try await readyDownload(client, backup)
                    #expect(try await storedArchives(server).count == 1)
                    _ = try await client.unary(Backups.deleteBackup, .with { $0.id = backup.id })
                    let gone = await expectStatus(.notFound) { _ = try await client.unary(Backups.getDownload, .with { $0.id = ready.id }) }
                    #expect(gone?.message == "download \(ready.id) does not exist")
                    return ready
                }
                // Its blob goes with the collection the deletion asks for.
                let archive = try #require(ContentHash(hex: ready.sha256))
                try await eventually { try await !server.storedBlobs().contains(archive) }
            }
        }
    }

    /// Either kind of archive. Helper finding: a database-only archive is
    /// the bare dump, whose hash is its snapshot's, and a snapshot kept any
    /// blob of that hash: that archive stayed in the store as long as the
    /// backup did.
    @Test(arguments: [false, true])
    func anArchiveGoesWhenItsLastURLExpiresAndALaterRequestPreparesItAgain(databaseOnly: Bool) async throws {
        try await withTestApp { app in
            try await withInProcessServer(configure: {
                sweepingOften(&$0)
                $0.downloads.urlLifetime = .seconds(2)
            }) { server in
                let backup = try await finishedBackup(server, app)
                let backupsBlobs = try await server.storedBlobs()
                try await server.withClient { client in
                    // Only the jobs are watched: on a loaded machine the two-second URL may
                    // already have expired, and its download gone, by the time a job's end is seen.
                    let first = try await client.unary(Backups.requestDownload, .with { $0.backupID = backup.id; $0.databaseOnly = databaseOnly })
                    #expect(try await waitForJob(first.jobID, on: client).status == .finished)
                    // The archive is forgotten, and its blob collected.
                    try await eventually {
                        let forgotten = try await TestPostgres.query(server.catalogDatabase, "SELECT id FROM archives").isEmpty
                        let stored = try await server.storedBlobs()
                        return forgotten && stored == backupsBlobs
                    }
                    let second = try await client.unary(Backups.requestDownload, .with { $0.backupID = backup.id; $0.databaseOnly = databaseOnly })
                    #expect(second.jobID != first.jobID)
                    #expect(try await waitForJob(second.jobID, on: client).status == .finished)
                }
            }
        }
    }
}
