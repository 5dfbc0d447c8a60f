import BackupClient
import BackupRules
import BackupStorage
import BackupServer
import BackupTestSupport
import BackupWire
import Foundation
import Testing

/// A clock a test sets: the scheduler's "now" for due nights, creation and expiry.
final class TestClock: Sendable {
    private let now: Atomic<Date>
    /// How often the scheduler has read the clock: once as each look begins.
    private let reads = Atomic(0)
    init(_ start: Date) { now = Atomic(start) }
    var read: @Sendable () -> Date { { [now, reads] in reads.update { $0 += 1 }; return now.value } }
    func set(_ date: Date) { now.value = date }

    /// Waits until a look of the scheduler that began after this call has
    /// ended (the look after it began): what the clock says now was acted on.
    func aLookHasPassed() async throws {
        let start = reads.value
        for _ in 0..<1000 where reads.value < start + 2 { try await Task.sleep(for: .milliseconds(10)) }
        #expect(reads.value >= start + 2, "the scheduler did not look again")
    }
}

/// A wall-clock time in `zone`.
func wallClock(_ year: Int, _ month: Int, _ day: Int, _ hour: Int, _ minute: Int, in zone: TimeZone) -> Date {
    var calendar = Calendar(identifier: .gregorian)
    calendar.timeZone = zone
    return calendar.date(from: DateComponents(year: year, month: month, day: day, hour: hour, minute: minute))!
}

/// A server whose scheduler runs on `clock`, looking every 20 ms, with no spread.
func scheduling(_ clock: TestClock, retryDelays: [Duration] = [.seconds(60), .seconds(120)]) -> (inout ServerConfiguration) -> Void {
    { configuration in
        configuration.schedule.enabled = true
        configuration.schedule.clock = clock.read
        configuration.schedule.interval = .milliseconds(20)
        configuration.schedule.spread = .zero
        configuration.schedule.retryDelays = retryDelays
        configuration.jobs.pollInterval = .milliseconds(100)
    }
}

/// Changes shop-production's schedule as read, through the API.
@discardableResult
func changeSchedule(_ server: some BackupTestServer, _ change: @escaping @Sendable (inout Schedule) -> Void) async throws -> Schedule {
    try await server.withClient { client in
        var schedule = try await client.unary(Backups.getSchedule, .with { $0.namespace = "acme"; $0.environment = "shop-production" })
        change(&schedule)
        return try await client.unary(Backups.setSchedule, .with { $0.schedule = schedule })
    }
}

/// The catalog's automatic backups of an environment: night, kind, status.
func nightlyRows(_ server: some BackupTestServer, _ environment: String = "shop-production") throws -> [(night: String, kind: String, status: String)] {
    try TestPostgres.query(server.catalogDatabase, """
        SELECT s.night::text AS night, s.kind, s.status FROM snapshots s JOIN environments e ON e.id = s.environment_id
        WHERE e.name = $1 AND s.night IS NOT NULL ORDER BY s.seq
        """, environment).map { (night: $0.string("night"), kind: $0.string("kind"), status: $0.string("status")) }
}

