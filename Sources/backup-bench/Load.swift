import ArgumentParser
import BackupClient
import BackupRules
import BackupStorage
import BackupWire
import Foundation
import NIOCore
import NIOPosix
import Synchronization

/// `make load`: many clients calling at once beside many connections that
/// never call, for a bounded time, and what the server made of it: calls a
/// second and latency per method, every status that was not OK, and the
/// server's memory and descriptors over the run.
struct Load: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "load",
        abstract: "Mixed calls from many clients beside many idle connections; prints a report, fails on an unexpected error.",
        discussion: """
            Each client has a connection of its own and goes round a fixed mix: ListBackups and GetBackup most, \
            WatchJob (to its first reading) of the job it last created (at first the one that made the backup), \
            RequestDownload and, timed apart, the HTTPS fetch of the \
            archive, CreateBackup, and an upload (start, chunks, finish) of the archive given. The idle connections \
            come from other loopback addresses (127.0.0.2 and on); half of them send the first bytes of a TLS \
            record and stop, half send nothing; each is opened again when the server closes it. Refusals the API \
            promises under load are counted apart: RESOURCE_EXHAUSTED (a full queue, a namespace's share), for a \
            new backup or upload FAILED_PRECONDITION (an environment runs one job at a time), and for a download \
            the 503 of a namespace's download slots all being taken. Any other error fails the run.
            """)
    @OptionGroup var server: ServerOptions
    @Option(help: "Environment the clients back up and upload to, NAMESPACE/NAME (the token's namespace).") var env: EnvironmentRef
    @Option(help: "A finished backup of it to show and download.") var backupID: String
    @Option(help: "A snapshot archive (.tar.gz) to upload.") var archive: String
    @Option(help: "Clients calling at once.") var clients = 64
    @Option(help: "Connections that never call.") var idle = 1000
    @Option(help: "Loopback addresses the idle connections come from.") var idleAddresses = 10
    @Option(help: "How long the clients call.") var seconds = 60
    @Option(help: "The server's process id, to sample its memory and descriptors.") var serverPid: Int32?

    func validate() throws {
        guard (1...512).contains(clients) else { throw ValidationError("--clients must be 1 to 512") }
        guard (0...4000).contains(idle) else { throw ValidationError("--idle must be 0 to 4000") }
        guard (1...250).contains(idleAddresses) else { throw ValidationError("--idle-addresses must be 1 to 250") }
        guard (1...3600).contains(seconds) else { throw ValidationError("--seconds must be 1 to 3600") }
    }

    func run() async throws {
        raiseDescriptorLimit(to: rlim_t(idle + clients * 4 + 256))
        let settings = try server.settings()
        let upload = try UploadFile(path: archive)
        let plan = ClientPlan(env: env, backupID: backupID, upload: upload, settings: settings)
        let clock = ContinuousClock()
        let end = clock.now + .seconds(seconds)
        let idlers = IdleConnections(host: settings.host, port: settings.port, addresses: idleAddresses)
        let started = clock.now

        /// What each task of the run hands back.
        enum Outcome: Sendable { case tally(Tally), samples([ServerSample]), none }
        var tallies: [Tally] = []
        var samples: [ServerSample] = []
        try await withThrowingTaskGroup(of: Outcome.self) { group in
            for index in 0..<idle {
                group.addTask { await idlers.hold(index, until: end); return .none }
            }
            if let pid = serverPid {
                group.addTask {
                    var samples: [ServerSample] = []
                    while clock.now < end {
                        if let sample = ServerSample.read(pid: pid, at: started.duration(to: clock.now), idle: idlers.open) {
                            samples.append(sample)
                        }
                        try? await Task.sleep(for: .seconds(1))
                    }
                    return .samples(samples)
                }
            }
            for index in 0..<clients {
                group.addTask { .tally(await plan.run(client: index, until: end)) }
            }
            for try await outcome in group {
                switch outcome {
                case .tally(let tally): tallies.append(tally)
                case .samples(let taken): samples = taken
                case .none: break
                }
            }
        }
        let elapsed = started.duration(to: clock.now)
        let report = LoadReport(tallies: tallies, elapsed: elapsed, idle: idlers, samples: samples,
                                clients: clients, idleCount: idle)
        print(report.text)
        guard report.unexpectedErrors == 0 else { throw ExitCode(1) }
    }
}

