import ArgumentParser
import BackupClient
import BackupWire
import Foundation

/// Latencies of a running backupd, for scripts/bench.sh: every subcommand
/// but `load` prints one line of JSON on stdout, times in milliseconds.
/// `load` is scripts/load.sh's load test, with a report of its own;
/// `store-files` measures the blob store alone, in seconds.
@main
struct BackupBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backup-bench",
        abstract: "Measure a running backupd's call latencies; print one line of JSON (milliseconds).",
        subcommands: [RPCLatency.self, ListLatency.self, WatchLatency.self, Load.self, StoreFiles.self])
}

/// Where the server is and how to reach it.
struct ServerOptions: ParsableArguments {
    @Option(help: "Server address HOST:PORT.") var addr: String
    @Option(help: "Bearer token (viewer for rpc-latency and list-latency, operator for watch-latency).") var token: String
    @Option(help: "PEM file of the CA that signed the server's certificate.") var ca: String

    func settings() throws -> ClientSettings { try ClientSettings(address: addr, token: token, caFile: ca) }
}

/// Calls made before measuring, so connection set-up, the server's caches
/// and the catalog's plans are warm.
let warmUpCalls = 50

struct RPCLatency: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rpc-latency",
        abstract: "GetBackup round trips on one connection, against a TLS 1.3 ping-pong of the same sizes (NIO on both ends).",
        discussion: """
            The sizes are the bytes of one GetBackup call as its frames cross the connection (length prefixes \
            included, TLS records not), counted between TLS and the frame codec. The ping-pong server runs in this \
            process on 127.0.0.1 with the certificate backupd uses; its client connects as backupd's clients do.
            """)
    @OptionGroup var server: ServerOptions
    @Option(help: "A backup the token may read.") var backupID: String
    @Option(help: "Timed round trips of each kind.") var count = 2000
    @Option(help: "Certificate chain (PEM) for the ping-pong server: backupd's own.") var cert = "certs/dev/server.crt"
    @Option(help: "Key of that certificate.") var key = "certs/dev/server.key"

    func validate() throws {
        guard count > 0 else { throw ValidationError("--count must be positive") }
    }

    func run() async throws {
        let (settings, id, count) = (try server.settings(), backupID, count)
        let (rpc, wire) = try await ByteCountingConnection.withClient(settings) { client, tally in
            let getBackup: @Sendable () async throws -> Void = { _ = try await client.unary(Backups.getBackup, .with { $0.id = id }) }
            let rounds = try await timeRounds(count: count, getBackup)
            // One more call, alone on the connection, gives the bytes each direction takes.
            let before = tally.counts
            try await getBackup()
            return (rounds, tally.counts - before)
        }
        let pingPong = try await PingPong.measure(
            certificateChain: cert, privateKey: key, caFile: server.ca,
            requestBytes: wire.sent, responseBytes: wire.received, count: count)
        let (rpcTimes, pingPongTimes) = (Latencies(rpc), Latencies(pingPong))
        printJSON([
            "rpc_p50": .milliseconds(rpcTimes.percentile(50)), "rpc_p99": .milliseconds(rpcTimes.percentile(99)),
            "pingpong_p50": .milliseconds(pingPongTimes.percentile(50)), "pingpong_p99": .milliseconds(pingPongTimes.percentile(99)),
            "request_bytes": .count(wire.sent), "response_bytes": .count(wire.received),
        ])
    }
}

struct ListLatency: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list-latency", abstract: "ListBackups of an environment's first page, round trips on one connection.")
    @OptionGroup var server: ServerOptions
    @Option(help: "Namespace of the environment.") var namespace: String
    @Option(help: "Environment name.") var environment: String
    @Option(help: "Timed calls.") var count = 1000
    @Option(help: "Backups asked for per page (at most 500).") var pageSize: UInt32 = 50

    func validate() throws {
        guard count > 0 else { throw ValidationError("--count must be positive") }
        guard (1...500).contains(pageSize) else { throw ValidationError("--page-size must be 1 to 500") }
    }

    func run() async throws {
        let request = ListBackupsRequest.with { $0.namespace = namespace; $0.environment = environment; $0.pageSize = pageSize }
        let count = count
        let (rounds, listed) = try await BackupClient.withConnection(try server.settings()) { client in
            let listFirstPage: @Sendable () async throws -> Int = { try await client.unary(Backups.listBackups, request).backups.count }
            return (try await timeRounds(count: count) { _ = try await listFirstPage() }, try await listFirstPage())
        }
        let times = Latencies(rounds)
        printJSON(["p50": .milliseconds(times.percentile(50)), "p99": .milliseconds(times.percentile(99)),
                   "max": .milliseconds(times.slowest), "backups_in_page": .count(listed)])
    }
}