/// Schedules through the API, expiry, and the scheduler's nights.
@Suite(.serialized) struct ScheduleTests {
    @Test func aScheduleHasTheProductsDefaultsAndRefusesWhatItCannotKeep() async throws {
        try await withTestApp { app in
            try await withInProcessServer { server in
                try await server.register(app)
                try await server.withClient { client in
                    let schedule = try await client.unary(Backups.getSchedule, .with { $0.namespace = "acme"; $0.environment = "shop-production" })
                    #expect(schedule.enabled && schedule.windowStart == "00:00" && schedule.timeZone == "UTC" && !schedule.verifyNightly)
                    #expect(schedule.retention.nightlyDays == 14 && schedule.retention.weeklyMonths == 3)
                    #expect(schedule.retention.monthlyMonths == 12 && schedule.retention.onDemandDays == 14 && schedule.retention.uploadedDays == 14)

                    var wanted = schedule
                    wanted.windowStart = "02:30"; wanted.timeZone = "Europe/Amsterdam"; wanted.retention.weeklyMonths = 6
                    wanted.retention.nightlyDays = 0  // the default
                    let set = try await client.unary(Backups.setSchedule, .with { $0.schedule = wanted })
                    #expect(set.windowStart == "02:30" && set.timeZone == "Europe/Amsterdam" && set.retention.weeklyMonths == 6)
                    #expect(set.retention.nightlyDays == 14 && set.backupsRedated == 0)

                    let refusals: [(String, (inout Schedule) -> Void, String)] = [
                        ("time", { $0.windowStart = "24:00" }, "window start \"24:00\" is not a time of day as HH:MM (00:00 to 23:59)"),
                        ("time", { $0.windowStart = "2:30" }, "window start \"2:30\" is not a time of day as HH:MM (00:00 to 23:59)"),
                        ("zone", { $0.timeZone = "Mars/Olympus" },
                         "time zone \"Mars/Olympus\" is not an IANA time zone name such as Europe/Amsterdam or UTC"),
                        ("zone", { $0.timeZone = "../../etc/passwd" },
                         "time zone \"../../etc/passwd\" is not an IANA time zone name such as Europe/Amsterdam or UTC"),
                        ("days", { $0.retention.nightlyDays = 4000 }, "nightly retention of 4000 days is longer than 3650 days"),
                        ("months", { $0.retention.monthlyMonths = 121 }, "monthly retention of 121 months is longer than 120 months"),
                    ]
                    for (_, change, message) in refusals {
                        var bad = set
                        change(&bad)
                        let refused = await expectStatus(.invalidArgument) { _ = try await client.unary(Backups.setSchedule, .with { $0.schedule = bad }) }
                        #expect(refused?.message == message)
                    }
                    let unchanged = try await client.unary(Backups.getSchedule, .with { $0.namespace = "acme"; $0.environment = "shop-production" })
                    #expect(unchanged == set)
                    // A namespace token's own namespace is the one meant when none is named.
                    #expect(try await client.unary(Backups.getSchedule, .with { $0.environment = "shop-production" }) == set)
                    let missing = await expectStatus(.notFound) {
                        _ = try await client.unary(Backups.setSchedule, .with { $0.schedule.namespace = "acme"; $0.schedule.environment = "nowhere" })
                    }
                    #expect(missing?.message == "environment acme/nowhere does not exist")
                }
            }
        }
    }

