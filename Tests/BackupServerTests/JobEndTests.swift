import BackupCatalog
import BackupClient
import BackupRules
import BackupStorage
import BackupPostgres
import BackupTestSupport
import BackupWire
import Foundation
import Testing

/// A lock an app's user holds on one of its tables: pg_dump waits for it
/// for as long as it is held, the way it would behind a long migration.
final class HeldLock: Sendable {
    private let connection: PostgresConnection

    init(_ app: TestApp, table: String = "shop$customer") throws {
        connection = try PostgresConnection(app.connectionString)
        try connection.query("BEGIN")
        try connection.query("LOCK TABLE \"\(table)\" IN ACCESS EXCLUSIVE MODE")
    }

    func release() { _ = try? connection.query("ROLLBACK") }
}

/// The sessions on an app's database waiting to lock a table, as pg_dump does first.
func dumpSessions(_ app: TestApp) throws -> Int64 {
    try TestPostgres.query("postgres", """
        SELECT count(*) AS n FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LOCK TABLE %' AND wait_event_type = 'Lock'
        """, app.database)[0].int64("n")
}

/// The pg_dump processes working on an app's database.
func dumpProcesses(_ app: TestApp) -> [String] {
    processes(naming: app.database).filter { $0.contains("pg_dump") }
}

/// Processes whose command line names `fragment` (a database name, say).
func processes(naming fragment: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { pid in
        guard Int(pid) != nil, let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return nil }
        let line = String(decoding: data.map { $0 == 0 ? 32 : $0 }, as: UTF8.self)
        return line.contains(fragment) && !line.contains("/proc/") ? "\(pid): \(line)" : nil
    }
}

/// Starts a backup of `environment` and waits until its pg_dump is blocked on `lock`.
func hungBackup(_ server: some BackupTestServer, _ app: TestApp, environment: String = "shop-production",
                token: String? = nil) async throws -> CreateBackupResponse {
    let created = try await server.withClient(token: token) { client in
        try await client.unary(Backups.createBackup, .with { $0.namespace = TestServer.namespace; $0.environment = environment })
    }
    try await eventually { try dumpSessions(app) > 0 }
    return created
}

@Suite(.serialized) struct JobEndTests {

    /// An app database that accepts connections and never answers, and a
    /// file query stuck behind a lock: each job ends with the reason.
    @Test func aHungAppDatabaseTimesOutWithAClearReason() async throws {
        try await withTestApp { app in
            try await withInProcessServer(configure: { $0.appDatabases.connectTimeoutSeconds = 2; $0.appDatabases.fileQueryTimeout = "2s" }) { server in
                try await server.register(app)
                let silent = try SilentListener()
                defer { silent.close() }
                try await TestPostgres.query(server.catalogDatabase, "UPDATE environments SET database_url = $1",
                                       "host=127.0.0.1 port=\(silent.port) dbname=app user=app connect_timeout=600")
                let started = ContinuousClock.now
                let silentJob = try await server.withClient { client in
                    let created = try await client.unary(Backups.createBackup, .with { $0.namespace = TestServer.namespace; $0.environment = "shop-production" })
                    return try await waitForJob(created.job.id, on: client, timeout: .seconds(30))
                }
                #expect(silentJob.status == .failed && silentJob.error.contains("timeout"), "\(silentJob.error)")
                #expect(ContinuousClock.now - started < .seconds(15))

                try await TestPostgres.query(server.catalogDatabase, "UPDATE environments SET database_url = $1", app.connectionString)
                let lock = try HeldLock(app, table: "system$filedocument")
                defer { lock.release() }
                let stuckJob = try await server.withClient { client in
                    let created = try await client.unary(Backups.createBackup, .with { $0.namespace = TestServer.namespace; $0.environment = "shop-production" })
                    return try await waitForJob(created.job.id, on: client, timeout: .seconds(30))
                }
                #expect(stuckJob.status == .failed && stuckJob.error == "the file query ran longer than its timeout of 2s", "\(stuckJob.error)")
            }
        }
    }

