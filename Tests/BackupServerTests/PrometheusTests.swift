import BackupClient
import BackupRules
import BackupTestSupport
import BackupWire
import Foundation
import Testing

/// Debian's Prometheus on a loopback port, scraping one admin listener every
/// second, with its own data folder; removed with `stop`.
struct PrometheusServer {
    let address: String
    private let process: BackgroundCommand
    private let scratch: ScratchDirectory

    static func start(scraping target: String) async throws -> PrometheusServer {
        let scratch = try ScratchDirectory("prometheus")
        let port = try freeLoopbackPort()
        try """
            global:
              scrape_interval: 1s
              scrape_timeout: 1s
            scrape_configs:
              - job_name: backupd
                static_configs:
                  - targets: ["\(target)"]
            """.write(toFile: scratch.path + "/prometheus.yml", atomically: true, encoding: .utf8)
        let process = try BackgroundCommand("/usr/bin/prometheus", [
            "--config.file=\(scratch.path)/prometheus.yml", "--storage.tsdb.path=\(scratch.path)/data",
            "--web.listen-address=127.0.0.1:\(port)", "--log.level=error",
        ])
        let server = PrometheusServer(address: "127.0.0.1:\(port)", process: process, scratch: scratch)
        for _ in 0..<300 {
            if (try? await fetch("http://\(server.address)/-/ready").status) == 200 { return server }
            guard process.isRunning else { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        server.stop()
        throw TestSupportError("prometheus did not start (make test-deps installs Debian's prometheus)")
    }

    func stop() {
        process.stop()
        scratch.remove()
    }

    /// The samples of an instant PromQL query through the HTTP API: labels and value of each.
    func query(_ promql: String) async throws -> [(labels: [String: String], value: Double)] {
        let answer = try await curl(["--get", "--data-urlencode", "query=\(promql)", "http://\(address)/api/v1/query"])
        struct Response: Decodable {
            struct Data: Decodable {
                struct Sample: Decodable {
                    let metric: [String: String]
                    let value: [Value]
                }
                let result: [Sample]
            }
            enum Value: Decodable {
                case time(Double), text(String)
                init(from decoder: any Decoder) throws {
                    let container = try decoder.singleValueContainer()
                    if let time = try? container.decode(Double.self) { self = .time(time) } else { self = .text(try container.decode(String.self)) }
                }
            }
            let status: String
            let data: Data
        }
        let response = try JSONDecoder().decode(Response.self, from: Data(answer.standardOutput.utf8))
        return response.data.result.map { sample in
            guard case .text(let text)? = sample.value.last else { return (sample.metric, .nan) }
            return (sample.metric, Double(text) ?? .nan)
        }
    }

    /// The one value `promql` answers once Prometheus has it (scrapes come every second), within `timeout`.
    func value(of promql: String, timeout: Duration = .seconds(60)) async throws -> Double {
        let deadline = ContinuousClock.now + timeout
        while true {
            let samples = try await query(promql)
            if samples.count == 1 { return samples[0].value }
            guard ContinuousClock.now < deadline else { throw TestSupportError("\(promql) answered \(samples)") }
            try await Task.sleep(for: .milliseconds(250))
        }
    }
}

/// What an operator's monitoring sees: a real Prometheus scraping a server
/// that worked, and the alert rules backupd ships, run by promtool.
@Suite(.serialized) struct PrometheusTests {
    @Test func theShippedAlertRulesAreValidAndTheirTestsPass() async throws {
        let folder = "\(projectRoot)/packaging/prometheus"
        let check = try await runCommand("/usr/bin/promtool", ["check", "rules", "\(folder)/backupd-alerts.yml"])
        #expect(check.status == 0, "\(check.standardOutput)\(check.standardError)")
        // Among them: the missed-nightly alert fires for an environment whose night failed, not for one whose ran.
        let tests = try await runCommand("/usr/bin/promtool", ["test", "rules", "\(folder)/backupd-alerts.test.yml"])
        #expect(tests.status == 0 && tests.standardOutput.contains("SUCCESS"), "\(tests.standardOutput)\(tests.standardError)")
    }

    @Test func prometheusScrapesTheJobsCallsAndDownloadsOfAServer() async throws {
        // pg_dump fails while the marker file exists: one backup that fails, for real, in its job.
        let marker = FileManager.default.temporaryDirectory.appendingPathComponent("fail-dump-\(UUID().uuidString)").path
        let pgDump = try wrappedTool("pg_dump", running: "[ -e \(marker) ] && { echo 'pg_dump: error: refused by the test' >&2; exit 1; }")
        try await withTestApp { app in
            try await withInProcessServer(live: true, admin: true, configure: {
                $0.jobs.tools.pgDump = pgDump
                $0.admin?.refreshInterval = .milliseconds(200)
            }) { server in
                let backup = try await finishedBackup(server, app)
                FileManager.default.createFile(atPath: marker, contents: nil)
                defer { try? FileManager.default.removeItem(atPath: marker) }
                let failed = try await server.withClient { client in
                    let created = try await client.unary(Backups.createBackup, .with {
                        $0.namespace = TestServer.namespace; $0.environment = "shop-production"
                    })
                    return try await waitForJob(created.job.id, on: client)
                }
                #expect(failed.status == .failed && failed.error.contains("refused by the test"), "\(failed.error)")
                try FileManager.default.removeItem(atPath: marker)
                let restored = try await server.withClient { try await restore($0, backup) }
                #expect(restored.status == .finished, "\(restored.error)")
                let download = try await server.withClient { try await readyDownload($0, backup) }
                let fetched = try await curl(["-o", "/dev/null", "-w", "%{size_download}", download.url])
                let sent = try #require(Double(fetched.standardOutput))
                #expect(sent > 0 && UInt64(sent) == download.sizeBytes)

                let prometheus = try await PrometheusServer.start(scraping: server.adminAddress)
                defer { prometheus.stop() }
                #expect(try await prometheus.value(of: "up{job=\"backupd\"}") == 1)
                #expect(try await prometheus.value(of: "backupd_jobs_ended_total{kind=\"backup\",outcome=\"finished\"}") == 1)
                #expect(try await prometheus.value(of: "backupd_jobs_ended_total{kind=\"backup\",outcome=\"failed\"}") == 1)
                #expect(try await prometheus.value(of: "backupd_jobs_ended_total{kind=\"restore\",outcome=\"finished\"}") == 1)
                #expect(try await prometheus.value(of: "backupd_jobs_ended_total{kind=\"archive\",outcome=\"finished\"}") == 1)
                #expect(try await prometheus.value(of: "backupd_job_duration_seconds_count{kind=\"backup\",outcome=\"finished\"}") == 1)
                #expect(try await prometheus.value(of: "sum(backupd_rpc_calls_total{method=\"backup.v1.Backups/CreateBackup\",code=\"OK\"})") == 2)
                #expect(try await prometheus.value(of: "backupd_http_requests_total{code=\"200\"}") == 1)
                #expect(try await prometheus.value(of: "backupd_http_sent_bytes_total{code=\"200\"}") == sent)
                // The last successful backup is the one that finished, to the millisecond, not the one that failed after it.
                let last = try await prometheus.value(of: """
                    backupd_last_successful_backup_timestamp_seconds{namespace="\(TestServer.namespace)",environment="shop-production",kind="on-demand"}
                    """)
                #expect(last == Double(backup.finishedUnixMS) / 1000)
                #expect(try await prometheus.value(of: "backupd_ready{check=\"catalog\"}") == 1)
                #expect(try await prometheus.value(of: "backupd_blob_store_objects") > 0)
            }
        }
    }
}