    @Test func aNewRetentionReDatesExistingBackupsOnlyWhenAsked() async throws {
        try await withTestApp { app in
            try await withInProcessServer { server in
                let backup = try await finishedBackup(server, app)
                #expect(backup.expiresUnixMS == backup.createdUnixMS + 14 * 86_400_000)
                try await server.withClient { client in
                    var schedule = try await client.unary(Backups.getSchedule, .with { $0.namespace = "acme"; $0.environment = "shop-production" })
                    schedule.retention.onDemandDays = 30
                    let kept = try await client.unary(Backups.setSchedule, .with { $0.schedule = schedule })
                    #expect(kept.backupsRedated == 0)
                    #expect(try await client.unary(Backups.getBackup, .with { $0.id = backup.id }).expiresUnixMS == backup.expiresUnixMS)
                    let applied = try await client.unary(Backups.setSchedule, .with { $0.schedule = schedule; $0.applyToExisting = true })
                    #expect(applied.backupsRedated == 1)
                    #expect(try await client.unary(Backups.getBackup, .with { $0.id = backup.id }).expiresUnixMS
                            == backup.createdUnixMS + 30 * 86_400_000)
                    let again = try await client.unary(Backups.setSchedule, .with { $0.schedule = schedule; $0.applyToExisting = true })
                    #expect(again.backupsRedated == 0)
                    let activity = try await client.unary(Backups.listActivity, .with { $0.namespace = "acme"; $0.environment = "shop-production" })
                    #expect(activity.activity.first?.action == "schedule" && activity.activity.first?.detail.hasSuffix("0 backups re-dated") == true)
                }
            }
        }
    }

    @Test func anExpiredBackupIsDeletedAndItsContentCollected() async throws {
        let clock = TestClock(Date())
        try await withTestApp { app in
            try await withInProcessServer(configure: scheduling(clock)) { server in
                // Disabled: no nightly backup beside the on-demand one.
                let backup = try await finishedBackup(server, app)
                try await changeSchedule(server) { $0.enabled = false }
                let blobs = try LocalBlobStore(root: server.blobDirectory)
                let dump = try storedDump(server, backup.id).blobs[0].hash
                #expect(blobs.contains(dump))
                clock.set(Date(timeIntervalSince1970: Double(backup.expiresUnixMS) / 1000 - 1))
                try await clock.aLookHasPassed()
                await #expect(try TestPostgres.query(server.catalogDatabase, "SELECT 1 FROM snapshots").count == 1, "gone a second early")
                clock.set(Date(timeIntervalSince1970: Double(backup.expiresUnixMS) / 1000))
                try await eventually { try TestPostgres.query(server.catalogDatabase, "SELECT 1 FROM snapshots").isEmpty }
                try await eventually { try !blobs.contains(dump) && blobs.storedHashes(unusedSince: .distantFuture).isEmpty }
                let expired = try await TestPostgres.query(server.catalogDatabase, "SELECT actor, detail FROM activity WHERE action = 'expired'")
                #expect(expired.count == 1 && expired.first?.string("actor") == "scheduler")
                #expect(expired.first?.string("detail").hasPrefix("on-demand backup expired at ") == true)
            }
        }
    }

    @Test func aBackupAJobReadsOutlivesItsExpiryUntilTheJobEnds() async throws {
        let clock = TestClock(Date())
        try await withTestApp { app in
            // No job runs: the verification stays queued, reading the backup for as long as the test needs.
            try await withInProcessServer(configure: { scheduling(clock)(&$0); $0.jobs.maximumConcurrentJobs = 0 }) { server in
                try await server.register(app)
                try await changeSchedule(server) { $0.enabled = false }
                let id = UUID().uuidString.lowercased()
                try await TestPostgres.query(server.catalogDatabase, """
                    INSERT INTO snapshots (id, environment_id, status, kind, expires_at)
                    SELECT $1, id, 'finished', 'on-demand', now() + interval '1 day' FROM environments
                    """, id)
                let job = try await server.withClient { try await $0.unary(Backups.verifyBackup, .with { $0.id = id }) }
                clock.set(Date().addingTimeInterval(2 * 86_400))
                try await clock.aLookHasPassed()
                await #expect(try TestPostgres.query(server.catalogDatabase, "SELECT 1 FROM snapshots WHERE id = $1", id).count == 1)
                // A thousand and one backups in use that expired earlier do not hold back one that is not.
                try await TestPostgres.query(server.catalogDatabase, """
                    WITH made AS (
                        INSERT INTO snapshots (id, environment_id, status, kind, expires_at)
                        SELECT gen_random_uuid(), id, 'failed', 'on-demand', now() - interval '1 year' FROM environments, generate_series(1, 1001)
                        RETURNING id, environment_id)
                    INSERT INTO jobs (id, kind, status, environment_id, snapshot_id, phase) SELECT gen_random_uuid(), 'archive', 'queued',
                        environment_id, id, 'queued' FROM made
                    """)
                let free = UUID().uuidString.lowercased()
                try await TestPostgres.query(server.catalogDatabase, """
                    INSERT INTO snapshots (id, environment_id, status, kind, expires_at)
                    SELECT $1, id, 'finished', 'on-demand', now() + interval '1 hour' FROM environments
                    """, free)
                try await eventually { try TestPostgres.query(server.catalogDatabase, "SELECT 1 FROM snapshots WHERE id = $1", free).isEmpty }
                await #expect(try TestPostgres.query(server.catalogDatabase, "SELECT 1 FROM snapshots").count == 1002)
                _ = try await server.withClient { try await $0.unary(Backups.cancelJob, .with { $0.id = job.id }) }
                try await eventually { try TestPostgres.query(server.catalogDatabase, "SELECT 1 FROM snapshots WHERE id = $1", id).isEmpty }
            }
        }
    }
}