    /// With two job slots, one namespace holds at most one: its second hung
    /// backup waits, and another namespace's backup runs and finishes.
    @Test func oneNamespacesHungJobsDoNotDelayAnothers() async throws {
        try await withTestApp { first in
            try await withTestApp { second in
                try await withTestApp { other in
                    try await withInProcessServer(configure: { $0.jobs.maximumConcurrentJobs = 2 }) { server in
                        try await server.register(first, as: "shop-production")
                        try await server.register(second, as: "shop-acceptance")
                        try await server.withClient(token: server.platformToken) { platform in
                            _ = try await platform.unary(Backups.registerEnvironment, .with {
                                $0.namespace = "beta"; $0.name = "crm-production"; $0.app = "crm"
                                $0.databaseURL = other.connectionString; $0.fileStorePath = other.fileStore
                            })
                        }
                        let locks = [try HeldLock(first), try HeldLock(second)]
                        defer { locks.forEach { $0.release() } }
                        let hung = try await hungBackup(server, first)
                        let waiting = try await server.withClient { client in
                            try await client.unary(Backups.createBackup, .with { $0.namespace = TestServer.namespace; $0.environment = "shop-acceptance" })
                        }
                        let betaToken = try await server.makeToken(.operator, namespace: "beta")
                        let betaJob = try await server.withClient(token: betaToken) { client in
                            let created = try await client.unary(Backups.createBackup, .with { $0.namespace = "beta"; $0.environment = "crm-production" })
                            return try await waitForJob(created.job.id, on: client, timeout: .seconds(60))
                        }
                        #expect(betaJob.status == .finished, "\(betaJob.error)")
                        try await server.withClient { client in
                            #expect(try await client.unary(Backups.getJob, .with { $0.id = waiting.job.id }).status == .queued)
                            for id in [hung.job.id, waiting.job.id] { _ = try await client.unary(Backups.cancelJob, .with { $0.id = id }) }
                            for id in [hung.job.id, waiting.job.id] {
                                #expect(try await waitForJob(id, on: client, timeout: .seconds(20)).status == .cancelled)
                            }
                        }
                    }
                }
            }
        }
    }

    /// The shutdown grace runs on the runner's clock: a job still running
    /// is stopped and recorded "interrupted" once the grace has passed on
    /// that clock, never before, in milliseconds of the test's time.
    @Test func aJobStillRunningWhenTheShutdownGraceEndsOnTheRunnersClockIsInterrupted() async throws {
        let clock = ManualClock()
        try await withTestApp { app in
            try await withInProcessServer(configure: { $0.clock = clock; $0.jobs.shutdownGrace = .seconds(30) }) { server in
                try await server.register(app)
                let lock = try HeldLock(app)
                defer { lock.release() }
                let created = try await hungBackup(server, app)
                func job() throws -> PostgresRow {
                    try TestPostgres.query(server.catalogDatabase, "SELECT status, error FROM jobs WHERE id = $1", created.job.id)[0]
                }
                await server.beginShutdown()
                var advanced = Duration.zero
                while try job().string("status") == "running" && advanced < .seconds(120) {
                    clock.advance(by: .seconds(1))
                    advanced += .seconds(1)
                    try await Task.sleep(for: .milliseconds(20))
                }
                #expect(advanced >= .seconds(30), "stopped after \(advanced) of a 30 s grace")
                try await eventually(within: .seconds(20)) { try job().string("status") == "failed" }
                #expect(try job().string("error") == "interrupted: backupd shut down while the job ran")
            }
        }
    }