struct WatchLatency: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "watch-latency",
        abstract: "How long after a backup job ends its watcher hears of it: receive time minus the job's finished_unix_ms.",
        discussion: """
            Each round creates a backup, watches its job and, on the reading that shows it ended, takes this \
            machine's wall clock less the job's finished_unix_ms, so the server must run on the same machine. That \
            time is stamped when the transaction that ends the job begins, so a sample includes that transaction and \
            its commit. A round whose job had ended before its watch began measures no notification and is left \
            out, with a note on stderr.
            """)
    @OptionGroup var server: ServerOptions
    @Option(help: "Environment, NAMESPACE/NAME.") var env: EnvironmentRef
    @Option(help: "Backups to make and watch.") var count = 20

    func validate() throws {
        guard count > 0 else { throw ValidationError("--count must be positive") }
    }

    func run() async throws {
        let request = CreateBackupRequest.with {
            $0.namespace = env.namespace; $0.environment = env.name; $0.comment = "backup-bench watch-latency"
        }
        let count = count
        let samples = try await BackupClient.withConnection(try server.settings()) { client in
            var samples: [Double] = []
            for _ in 0..<count {
                let created = try await client.unary(Backups.createBackup, request)
                var sawItUnfinished = false
                var sample: Double?
                try await client.serverStreaming(Backups.watchJob, .with { $0.id = created.job.id }) { job in
                    let receivedUnixMS = Date().timeIntervalSince1970 * 1000
                    guard job.status.isTerminal else { sawItUnfinished = true; return }
                    guard job.status == .finished else { throw BenchError("backup job \(job.id) ended \(job.status): \(job.error)") }
                    // finished_unix_ms is the catalog's now() in the transaction that ends the job, and PostgreSQL
                    // fixes now() when a transaction begins: before that transaction writes the backup's file manifest
                    // and dump chunks, and before its commit, which is when watchers are notified. So the sample spans
                    // the whole finishing transaction (commit and fsync included), the notification, the server's
                    // reading of the job and its way here; finished_unix_ms is rounded to whole milliseconds (±0.5 ms).
                    sample = receivedUnixMS - Double(job.finishedUnixMS)
                }
                guard let sample else { throw BenchError("the watch of job \(created.job.id) ended before the job") }
                if sawItUnfinished {
                    samples.append(sample)
                } else {
                    FileHandle.standardError.write(Data("job \(created.job.id) had ended before its watch began; left out\n".utf8))
                }
            }
            return samples
        }
        guard !samples.isEmpty else { throw BenchError("no round measured a notification") }
        let times = Latencies(samples)
        printJSON(["p50": .milliseconds(times.percentile(50)), "max": .milliseconds(times.slowest), "samples": .millisecondsList(samples)])
    }
}

extension EnvironmentRef: ExpressibleByArgument {
    public init?(argument: String) { self.init(argument) }
}

/// A measurement that could not be made, and why.
struct BenchError: Error, CustomStringConvertible {
    let description: String

    init(_ description: String) { self.description = description }
}

/// Runs `round` `warmUpCalls` times, then `count` times timed, one after
/// another; returns each timed round in milliseconds.
func timeRounds(count: Int, _ round: () async throws -> Void) async throws -> [Double] {
    for _ in 0..<warmUpCalls { try await round() }
    let clock = ContinuousClock()
    var times: [Double] = []
    times.reserveCapacity(count)
    for _ in 0..<count {
        let elapsed = try await clock.measure { try await round() }
        times.append(Double(elapsed.components.seconds) * 1e3 + Double(elapsed.components.attoseconds) / 1e15)
    }
    return times
}

/// Measured times, sorted, for their percentiles.
struct Latencies {
    private let sorted: [Double]

    init(_ times: [Double]) {
        precondition(!times.isEmpty, "no times measured")
        sorted = times.sorted()
    }

    /// The nearest-rank percentile: the smallest time that at least `p` % of the times do not exceed.
    func percentile(_ p: Double) -> Double {
        sorted[min(sorted.count, max(1, Int((p / 100 * Double(sorted.count)).rounded(.up)))) - 1]
    }

    var slowest: Double { sorted[sorted.count - 1] }
}

/// A value in the JSON line: milliseconds with three decimals, a list of them, or a count.
enum JSONNumber: CustomStringConvertible {
    case milliseconds(Double)
    case millisecondsList([Double])
    case count(Int)

    var description: String {
        switch self {
        case .milliseconds(let value): String(format: "%.3f", value)
        case .millisecondsList(let values): "[" + values.map { JSONNumber.milliseconds($0).description }.joined(separator: ",") + "]"
        case .count(let value): "\(value)"
        }
    }
}

/// Prints one line of JSON: `fields` in their order.
func printJSON(_ fields: KeyValuePairs<String, JSONNumber>) {
    print("{" + fields.map { "\"\($0.key)\":\($0.value)" }.joined(separator: ",") + "}")
}
