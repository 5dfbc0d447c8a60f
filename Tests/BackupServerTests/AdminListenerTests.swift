@testable import BackupCatalog
import BackupClient
import BackupRules
@testable import BackupServer
import BackupTestSupport
import BackupWire
import Foundation
import Testing

/// The series of a `/metrics` answer: each sample line's name with its labels, as written, and its value.
func scrape(_ adminAddress: String) async throws -> [String: Double] {
    let answer = try await fetch("http://\(adminAddress)/metrics")
    #expect(answer.status == 200)
    var series: [String: Double] = [:]
    for line in answer.body.split(separator: "\n") where !line.hasPrefix("#") {
        guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { continue }
        series[String(line[..<space])] = value
    }
    return series
}

/// Asks `/readyz` until it answers `status` (the probes run in the background), at most for `timeout`.
func readiness(_ adminAddress: String, becomes status: Int, timeout: Duration = .seconds(30)) async throws -> String {
    let deadline = ContinuousClock.now + timeout
    while true {
        let answer = try await fetch("http://\(adminAddress)/readyz")
        if answer.status == status { return answer.body }
        guard ContinuousClock.now < deadline else {
            throw TestSupportError("/readyz answered \(answer.status) \(answer.body), not \(status)")
        }
        try await Task.sleep(for: .milliseconds(100))
    }
}

/// The admin listener as an operator's tools meet it: Prometheus's scrape,
/// a load balancer's health and readiness checks, and whatever else arrives.
@Suite(.serialized) struct AdminListenerTests {
    @Test func healthAndReadinessAnswerAndEverythingElseIsRefusedByName() async throws {
        try await withInProcessServer(admin: true) { server in
            let base = "http://\(server.adminAddress)"
            let health = try await fetch(base + "/healthz")
            #expect(health.status == 200 && health.body == "ok\n")
            #expect(try await readiness(server.adminAddress, becomes: 200) == "catalog: ok\nblob_store: ok\nserving: ok\n")

            let post = try await curl(["-D", "-", "-o", "/dev/null", "-X", "POST", base + "/metrics"])
            let (status, headers) = responseHead(post.standardOutput)
            #expect(status == 405 && headers["allow"] == "GET, HEAD")
            let missing = try await fetch(base + "/v1/downloads/x/y?sig=z")
            #expect(missing.status == 404 && missing.body.contains("/metrics, /healthz, /readyz and /reload"))
            let head = responseHead(try await curl(["-I", base + "/metrics"]).standardOutput)
            #expect(head.status == 200 && head.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8")
            // A malformed request is answered 400 and the listener goes on.
            let raw = try await runCommand("/bin/bash", ["-c", "exec 3<>/dev/tcp/\(server.adminAddress.replacingOccurrences(of: ":", with: "/")); "
                + "printf 'GARBAGE \\x01\\r\\n\\r\\n' >&3; timeout 5 cat <&3"])
            #expect(raw.standardOutput.hasPrefix("HTTP/1.1 400"))
            #expect(try await fetch(base + "/healthz").status == 200)
        }
    }

    /// Unauthenticated clients, helper finding: turning a connection away
    /// past the limit crashed the process (an async channel dropped
    /// unserved), and kept-alive clients held every slot. Now the oldest
    /// connection makes room: hundreds of idle and half-sent connections
    /// never keep a scrape out.
    @Test func connectionsPastTheLimitMakeRoomAndAScrapeAlwaysGetsIn() async throws {
        try await withInProcessServer(admin: true) { server in
            let (host, port) = (server.adminAddress.split(separator: ":")[0], server.adminAddress.split(separator: ":")[1])
            let flood = try await runCommand("/bin/bash", ["-c", """
                set -e
                for i in $(seq 1 300); do
                  exec {fd}<>/dev/tcp/\(host)/\(port)
                  if (( i % 2 )); then printf 'GET /healthz HTTP/1.1\\r\\nHost: x\\r\\n' >&$fd; fi
                done
                curl -sS -m 5 -o /dev/null -w '%{http_code}' http://\(server.adminAddress)/metrics
                """])
            #expect(flood.standardOutput == "200", "\(flood.standardOutput) \(flood.standardError)")
            #expect(try await fetch("http://\(server.adminAddress)/healthz").status == 200)
        }
    }