extension Night {
    /// The local date of `instant` in `zone`, "YYYY-MM-DD".
    static func localDate(_ instant: Date, in zone: TimeZone) -> String {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = zone
        let parts = calendar.dateComponents([.year, .month, .day], from: instant)
        return String(format: "%04d-%02d-%02d", parts.year!, parts.month!, parts.day!)
    }
}

/// Failed nights, several processes, and the scheduler's own restarts.
@Suite(.serialized) struct NightlyRunTests {
    @Test func aFailingNightIsTriedThreeTimesWithBackOffThenRecordedFailed() async throws {
        let zone = TimeZone(identifier: "UTC")!
        let night = wallClock(2027, 3, 10, 0, 0, in: zone)
        let clock = TestClock(Date())
        let failing = try wrappedTool("pg_dump", running: "echo 'pg_dump: error: connection refused (simulated)' >&2; exit 1")
        try await withTestApp(empty: true) { app in
            try await withInProcessServer(configure: {
                scheduling(clock, retryDelays: [.seconds(300), .seconds(1200)])(&$0)
                $0.jobs.tools.pgDump = failing
            }) { server in
                try await server.register(app)
                func failures() throws -> Int { try nightlyRows(server).filter { $0.status == "failed" }.count }
                clock.set(night.addingTimeInterval(5))
                try await eventually(within: .seconds(30)) { try failures() == 1 }
                // The second attempt waits its back-off, counted from the first's start, and no more.
                clock.set(night.addingTimeInterval(5 + 299))
                try await clock.aLookHasPassed()
                #expect(try nightlyRows(server).count == 1)
                clock.set(night.addingTimeInterval(5 + 300))
                try await eventually(within: .seconds(30)) { try failures() == 2 }
                clock.set(night.addingTimeInterval(5 + 300 + 1200))
                try await eventually(within: .seconds(30)) { try failures() == 3 }
                // No fourth attempt that night, however long it waits.
                clock.set(night.addingTimeInterval(20 * 3600))
                try await clock.aLookHasPassed()
                #expect(try nightlyRows(server).map(\.status) == ["failed", "failed", "failed"])
                let failed = try await TestPostgres.query(server.catalogDatabase, """
                    SELECT detail FROM activity WHERE action = 'backup' AND outcome = 'FAILED' ORDER BY id
                    """).map { $0.string("detail") }
                #expect(failed.count == 3)
                #expect(failed.allSatisfy { $0.contains("pg_dump: error: connection refused (simulated)") })
                #expect(failed.first?.hasSuffix("(attempt 1 of 3 of the night of 2027-03-10; it will be tried again)") == true)
                #expect(failed.last?.hasSuffix("(attempt 3 of 3 of the night of 2027-03-10; the night has no backup)") == true)
                // The next night starts afresh.
                clock.set(night.addingTimeInterval(86_400 + 5))
                try await eventually(within: .seconds(30)) { try nightlyRows(server).count == 4 }
            }
        }
    }

    @Test func aScheduleWhoseZoneThisSystemDoesNotKnowStillGetsItsNightInUTC() async throws {
        let clock = TestClock(Date())
        try await withTestApp { app in
            try await withInProcessServer(configure: scheduling(clock)) { server in
                try await server.register(app)
                try await changeSchedule(server) { $0.windowStart = "03:00"; $0.timeZone = "Asia/Kolkata" }
                // As if a newer backupd, or another system's zone list, had stored it.
                try await TestPostgres.query(server.catalogDatabase, "UPDATE schedules SET time_zone = 'Mars/Olympus_Mons'")
                clock.set(wallClock(2027, 5, 4, 3, 1, in: TimeZone(identifier: "UTC")!))
                try await eventually(within: .seconds(60)) { try nightlyRows(server).map(\.night) == ["2027-05-04"] }
            }
        }
    }