    /// A pg_dump that makes no progress for the stall limit, on the runner's
    /// clock, is stopped and the backup fails saying so; not a moment before.
    @Test func aToolThatMakesNoProgressForTheStallLimitIsStoppedNamingIt() async throws {
        let clock = ManualClock()
        let gate = try GatedTool("pg_dump")
        try await withTestApp { app in
            try await withInProcessServer(configure: {
                $0.clock = clock; $0.jobs.tools.pgDump = gate.path; $0.jobs.tools.stallTimeout = .seconds(60)
            }) { server in
                try await server.register(app)
                let created = try await server.withClient { client in
                    try await client.unary(Backups.createBackup, .with { $0.namespace = TestServer.namespace; $0.environment = "shop-production" })
                }
                try await eventually { gate.hasStarted }
                func job() throws -> PostgresRow {
                    try TestPostgres.query(server.catalogDatabase, "SELECT status, error FROM jobs WHERE id = $1", created.job.id)[0]
                }
                var advanced = Duration.zero
                while try job().string("status") == "running" && advanced < .seconds(300) {
                    clock.advance(by: .milliseconds(500))
                    advanced += .milliseconds(500)
                    try await Task.sleep(for: .milliseconds(10))
                }
                #expect(advanced >= .seconds(60), "stopped after \(advanced) of a 60 s stall limit")
                try await eventually(within: .seconds(20)) { try job().string("status") == "failed" }
                let error = try job().string("error")
                #expect(error.contains("made no progress for 60 seconds"), "\(error)")
            }
        }
    }