    /// Operator, helper finding: a catalog that hangs made every scrape wait
    /// on it (Prometheus saw the target down, and no alert on the catalog
    /// could fire). Scrapes answer at once from the last answer, and once
    /// the catalog has not answered for 10 seconds they say so.
    @Test func aHungCatalogLeavesMetricsAnsweringAndSaysSo() async throws {
        let cluster = try await TestCluster.start()
        defer { cluster.remove() }
        try await withInProcessServer(admin: true, catalogCluster: cluster, configure: { $0.admin?.refreshInterval = .milliseconds(200) }) { server in
            try await eventually(within: .seconds(30)) { try await scrape(server.adminAddress)["backupd_catalog_up"] == 1 }
            try await cluster.freeze()
            do {
                // Scrapes keep answering, from the last sample, while the catalog is silent: several come back before
                // the sampler gives up on it (one that waited on the catalog would come back only once it had).
                var stale = 0
                try await eventually(within: .seconds(40)) {
                    let series = try await scrape(server.adminAddress)
                    if series["backupd_catalog_up"] == 1 { stale += 1 }
                    return series["backupd_catalog_up"] == 0 && series["backupd_blob_store_objects"] == nil
                }
                #expect(stale >= 2, "a scrape waited on the catalog")
                let notReady = try await readiness(server.adminAddress, becomes: 503)
                #expect(notReady.hasPrefix("catalog: no answer for"), "\(notReady)")
            } catch {
                try await cluster.thaw()
                throw error
            }
            try await cluster.thaw()
            try await eventually(within: .seconds(30)) { try await scrape(server.adminAddress)["backupd_catalog_up"] == 1 }
            _ = try await readiness(server.adminAddress, becomes: 200)
        }
    }

    /// Operator's view: a store that takes no write makes the process not
    /// ready, naming the store's own words, and ready again once it takes them.
    @Test func aStoreThatTakesNoWriteMakesTheProcessNotReady() async throws {
        try await withInProcessServer(admin: true, configure: { $0.admin?.refreshInterval = .milliseconds(100) }) { server in
            _ = try await readiness(server.adminAddress, becomes: 200)
            // Where the local store writes new content becomes a file: every write fails, as on a broken disk.
            let incoming = server.blobDirectory + "/tmp"
            let moved = incoming + ".moved"
            try FileManager.default.moveItem(atPath: incoming, toPath: moved)
            try Data().write(to: URL(fileURLWithPath: incoming))
            let notReady = try await readiness(server.adminAddress, becomes: 503)
            #expect(notReady.hasPrefix("catalog: ok\nblob_store: cannot write"))
            #expect(try await scrape(server.adminAddress)["backupd_ready{check=\"blob_store\"}"] == 0)

            try FileManager.default.removeItem(atPath: incoming)
            try FileManager.default.moveItem(atPath: moved, toPath: incoming)
            _ = try await readiness(server.adminAddress, becomes: 200)
            #expect(try await scrape(server.adminAddress)["backupd_ready{check=\"blob_store\"}"] == 1)
        }
    }