    @Test func aNightlyBackupIsVerifiedWhenItsScheduleSaysSo() async throws {
        let clock = TestClock(Date())
        try await withTestApp { app in
            try await withInProcessServer(configure: scheduling(clock)) { server in
                try await server.register(app)
                try await changeSchedule(server) { $0.verifyNightly = true }
                clock.set(wallClock(2027, 5, 4, 0, 1, in: TimeZone(identifier: "UTC")!))
                try await eventually(within: .seconds(60)) {
                    try TestPostgres.query(server.catalogDatabase, "SELECT 1 FROM snapshots WHERE verify_problem_count = 0 AND verified_at IS NOT NULL").count == 1
                }
                let jobs = try await TestPostgres.query(server.catalogDatabase, "SELECT kind, status, actor FROM jobs ORDER BY created_at")
                    .map { "\($0.string("kind")) \($0.string("status")) \($0.string("actor"))" }
                #expect(jobs == ["backup finished scheduler", "verify finished scheduler"])
            }
        }
    }

    /// Two backupd processes on one catalog, their scheduler clocks a few
    /// seconds past a window: one backup for the night, whichever made it,
    /// and none more after a restart.
    @Test func twoProcessesOnOneCatalogMakeOneBackupANight() async throws {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        let midnight = calendar.nextDate(after: Date(), matching: DateComponents(hour: 0, minute: 0, second: 0), matchingPolicy: .strict)!
        try await withTestApp(empty: true) { app in
            // The environment is registered before either clock runs ahead: the night to come is its first.
            let first = try await TestServer.start()
            try await first.register(app)
            await first.stop()
            let offset = String(midnight.timeIntervalSinceNow + 3)
            let arguments = ["--scheduler", "--schedule-clock-offset-seconds", offset, "--schedule-interval-seconds", "1",
                             "--schedule-spread-minutes", "0"]
            let one = try await TestServer.start(arguments: arguments, catalogDatabase: first.catalogDatabase,
                                                 storage: first.storage, adminToken: first.adminToken)
            let two = try await TestServer.start(arguments: arguments, catalogDatabase: first.catalogDatabase,
                                                 storage: first.storage, adminToken: first.adminToken)
            let date = Night.localDate(midnight, in: calendar.timeZone)
            try await eventually(within: .seconds(60)) { try nightlyRows(one).map(\.status) == ["finished"] }
            await two.stop()
            let again = try await TestServer.start(arguments: arguments + ["--log-level", "debug"], catalogDatabase: first.catalogDatabase,
                                                   storage: first.storage, adminToken: first.adminToken)
            // The restarted process has looked at the night and found it made.
            try await eventually(within: .seconds(30)) { again.log.contains("the night is settled") }
            let rows = try nightlyRows(one)
            #expect(rows.count == 1 && rows.first?.night == date && rows.first?.status == "finished")
            let started = try await TestPostgres.query(one.catalogDatabase, "SELECT count(*) AS n FROM activity WHERE action = 'backup' AND outcome = 'STARTED'")
            #expect(started.first?.int64("n") == 1)
            await again.remove()
            await one.remove()
            await two.remove()
            await first.remove()
        }
    }
}