    /// SIGTERM with a job stuck in pg_dump: the port closes at once, the job
    /// is cancelled after the grace period and recorded, and the process
    /// exits soon after.
    @Test func sigtermStopsAcceptingAtOnceAndExitsAfterTheGracePeriod() async throws {
        try await withTestApp { app in
            let grace = 10
            try await withTestServer(arguments: ["--shutdown-grace-seconds", "\(grace)", "--max-jobs", "1"]) { server in
                try await server.register(app)
                // A second environment whose backup waits for the only job slot.
                let store = try ScratchDirectory("queued-store")
                defer { store.remove() }
                try await server.withClient(token: server.platformToken) { platform in
                    _ = try await platform.unary(Backups.registerEnvironment, .with {
                        $0.namespace = TestServer.namespace; $0.name = "shop-acceptance"; $0.app = "shop"
                        $0.databaseURL = app.connectionString; $0.fileStorePath = store.path
                    })
                }
                let lock = try HeldLock(app)
                defer { lock.release() }
                let created = try await hungBackup(server, app)
                let queued = try await server.withClient { client in
                    try await client.unary(Backups.createBackup, .with { $0.namespace = TestServer.namespace; $0.environment = "shop-acceptance" })
                }
                // Clients that never finish a handshake: one silent, one that sent half a ClientHello.
                let (host, port) = (String(server.address.split(separator: ":")[0]), Int(server.address.split(separator: ":")[1])!)
                let silent = try openConnection(host: host, port: port)
                let halfHello = try openConnection(host: host, port: port)
                _ = [UInt8]([0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).withUnsafeBytes { write(halfHello, $0.baseAddress, $0.count) }
                defer { close(silent); close(halfHello) }
                // Accepted, and waiting in their handshakes.
                let clients = Set([localPort(silent), localPort(halfHello)])
                try await eventually { clients.isSubset(of: try acceptedPeerPorts(server.processIdentifier, port: port)) }

                let started = ContinuousClock.now
                kill(server.processIdentifier, SIGTERM)
                // The port closes while the stuck job still has its grace period: before the process ends.
                try await eventually(within: .seconds(10)) { !canConnect(host: host, port: port) }
                #expect(server.isRunning, "the port closed only when backupd exited")
                let status = await server.stop(signal: 0, timeout: .seconds(30))
                #expect(status == 0, "backupd did not exit cleanly")
                #expect(ContinuousClock.now - started >= .seconds(grace), "backupd ended before the grace period")
                let job = try await TestPostgres.query(server.catalogDatabase, """
                    SELECT j.status, j.error, s.status AS backup_status FROM jobs j JOIN snapshots s ON s.id = j.snapshot_id WHERE j.id = $1
                    """, created.job.id)[0]
                #expect(job.string("status") == "failed" && job.string("backup_status") == "failed")
                #expect(job.string("error") == "interrupted: backupd shut down while the job ran", "\(job.string("error"))")
                // Nothing was claimed after SIGTERM: the waiting backup is still queued for the next start.
                let waiting = try await TestPostgres.query(server.catalogDatabase, "SELECT status FROM jobs WHERE id = $1", queued.job.id)[0]
                #expect(waiting.string("status") == "queued")
                try await eventually(within: .seconds(5)) { dumpProcesses(app).isEmpty }
            }
        }
    }

    @Test func killingBackupdOutrightTakesItsDumpWithIt() async throws {
        try await withTestApp { app in
            try await withTestServer { server in
                try await server.register(app)
                let lock = try HeldLock(app)
                defer { lock.release() }
                _ = try await hungBackup(server, app)
                #expect(!dumpProcesses(app).isEmpty, "\(processes(naming: "pg_dump"))")
                await server.stop(signal: SIGKILL)
                try await eventually(within: .seconds(5)) { dumpProcesses(app).isEmpty }
            }
        }
    }
}

/// Whether a TCP connection to `host:port` is accepted.
func canConnect(host: String, port: Int) -> Bool {
    guard let fd = try? openConnection(host: host, port: port) else { return false }
    close(fd)
    return true
}

/// A TCP connection to `host:port` (from the loopback address `source`, if
/// given), its descriptor for the caller to close.
func openConnection(host: String, port: Int, from source: String? = nil) throws -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    /// Runs `call` (bind or connect) on an IPv4 address.
    func on(_ host: String, port: Int, _ call: (UnsafePointer<sockaddr>, socklen_t) -> Int32) -> Bool {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        inet_pton(AF_INET, host, &address.sin_addr)
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { call($0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }
    if let source, !on(source, port: 0, { bind(fd, $0, $1) }) {
        close(fd)
        throw TestSupportError("cannot bind to \(source)")
    }
    guard on(host, port: port, { connect(fd, $0, $1) }) else {
        close(fd)
        throw TestSupportError("cannot connect to \(host):\(port)")
    }
    return fd
}

/// A loopback port that takes connections into its backlog and never answers.
final class SilentListener: Sendable {
    let port: Int
    private let descriptor: Int32

    init() throws {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        port = try bindLoopback(descriptor, listening: 16)
        self.descriptor = descriptor
    }

    func close() { Glibc.close(descriptor) }
}

@Suite(.serialized) struct FullDiskTests {
    /// A blob store on a small file system. At 3 MiB the dump fits and the
    /// files do not; at 64 KiB not even the dump's chunks do (pg_dump itself
    /// writes into a FIFO, not the disk). The backup fails naming the full
    /// disk, and the collection that follows leaves no blob behind, recorded
    /// or not.
    @Test(arguments: [("3m", "files"), ("64k", "dump")])
    func aBackupFailingOnAFullDiskLeavesNoBlobAfterTheCollection(_ size: String, _ failing: String) async throws {
        try await withTestApp { app in try await withSmallDisk(size: size) { disk in
            let server = try await TestServer.start(storage: try await TestStorage.make(.localFolder, directory: disk + "/blobs"))
            do {
                try await server.register(app)
                // No documents: only the dump's chunks are written, and they find the disk full.
                if failing == "dump" { try await TestPostgres.query(app.database, "UPDATE \"system$filedocument\" SET hascontents = false") }
                let job = try await server.withClient { client in
                    let created = try await client.unary(Backups.createBackup, .with { $0.namespace = TestServer.namespace; $0.environment = "shop-production" })
                    return try await waitForJob(created.job.id, on: client)
                }
                #expect(job.status == .failed)
                #expect(job.error.contains("No space left on device"), "\(job.error)")
                // The tenant hears the reason; the server's paths stay in its log.
                #expect(!job.error.contains(disk), "\(job.error)")
                #expect(server.log.contains(disk))
                let blobs = disk + "/blobs/sha256"
                func storedFiles() -> [String] {
                    (FileManager.default.enumerator(atPath: blobs)?.allObjects as? [String] ?? []).filter { $0.split(separator: "/").count == 3 }
                }
                // The collection removes the content first and its rows after.
                try await eventually(within: .seconds(15)) {
                    let rows = try await TestPostgres.query(server.catalogDatabase, "SELECT count(*) AS n FROM blobs")[0].int64("n")
                    return storedFiles().isEmpty && rows == 0
                }
                #expect(try FileManager.default.contentsOfDirectory(atPath: disk + "/blobs/tmp").isEmpty)
                await server.remove()
            } catch {
                print(server.log)
                await server.remove()
                throw error
            }
        } }
    }
}

@Suite(.serialized) struct DeadlineTests {
    /// Calls whose deadline is about as long as their work: each either
    /// answers DEADLINE_EXCEEDED and made no backup, or answers with the
    /// backup it made. Never both, never neither.
    @Test func aMutatingCallPastItsDeadlineChangesNothingAndOneThatCommittedAnswers() async throws {
        try await withTestApp { app in
            try await withInProcessServer { server in
                let names = (1...10).map { "shop-\($0)" }
                let stores = try ScratchDirectory("deadline-stores")
                defer { stores.remove() }
                try await server.withClient(token: server.platformToken) { platform in
                    for name in names {
                        try FileManager.default.createDirectory(atPath: "\(stores.path)/\(name)", withIntermediateDirectories: true)
                        _ = try await platform.unary(Backups.registerEnvironment, .with {
                            $0.namespace = TestServer.namespace; $0.name = name; $0.app = "shop"
                            $0.databaseURL = app.connectionString; $0.fileStorePath = "\(stores.path)/\(name)"
                        })
                    }
                }
                let (answered, exceeded) = try await server.withClient { client in
                    var answered = 0, exceeded = 0
                    for (index, name) in names.enumerated() {
                        do {
                            _ = try await client.unary(Backups.createBackup, .with { $0.namespace = TestServer.namespace; $0.environment = name },
                                                       timeout: .milliseconds(1 + index % 3))
                            answered += 1
                        } catch let error as RPCError where error.code == .deadlineExceeded {
                            #expect(error.message.contains("nothing was changed"))
                            exceeded += 1
                        }
                    }
                    return (answered, exceeded)
                }
                #expect(answered + exceeded == names.count)
                let made = try await TestPostgres.query(server.catalogDatabase, "SELECT count(*) AS n FROM snapshots")[0].int64("n")
                #expect(made == Int64(answered), "\(answered) answered, \(exceeded) past their deadline, \(made) backups made")
                let activity = try await TestPostgres.query(server.catalogDatabase, "SELECT count(*) AS n FROM activity WHERE action = 'backup'")[0].int64("n")
                #expect(activity >= Int64(answered))
                print("deadlines: \(answered) answered with a backup, \(exceeded) exceeded with none made")
            }
        }
    }
}

/// Cancels of running jobs: each ends its job's work (dump, restore, reads)
/// and leaves nothing, or lets a swap that began finish alone.
@Suite(.serialized) struct JobCancelTests {
    @Test func cancellingARunningBackupKillsItsDumpAndEndsItCancelled() async throws {
        try await withTestApp { app in
            try await withInProcessServer(live: true) { server in
                try await server.register(app)
                let lock = try HeldLock(app)
                defer { lock.release() }
                let created = try await hungBackup(server, app)
                let cancelling = try await server.backupctl(["job", "cancel", created.job.id, "--json"])
                #expect(cancelling.status == 0, "\(cancelling.standardError)")
                let job = try await server.withClient { try await waitForJob(created.job.id, on: $0, timeout: .seconds(20)) }
                #expect(job.status == .cancelled)
                #expect(job.error.contains("cancelled on request"))
                // (The server's session may wait on the lock until it is released: PostgreSQL notices a gone client late.)
                try await eventually(within: .seconds(5)) { dumpProcesses(app).isEmpty }
                let backup = try await server.withClient { try await $0.unary(Backups.getBackup, .with { $0.id = created.backup.id }) }
                #expect(backup.status == .failed)
                let scratch = try FileManager.default.contentsOfDirectory(atPath: server.blobDirectory + "/tmp")
                #expect(!scratch.contains { $0.contains(created.job.id) }, "\(scratch)")
                let activity = try await server.backupctl(["activity", "--env", "\(TestServer.namespace)/shop-production", "--json"])
                #expect(activity.standardOutput.contains("CANCELLED"))
                // An ended job cannot be cancelled again; a viewer cannot cancel at all.
                let again = try await server.backupctl(["job", "cancel", created.job.id])
                #expect(again.status != 0 && again.standardError.contains("has already ended (cancelled)"), "\(again.standardError)")
                // The environment is free again.
                lock.release()
                let next = try await server.withClient { client in
                    let created = try await client.unary(Backups.createBackup, .with { $0.namespace = TestServer.namespace; $0.environment = "shop-production" })
                    return try await waitForJob(created.job.id, on: client)
                }
                #expect(next.status == .finished, "\(next.error)")
            }
        }
    }

    @Test func cancellingARunningRestoreDropsItsStagingAndLeavesTheTargetAlone() async throws {
        try await withTestApp { app in
            // A duration of its own, so that no other process on the machine passes for this one.
            let sleeper = "sleep 60.\(Int.random(in: 100_000...999_999))"
            let holds = try wrappedTool("pg_restore", running: #"case "$*" in *--jobs*) "# + sleeper + ";; esac")
            try await withInProcessServer(configure: { $0.jobs.tools.pgRestore = holds }) { server in
                let backup = try await finishedBackup(server, app)
                try changeEverything(app)
                let before = try EnvironmentState(app)
                try await server.withClient { client in
                    let job = try await client.unary(Backups.restoreBackup, .with {
                        $0.backupID = backup.id; $0.targetNamespace = TestServer.namespace; $0.targetEnvironment = "shop-production"
                    })
                    try await eventually { !processes(naming: sleeper).isEmpty }
                    let cancelled = try await client.unary(Backups.cancelJob, .with { $0.id = job.id })
                    #expect(cancelled.status == .running && cancelled.phase == "cancelling")
                    let ended = try await waitForJob(job.id, on: client, timeout: .seconds(20))
                    #expect(ended.status == .cancelled, "\(ended.error)")
                }
                #expect(try EnvironmentState(app) == before)
                try noStagingLeft(app)
                #expect(processes(naming: sleeper).isEmpty)
            }
        }
    }

    /// Documents of 20 GB each (sparse: they cost the tenant nothing) keep a
    /// backup reading for minutes; a cancel stops it within seconds all the
    /// same, and until it has stopped it keeps its slot and its lease.
    @Test func cancellingABackupStopsItsReadsOfHugeDocumentsWithinSeconds() async throws {
        try await withTestApp { app in
            try await withTestServer(arguments: ["--job-lease-seconds", "3"]) { server in
                try await server.register(app)
                for key in try referencedKeys(app).prefix(8) {
                    #expect(truncate(documentPath(app, key), 20 << 30) == 0)
                }
                let created = try await server.withClient { client in
                    try await client.unary(Backups.createBackup, .with { $0.namespace = TestServer.namespace; $0.environment = "shop-production" })
                }
                try await server.withClient { client in
                    while try await !client.unary(Backups.getJob, .with { $0.id = created.job.id }).phase.hasPrefix("dumping") {
                        try await Task.sleep(for: .milliseconds(100))
                    }
                    // Well into the huge documents (a batch of them takes minutes): a GiB read since the dump began.
                    let readBefore = try bytesRead(server.processIdentifier)
                    try await eventually(within: .seconds(60)) { try bytesRead(server.processIdentifier) - readBefore > 1 << 30 }
                    let asked = ContinuousClock.now
                    _ = try await client.unary(Backups.cancelJob, .with { $0.id = created.job.id })
                    let ended = try await waitForJob(created.job.id, on: client, timeout: .seconds(60))
                    #expect(ended.status == .cancelled, "\(ended.error)")
                    #expect(ContinuousClock.now - asked < .seconds(10), "took \(ContinuousClock.now - asked)")
                }
                #expect(!server.log.contains("lease expired"))
                let partial = try FileManager.default.contentsOfDirectory(atPath: server.blobDirectory + "/tmp")
                #expect(partial.isEmpty, "\(partial)")
            }
        }
    }

    /// A cancel that arrives while a restore swaps (its database rename held
    /// up by a lock) cannot stop the swap; the restore's lease is kept all the
    /// while, so no recovery runs beside it, and it ends fully restored.
    @Test func aCancelDuringTheSwapLetsTheSwapFinishAlone() async throws {
        try await withTestApp { app in
            try await withTestServer(arguments: ["--job-lease-seconds", "3"]) { server in
                let backup = try await finishedBackup(server, app)
                let atBackup = try EnvironmentState(app)
                try changeEverything(app)
                let holder = try PostgresConnection(TestPostgres.connectionString("postgres"))
                try holder.query("BEGIN")
                try holder.query("COMMENT ON DATABASE \(app.database) IS 'held'")
                let ended = try await server.withClient { client in
                    let job = try await client.unary(Backups.restoreBackup, .with {
                        $0.backupID = backup.id; $0.targetNamespace = TestServer.namespace; $0.targetEnvironment = "shop-production"
                    })
                    // The swap's transaction waits for the lock the holder keeps on the target.
                    try await eventually(within: .seconds(30)) {
                        try await TestPostgres.query("postgres", """
                            SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'COMMENT ON DATABASE %' AND query LIKE $1
                            """, "%\(app.database)%").count == 1
                    }
                    _ = try await client.unary(Backups.cancelJob, .with { $0.id = job.id })
                    // Two more leases taken, with the rename still waiting.
                    func leaseExpiry() async throws -> String {
                        try await TestPostgres.query(server.catalogDatabase, "SELECT lease_expires_at::text AS at FROM jobs WHERE id = $1",
                                                     job.id)[0].string("at")
                    }
                    var renewals = 0, lastExpiry = try await leaseExpiry()
                    try await eventually(within: .seconds(60)) {
                        let expiry = try await leaseExpiry()
                        if expiry != lastExpiry { renewals += 1; lastExpiry = expiry }
                        return renewals >= 2
                    }
                    // Still running, its cancel asked for and not yet able to act.
                    let waiting = try await client.unary(Backups.getJob, .with { $0.id = job.id })
                    #expect(waiting.status == .running && waiting.phase == "cancelling", "\(waiting.status) \(waiting.phase)")
                    try holder.query("ROLLBACK")
                    return try await waitForJob(job.id, on: client, timeout: .seconds(60))
                }
                #expect(ended.status == .finished, "\(ended.error)")
                let state = try EnvironmentState(app)
                #expect(state.tables == atBackup.tables)
                #expect(Set(state.files.keys.map { String($0.split(separator: "/").last!) }) == Set(try referencedKeys(app)))
                #expect(server.log.components(separatedBy: "job started").count - 1 == 2, "the backup and the restore, each once")
                try noStagingLeft(app)
            }
        }
    }
}