    /// Hostile tenant: method names the server does not route are counted
    /// as one "unknown" series, however many a client makes up.
    @Test func callsAreCountedByRouteAndStatusAndMadeUpMethodsAreOneSeries() async throws {
        try await withInProcessServer(live: true, admin: true) { server in
            let madeUp = encode((1...20).flatMap { id in
                [Frame(callID: UInt32(id), .start(.with { $0.method = "evil/\(id)" })), Frame(callID: UInt32(id), .message([])),
                 Frame(callID: UInt32(id), .halfClose)]
            })
            var statuses = 0
            let refused: Bool? = try await rawCall(server, send: madeUp) { frame, _ in
                guard case .status(let status) = frame.kind else { return nil }
                #expect(status.code == .unimplemented)
                statuses += 1
                return statuses == 20 ? true : nil
            }
            #expect(refused == true)
            try await server.withClient { client in
                _ = try await client.unary(Backups.serverInfo, ServerInfoRequest())
                await #expect(throws: RPCError.self) {
                    _ = try await client.unary(Backups.getBackup, .with { $0.id = UUID().uuidString.lowercased() })
                }
            }
            try await eventually(within: .seconds(30)) { try await scrape(server.adminAddress)["backupd_catalog_up"] == 1 }
            let series = try await scrape(server.adminAddress)
            #expect(series["backupd_rpc_calls_total{method=\"backup.v1.Backups/ServerInfo\",code=\"OK\"}"] == 1)
            #expect(series["backupd_rpc_calls_total{method=\"unknown\",code=\"UNIMPLEMENTED\"}"] == 20)
            #expect(series["backupd_rpc_calls_total{method=\"backup.v1.Backups/GetBackup\",code=\"NOT_FOUND\"}"] == 1)
            #expect(series["backupd_rpc_call_duration_seconds_count{method=\"unknown\",code=\"UNIMPLEMENTED\"}"] == 20)
            #expect(!series.keys.contains { $0.contains("evil") })
            #expect(series["backupd_build_info{version=\"\(BuildInfo.version)\",commit=\"\(BuildInfo.commit)\"}"] == 1)
            #expect(series["backupd_catalog_up"] == 1 && series["backupd_jobs_running"] == 0)
            #expect((series["backupd_catalog_lease_wait_seconds_count"] ?? 0) > 0)
        }
    }

    /// What the catalog says becomes one series per environment and kind,
    /// and a series whose subject is gone leaves the export.
    @Test func catalogSeriesFollowTheCatalog() throws {
        var summary = ServiceSummary()
        summary.queued = [.init(kind: "backup", count: 3, oldestAgeSeconds: 42.5), .init(kind: "restore", count: 1, oldestAgeSeconds: 7)]
        summary.running = [("archive", 2)]
        summary.blobCount = 10
        summary.blobBytes = 4096
        let finished = Date(timeIntervalSince1970: 1_796_000_000.25)
        summary.lastBackups = [.init(namespace: "acme", environment: "prod", kind: "nightly", finishedAt: finished)]
        summary.expired = [.init(namespace: "acme", environment: "test", count: 4)]
        var schedule = ScheduleSettings()
        let now = Date(timeIntervalSince1970: 1_796_000_000)
        schedule.clock = { now }
        let window = try NightlyWindow(start: "02:00", timeZone: "UTC")
        let environment = ScheduledEnvironment(id: 1, namespace: "acme", name: "prod", window: window, since: .distantPast)
        let values = CatalogSampler.values(summary, scheduled: [environment], schedule: schedule)
        let byKey = Dictionary(uniqueKeysWithValues: values.map { value in
            (value.name + value.labels.map { "\($0.0)=\($0.1)" }.joined(separator: ","), value.value)
        })
        #expect(byKey["backupd_catalog_up"] == 1)
        #expect(byKey["backupd_jobs_queuedkind=backup"] == 3 && byKey["backupd_jobs_queuedkind=restore"] == 1)
        #expect(byKey["backupd_oldest_queued_job_age_seconds"] == 42.5)
        #expect(byKey["backupd_catalog_jobs_runningkind=archive"] == 2)
        #expect(byKey["backupd_blob_store_objects"] == 10 && byKey["backupd_blob_store_bytes"] == 4096)
        #expect(byKey["backupd_last_successful_backup_timestamp_secondsnamespace=acme,environment=prod,kind=nightly"] == 1_796_000_000.25)
        #expect(byKey["backupd_expired_backups_pendingnamespace=acme,environment=test"] == 4)
        let next = window.nextNight(after: now, offset: schedule.offset(of: environment))!.due.timeIntervalSince1970
        #expect(byKey["backupd_next_nightly_backup_timestamp_secondsnamespace=acme,environment=prod"] == next)
        #expect(next > now.timeIntervalSince1970 && next <= now.timeIntervalSince1970 + 86_400)
        #expect(values.count == 10)

        // A sampled series not set again leaves the export.
        let metrics = ServiceMetrics()
        let series = SampledSeries(metrics: metrics)
        series.replace(with: values)
        series.replace(with: values.filter { $0.name != "backupd_expired_backups_pending" })
        let text = String(decoding: metrics.registry.emitToBuffer(), as: UTF8.self)
        #expect(text.contains("backupd_jobs_queued{kind=\"backup\"} 3") && !text.contains("backupd_expired_backups_pending"))
    }

    /// A probe's record: a problem stays until a probe answers, and a probe
    /// that does not answer counts as failed once the timeout has passed.
    @Test func aProbeUnansweredPastItsTimeoutCountsAsFailed() {
        let start = ContinuousClock.now
        var record = ProbeRecord()
        let timeout = Duration.seconds(10)
        let steps: [(event: (inout ProbeRecord) -> Void, at: Duration, problem: String?)] = [
            ({ _ in }, .zero, "not probed yet"),
            ({ $0.started(at: start) }, .seconds(1), "not probed yet"),
            ({ $0.finished(problem: nil) }, .seconds(2), nil),
            ({ $0.started(at: start + .seconds(3)) }, .seconds(13), nil),
            ({ _ in }, .seconds(14), "no answer for 11 s"),
            ({ $0.finished(problem: "cannot write /x: Input/output error") }, .seconds(15), "cannot write /x: Input/output error"),
            ({ $0.started(at: start + .seconds(16)) }, .seconds(17), "cannot write /x: Input/output error"),
            ({ $0.finished(problem: nil) }, .seconds(18), nil),
        ]
        for (index, step) in steps.enumerated() {
            step.event(&record)
            #expect(record.problem(at: start + step.at, timeout: timeout) == step.problem, "step \(index)")
        }
    }
}