/// VerifyBackup: every blob read again and the dump listed, problems named.
@Suite(.serialized) struct VerifyTests {
    @Test func theCLIShowsAndSetsASchedule() async throws {
        try await withTestApp(empty: true) { app in
            try await withInProcessServer(live: true) { server in
                let backup = try await finishedBackup(server, app)
                let shown = try await server.backupctl(["schedule", "show", "--env", "acme/shop-production"])
                #expect(shown.status == 0 && shown.standardOutput.contains("00:00 UTC") && shown.standardOutput.contains("14 days"))
                let set = try await server.backupctl(["schedule", "set", "--env", "acme/shop-production", "--time", "02:00", "--tz", "Europe/Amsterdam",
                                                "--disable", "--keep-on-demand", "30d", "--keep-weekly", "6m", "--verify", "--apply-to-existing"])
                #expect(set.status == 0, "\(set.standardError)")
                #expect(set.standardOutput.contains("02:00 Europe/Amsterdam") && set.standardOutput.contains("disabled"))
                #expect(set.standardOutput.contains("1 existing backups re-dated"))
                let json = try JSONSerialization.jsonObject(with: Data(try await server.backupctl(["schedule", "show", "--env", "acme/shop-production",
                                                                                             "--json"]).standardOutput.utf8)) as? [String: Any]
                #expect((json?["retention"] as? [String: Any])?["weekly_months"] as? Int == 6 && json?["verify_nightly"] as? Bool == true)
                // What was not given stayed as it was.
                #expect((json?["retention"] as? [String: Any])?["nightly_days"] as? Int == 14)
                let wrongUnit = try await server.backupctl(["schedule", "set", "--env", "acme/shop-production", "--keep-nightly", "3m"])
                #expect(wrongUnit.status != 0 && wrongUnit.standardError.contains("--keep-nightly is counted in days (14d), not months"))
                let badZone = try await server.backupctl(["schedule", "set", "--env", "acme/shop-production", "--tz", "Europe/Atlantis"])
                #expect(badZone.status != 0 && badZone.standardError.contains("time zone \"Europe/Atlantis\" is not an IANA time zone name"))
                let list = try await server.backupctl(["list", "--env", "acme/shop-production"])
                let expires = Date(timeIntervalSince1970: Double(backup.createdUnixMS) / 1000 + 30 * 86_400)
                let formatter = ISO8601DateFormatter()
                #expect(list.standardOutput.contains("EXPIRES") && list.standardOutput.contains("on-demand"))
                #expect(list.standardOutput.contains(String(formatter.string(from: expires).prefix(16))), "\(list.standardOutput)")
            }
        }
    }

    @Test func aNamespaceMayQueueSixteenVerificationsAndOnePerBackup() async throws {
        try await withTestApp { app in
            // No job runs: the verifications stay queued.
            try await withInProcessServer(configure: { $0.jobs.maximumConcurrentJobs = 0 }) { server in
                try await server.register(app)
                let ids = (0..<17).map { _ in UUID().uuidString.lowercased() }
                for id in ids {
                    try await TestPostgres.query(server.catalogDatabase, """
                        INSERT INTO snapshots (id, environment_id, status, kind) SELECT $1, id, 'finished', 'on-demand' FROM environments
                        """, id)
                }
                try await server.withClient { client in
                    var jobs: [String] = []
                    for id in ids.prefix(16) { jobs.append(try await client.unary(Backups.verifyBackup, .with { $0.id = id }).id) }
                    #expect(Set(jobs).count == 16)
                    #expect(try await client.unary(Backups.verifyBackup, .with { $0.id = ids[0] }).id == jobs[0])
                    let refused = await expectStatus(.resourceExhausted) { _ = try await client.unary(Backups.verifyBackup, .with { $0.id = ids[16] }) }
                    #expect(refused?.message == "namespace acme has 16 verifications queued or running, the most it may; try again when one has ended")
                    _ = try await client.unary(Backups.cancelJob, .with { $0.id = jobs[1] })
                    #expect(try await client.unary(Backups.verifyBackup, .with { $0.id = ids[16] }).status == .queued)
                }
            }
        }
    }