/// The archive every client uploads: its bytes (small enough to hold) and hash.
struct UploadFile: Sendable {
    let bytes: [UInt8]
    let sha256: String

    init(path: String) throws {
        guard let data = FileManager.default.contents(atPath: path), !data.isEmpty else {
            throw ValidationError("cannot read \(path), or it is empty")
        }
        guard data.count <= 64 << 20 else { throw ValidationError("\(path) is over 64 MiB; a load test uploads a small archive") }
        bytes = Array(data)
        sha256 = ContentHash.of(bytes).hex
    }
}

/// The calls of the mix, as the report names them.
enum LoadMethod: String, CaseIterable, Sendable {
    case list = "ListBackups", show = "GetBackup", watch = "WatchJob", download = "RequestDownload"
    case fetch = "fetch (HTTPS)", create = "CreateBackup", upload = "upload (3 calls)"
}

/// What one client did: latencies per method and statuses other than OK.
struct Tally: Sendable {
    var latencies: [LoadMethod: [Double]] = [:]
    var refusals: [LoadMethod: Int] = [:]
    /// Unexpected errors, by method and message.
    var errors: [String: Int] = [:]

    /// Runs `body` as a call of `method`: its latency when it succeeds, a
    /// refusal or an error when it does not (then nil).
    @discardableResult
    mutating func timing<T>(_ method: LoadMethod, _ body: () async throws -> T) async -> T? {
        let clock = ContinuousClock()
        let started = clock.now
        do {
            let value = try await body()
            let elapsed = started.duration(to: clock.now)
            latencies[method, default: []].append(Double(elapsed.components.seconds) * 1e3 + Double(elapsed.components.attoseconds) / 1e15)
            return value
        } catch let error as RPCError where ClientPlan.isExpectedRefusal(error, of: method) {
            refusals[method, default: 0] += 1
        } catch {
            errors["\(method.rawValue): \(error)", default: 0] += 1
        }
        return nil
    }
}

/// One client's round: the mix in a fixed order.
struct ClientPlan: Sendable {
    let env: EnvironmentRef
    let backupID: String
    let upload: UploadFile
    let settings: ClientSettings

    static let round: [LoadMethod] = [.list, .show, .list, .show, .watch, .list, .show, .download, .list, .show,
                                      .create, .list, .show, .watch, .list, .show, .download, .list, .show, .upload]

    /// RESOURCE_EXHAUSTED (a full queue, a namespace's share); for a new job
    /// FAILED_PRECONDITION (its environment runs one job at a time); for a
    /// download's fetch the 503 of a namespace's download slots being taken.
    static func isExpectedRefusal(_ error: RPCError, of method: LoadMethod) -> Bool {
        switch (error.code, method) {
        case (.resourceExhausted, _), (.failedPrecondition, .create), (.failedPrecondition, .upload): true
        case (.unavailable, .fetch): error.message.hasPrefix("the download URL answered 503")
        default: false
        }
    }

    /// The first reading of a watch is all it waits for.
    private struct FirstReading: Error {}

    func run(client: Int, until end: ContinuousClock.Instant) async -> Tally {
        let clock = ContinuousClock()
        do {
            return try await BackupClient.withConnection(settings) { rpc in
                var tally = Tally()
                // Until it creates one, a client watches the job that made the backup: its one reading, the end.
                var lastJob = try await rpc.unary(Backups.getBackup, .with { $0.id = backupID }).jobID
                var step = client  // clients start at different places in the round
                while clock.now < end {
                    await call(Self.round[step % Self.round.count], rpc, lastJob: &lastJob, tally: &tally)
                    step += 1
                }
                return tally
            }
        } catch {
            return Tally(errors: ["connection: \(error)": 1])
        }
    }