    @Test func verifyNamesAFlippedByteARemovedBlobAndATruncatedDumpAndPassesAnIntactBackup() async throws {
        try await withTestApp { app in
            try await withInProcessServer(live: true) { server in
                let backup = try await finishedBackup(server, app)
                let intact = try await server.backupctl(["verify", backup.id, "--wait"])
                #expect(intact.status == 0, "\(intact.standardError)")
                #expect(intact.standardOutput.contains("backup \(backup.id): intact at "))
                let shown = try await server.backupctl(["show", backup.id])
                #expect(shown.standardOutput.contains("verified"))

                // Files whose content no other file shares, so each problem has one name.
                let files = try await TestPostgres.query(server.catalogDatabase, """
                    SELECT storage_key, sha256 FROM snapshot_files WHERE snapshot_id = $1
                      AND sha256 IN (SELECT sha256 FROM snapshot_files WHERE snapshot_id = $1 GROUP BY sha256 HAVING count(*) = 1)
                    ORDER BY storage_key LIMIT 2
                    """, backup.id).map { ($0.string("storage_key"), $0.string("sha256")) }
                try #require(files.count == 2)
                try await server.damage(ContentHash(hex: files[0].1)!) { $0[$0.count / 2] ^= 0x01 }
                try await server.removeBlob(ContentHash(hex: files[1].1)!)
                let dumpChunk = try storedDump(server, backup.id).blobs[0]
                try await server.damage(dumpChunk.hash) { $0.removeLast($0.count - Int(dumpChunk.size / 2)) }

                let damaged = try await server.backupctl(["verify", backup.id, "--wait", "--json"])
                #expect(damaged.status == 1)
                let verified = try await server.withClient { try await $0.unary(Backups.getBackup, .with { $0.id = backup.id }) }
                let verification = try #require(verified.verification)
                #expect(!verification.intact && verification.problemCount == 3)
                let problems = Dictionary(uniqueKeysWithValues: verification.problems.map { ($0.name, $0) })
                #expect(problems[files[0].0]?.sha256 == files[0].1)
                #expect(problems[files[0].0]?.problem.hasPrefix("corrupt: its content hashes to ") == true)
                #expect(problems[files[1].0]?.sha256 == files[1].1 && problems[files[1].0]?.problem == "missing from the blob store")
                #expect(problems["db/db.backup (chunk 1 of 1)"]?.sha256 == dumpChunk.hash.hex)
                #expect(problems["db/db.backup (chunk 1 of 1)"]?.problem.hasPrefix("corrupt: ") == true)
                let job = try await server.withClient { try await $0.unary(Backups.getJob, .with { $0.id = verification.jobID }) }
                #expect(job.status == .failed && job.kind == .verify)
                #expect(job.error.hasPrefix("3 of ") && job.error.contains(files[1].0))
                let json = try JSONSerialization.jsonObject(with: Data(damaged.standardOutput.utf8)) as? [String: Any]
                #expect((json?["verification"] as? [String: Any])?["problem_count"] as? Int == 3)
                let shownAgain = try await server.backupctl(["show", backup.id])
                #expect(shownAgain.standardOutput.contains("3 problems at "))
                // Nothing was repaired or removed: the backup stays, its content as damaged as it was.
                await #expect(try TestPostgres.query(server.catalogDatabase, "SELECT 1 FROM snapshots WHERE id = $1", backup.id).count == 1)
            }
        }
    }
}

/// A year and more of nights, apart from the other schedule tests: it is the
/// longest test, and runs beside them.
@Suite(.serialized) struct RetentionYearTests {
    /// 400 nights of one environment, created and expired by the scheduler as
    /// in production: after every night, what is kept is exactly what the
    /// policy promises, and each backup went exactly when its expiry came.
    /// The service runs on the nights that decide something (the first three
    /// weeks, every Sunday, the night before and the night of each weekly
    /// and monthly backup's expiry, the last two weeks) and is down on the
    /// others, as a service may be: a night it missed is not made up a day
    /// later, and what it made is kept no more and no less for the gaps.
    @Test func fourHundredNightsKeepExactlyWhatThePolicyPromises() async throws {
        let zone = TimeZone(identifier: "Europe/Amsterdam")!
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = zone
        // The first run is on Tuesday 5 January 2027, after that month's first Sunday (the 3rd): January has no monthly backup.
        let firstNight = wallClock(2027, 1, 5, 1, 30, in: zone)
        // Until the schedule is set the clock is the real one: the environment is new, no night is due.
        let clock = TestClock(Date())
        // What the backups hold is not the point: an app without rows or files makes 400 of them cheap.
        try await withTestApp(empty: true) { app in
            // The scheduler looks once a night, when the test has moved the calendar on; its job runs when the look queues it.
            try await withInProcessServer(configure: {
                scheduling(clock)(&$0)
                $0.schedule.interval = .seconds(3600)
                $0.jobs.pollInterval = .seconds(3600)
            }) { server in
                try await server.register(app)
                try await changeSchedule(server) { $0.windowStart = "01:30"; $0.timeZone = "Europe/Amsterdam" }
                func nightOf(_ day: Int) -> Date { calendar.date(byAdding: .day, value: day, to: firstNight)! }
                let sundays = (0..<400).filter { calendar.component(.weekday, from: nightOf($0)) == 1 }
                let expiries = sundays.map { day in
                    let months = calendar.component(.day, from: nightOf(day)) <= 7 ? 12 : 3
                    let expiry = calendar.date(byAdding: .month, value: months, to: nightOf(day))!
                    return calendar.dateComponents([.day], from: firstNight, to: expiry).day!
                }
                let running = Set(0..<21).union(386..<400).union(sundays).union(expiries).union(expiries.map { $0 - 1 })
                var made: [(night: Date, kind: String)] = []
                for day in (0..<400).filter(running.contains) {
                    let night = nightOf(day)
                    let now = night.addingTimeInterval(60)
                    clock.set(now)
                    server.lookAtSchedulesNow()
                    let date = Night.localDate(night, in: zone)
                    try await eventually(within: .seconds(60)) {
                        try TestPostgres.query(server.catalogDatabase, "SELECT 1 FROM snapshots WHERE night = $1::date AND status = 'finished'",
                                               date).count == 1
                    }
                    let weekday = calendar.component(.weekday, from: night), dayOfMonth = calendar.component(.day, from: night)
                    made.append((night, weekday != 1 ? "nightly" : dayOfMonth <= 7 ? "monthly" : "weekly"))
                    // Expiry ran in the tick that made tonight's backup; a later tick may not have run yet, nor need to.
                    let kept = await Set(try TestPostgres.query(server.catalogDatabase, "SELECT night::text AS night, kind FROM snapshots")
                        .map { "\($0.string("night")) \($0.string("kind"))" })
                    let promised = Set(made.filter { backup in
                        let period: DateComponents = switch backup.kind {
                        case "nightly": DateComponents(day: 14)
                        case "weekly": DateComponents(month: 3)
                        default: DateComponents(month: 12)
                        }
                        return calendar.date(byAdding: period, to: backup.night.addingTimeInterval(60))! > now
                    }.map { "\(Night.localDate($0.night, in: zone)) \($0.kind)" })
                    #expect(kept == promised, "night \(date): kept \(kept.subtracting(promised)) beyond, lost \(promised.subtracting(kept))")
                    if kept != promised { break }
                }
                // The policy in plain words, on the last night (Tuesday 8 February 2028): the last 14 nights, the Sundays
                // of the last 3 months, the first Sundays of the last 12 months (7 February 2027's went the day before).
                let kept = try await TestPostgres.query(server.catalogDatabase, "SELECT night::text AS night, kind FROM snapshots ORDER BY night")
                    .map { ($0.string("night"), $0.string("kind")) }
                #expect(kept.filter { $0.1 == "monthly" }.map(\.0)
                        == ["2027-03-07", "2027-04-04", "2027-05-02", "2027-06-06", "2027-07-04", "2027-08-01",
                            "2027-09-05", "2027-10-03", "2027-11-07", "2027-12-05", "2028-01-02", "2028-02-06"])
                #expect(kept.filter { $0.1 == "weekly" }.map(\.0)
                        == ["2027-11-14", "2027-11-21", "2027-11-28", "2027-12-12", "2027-12-19", "2027-12-26", "2028-01-09",
                            "2028-01-16", "2028-01-23", "2028-01-30"])
                // The last 14 nights, 26 January to 8 February, but for Sunday 30 January (weekly) and 6 February (monthly).
                #expect(kept.filter { $0.1 == "nightly" }.map(\.0) == ["2028-01-26", "2028-01-27", "2028-01-28", "2028-01-29", "2028-01-31",
                                                                       "2028-02-01", "2028-02-02", "2028-02-03", "2028-02-04", "2028-02-05",
                                                                       "2028-02-07", "2028-02-08"])
            }
        }
    }
}