    /// Makes one call of the mix (a download: the RPC, then the fetch of a
    /// ready archive, each timed as its own), tallying how it went.
    private func call(_ method: LoadMethod, _ rpc: BackupClient, lastJob: inout String, tally: inout Tally) async {
        switch method {
        case .list:
            await tally.timing(.list) {
                try await rpc.unary(Backups.listBackups, .with { $0.namespace = env.namespace; $0.environment = env.name; $0.pageSize = 50 })
            }
        case .show:
            await tally.timing(.show) { try await rpc.unary(Backups.getBackup, .with { $0.id = backupID }) }
        case .create:
            let created = await tally.timing(.create) {
                try await rpc.unary(Backups.createBackup, .with { $0.namespace = env.namespace; $0.environment = env.name; $0.comment = "load test" })
            }
            if let created { lastJob = created.job.id }
        case .watch:
            await tally.timing(.watch) { [lastJob] in
                do {
                    try await rpc.serverStreaming(Backups.watchJob, .with { $0.id = lastJob }) { _ in throw FirstReading() }
                } catch is FirstReading {}
            }
        case .download:
            let download = await tally.timing(.download) { try await rpc.unary(Backups.requestDownload, .with { $0.backupID = backupID }) }
            guard let download, download.ready else { return }
            await tally.timing(.fetch) { try await fetch(download.url) }
        case .fetch:
            break  // after .download
        case .upload:
            await tally.timing(.upload) { try await uploadArchive(rpc) }
        }
    }

    private func fetch(_ url: String) async throws {
        var received = 0
        try await DownloadFetch(url: url, trusting: settings).fetch(from: 0, etag: "", start: { _ in }) { received += $0.readableBytes }
        guard received > 0 else { throw BenchError("the download of \(url) was empty") }
    }

    private func uploadArchive(_ rpc: BackupClient) async throws {
        let started = try await rpc.unary(Backups.startUpload, .with {
            $0.namespace = env.namespace; $0.environment = env.name; $0.filename = "load.tar.gz"
            $0.sizeBytes = UInt64(upload.bytes.count); $0.sha256 = upload.sha256; $0.comment = "load test"
        })
        let chunkBytes = 1 << 20
        _ = try await rpc.clientStreaming(Backups.uploadChunks) { send in
            var offset = 0
            while offset < upload.bytes.count {
                let end = min(upload.bytes.count, offset + chunkBytes)
                try await send(.with { $0.uploadID = started.id; $0.offset = UInt64(offset); $0.data = Array(upload.bytes[offset..<end]) })
                offset = end
            }
        }
        _ = try await rpc.unary(Backups.finishUpload, .with { $0.uploadID = started.id })
    }
}

/// Connections that make no call: opened from loopback addresses other than
/// the clients', kept until the server closes them, then opened again.
final class IdleConnections: Sendable {
    let host: String
    let port: Int
    let addresses: Int
    private let counts = Mutex((open: 0, opened: 0, closedByServer: 0, refused: 0))

    init(host: String, port: Int, addresses: Int) {
        (self.host, self.port, self.addresses) = (host, port, addresses)
    }

    var open: Int { counts.withLock { $0.open } }
    var totals: (opened: Int, closedByServer: Int, refused: Int) {
        counts.withLock { ($0.opened, $0.closedByServer, $0.refused) }
    }

    /// The first 5 bytes of a TLS handshake record: a ClientHello that never comes.
    private static let halfHello: [UInt8] = [0x16, 0x03, 0x01, 0x02, 0x00]

    func hold(_ index: Int, until end: ContinuousClock.Instant) async {
        let clock = ContinuousClock()
        while clock.now < end {
            do {
                let source = try SocketAddress(ipAddress: "127.0.0.\(2 + index % addresses)", port: 0)
                let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                    .bind(to: source)
                    .connect(host: host, port: port).get()
                counts.withLock { $0.open += 1; $0.opened += 1 }
                if index % 2 == 1 { channel.writeAndFlush(ByteBuffer(bytes: Self.halfHello), promise: nil) }
                // Held until the server closes it or the run ends, whichever is first.
                let byServer = await withTaskGroup(of: Bool.self) { group in
                    group.addTask { try? await channel.closeFuture.get(); return true }
                    group.addTask { try? await Task.sleep(until: end, clock: clock); return false }
                    let first = await group.next()!
                    group.cancelAll()
                    if !first { try? await channel.close() }
                    return first
                }
                counts.withLock { $0.open -= 1; if byServer { $0.closedByServer += 1 } }
            } catch {
                counts.withLock { $0.refused += 1 }
                try? await Task.sleep(for: .milliseconds(100))
            }
        }
    }
}

/// The server's resident memory and open descriptors at a moment of the run.
struct ServerSample: Sendable {
    let at: Duration
    let residentMiB: Double
    let descriptors: Int
    let idleOpen: Int

    static func read(pid: Int32, at: Duration, idle: Int) -> ServerSample? {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kiB = line.split(separator: " ").dropFirst().first.flatMap({ Double($0) }),
              let fds = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd") else { return nil }
        return ServerSample(at: at, residentMiB: kiB / 1024, descriptors: fds.count, idleOpen: idle)
    }
}

/// The printed report.
struct LoadReport {
    let text: String
    let unexpectedErrors: Int

    init(tallies: [Tally], elapsed: Duration, idle: IdleConnections, samples: [ServerSample], clients: Int, idleCount: Int) {
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        var lines = ["\(clients) clients for \(String(format: "%.1f", seconds)) s beside \(idleCount) idle connections", ""]
        lines.append(Self.row("method", "calls", "calls/s", "p50 ms", "p99 ms", "max ms", "refused"))
        var total = 0
        var refusedInAll = 0
        for method in LoadMethod.allCases {
            let times = tallies.flatMap { $0.latencies[method] ?? [] }
            let refused = tallies.reduce(0) { $0 + ($1.refusals[method] ?? 0) }
            total += times.count
            refusedInAll += refused
            guard !times.isEmpty else {
                lines.append(Self.row(method.rawValue, "0", "-", "-", "-", "-", "\(refused)"))
                continue
            }
            let latencies = Latencies(times)
            lines.append(Self.row(method.rawValue, "\(times.count)", String(format: "%.1f", Double(times.count) / seconds),
                                  String(format: "%.2f", latencies.percentile(50)), String(format: "%.2f", latencies.percentile(99)),
                                  String(format: "%.1f", latencies.slowest), "\(refused)"))
        }
        lines.append(Self.row("all", "\(total)", String(format: "%.1f", Double(total) / seconds), "", "", "", "\(refusedInAll)"))
        let errors = tallies.reduce(into: [String: Int]()) { all, tally in all.merge(tally.errors, uniquingKeysWith: +) }
        unexpectedErrors = errors.values.reduce(0, +)
        lines.append("")
        lines.append("unexpected errors: \(unexpectedErrors)")
        for (message, count) in errors.sorted(by: { $0.value > $1.value }).prefix(10) { lines.append("  \(count) × \(message)") }
        let (opened, closed, refused) = idle.totals
        lines.append("idle connections: \(opened) opened, \(closed) closed by the server, \(refused) refused or failed to connect")
        if !samples.isEmpty {
            lines.append("")
            lines.append("  second   server RSS MiB   descriptors   idle open")
            let every = max(1, samples.count / 12)
            for (index, sample) in samples.enumerated() where index % every == 0 || index == samples.count - 1 {
                lines.append(String(format: "  %6lld   %14.1f   %11d   %9d", sample.at.components.seconds, sample.residentMiB,
                                    sample.descriptors, sample.idleOpen))
            }
            let peak = samples.max { $0.residentMiB < $1.residentMiB }!
            lines.append(String(format: "  peak RSS %.1f MiB at %lld s; most descriptors %d", peak.residentMiB,
                                peak.at.components.seconds, samples.map(\.descriptors).max()!))
        }
        text = lines.joined(separator: "\n")
    }

    private static func row(_ columns: String...) -> String {
        zip(columns, [18, 8, 9, 9, 9, 9, 8]).map { column, width in
            column.count >= width ? column : (column == columns[0] ? column.padding(toLength: width, withPad: " ", startingAt: 0)
                : String(repeating: " ", count: width - column.count) + column)
        }.joined(separator: " ")
    }
}

/// Lets this process hold the idle connections (the soft limit is often 1,024).
func raiseDescriptorLimit(to wanted: rlim_t) {
    var limit = rlimit()
    guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < wanted else { return }
    var raised = limit
    raised.rlim_cur = min(wanted, limit.rlim_max)
    _ = setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &raised)
}
