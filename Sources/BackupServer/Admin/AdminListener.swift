import BackupRules
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle
import NIOConcurrencyHelpers

/// Where the admin listener listens: plain HTTP with no authentication, for
/// Prometheus and for the health checks of load balancers and
/// orchestrators. On loopback unless an operator puts it on a network only
/// they reach.
public struct AdminSettings: Sendable {
    public var host: String
    public var port: Int
    /// How often `/readyz`'s probes ask the catalog and the blob store, and `/metrics`'s catalog series are read.
    public var refreshInterval: Duration = .seconds(10)
    /// Hears the bound address (useful with port 0).
    public var onListening: @Sendable (SocketAddress) -> Void

    public init(host: String = "127.0.0.1", port: Int = 7444, onListening: @escaping @Sendable (SocketAddress) -> Void = { _ in }) {
        self.host = host
        self.port = port
        self.onListening = onListening
    }
}

/// Serves `/metrics` (Prometheus's text format), `/healthz` (the process
/// answers), `/readyz` (it should be sent work) and `POST /reload` (keys and
/// certificates read again) over HTTP/1.1 with keep-alive. It answers only
/// GET and HEAD, and POST to `/reload`. It holds at most
/// `maximumConnections` at once, a new one closing the oldest; each request
/// must arrive, and its answer be taken, within `requestTimeout`, and no
/// connection lasts past `connectionLifetime`, so neither slow, silent nor
/// kept-alive clients keep a scrape out. It is the last part of the server
/// to stop: during a graceful shutdown `/readyz` says so.
struct AdminListener: Service {
    let settings: AdminSettings
    let metrics: ServiceMetrics
    let readiness: ReadinessProbe
    /// `POST /reload`: the server's reload of its keys and certificates.
    let reload: @Sendable () async throws(BackupError) -> String
    let eventLoopGroup: any EventLoopGroup
    let logger: Logger

    static let maximumConnections = 64
    static let requestTimeout: Duration = .seconds(10)
    /// However busy a connection keeps, it is closed after this: kept-alive clients cannot hold slots for good.
    static let connectionLifetime: Duration = .seconds(60)

    func run() async throws {
        let connections = AdminConnections(maximum: Self.maximumConnections)
        let server: NIOAsyncChannel<DownloadEndpoint.HTTPChannel, Never>
        do {
            server = try await ServerBootstrap(group: eventLoopGroup)
                .serverChannelOption(.backlog, value: 64)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .bind(host: settings.host, port: settings.port) { channel in
                    // Past the maximum the oldest connection makes room: a new scrape always gets in.
                    connections.admit(channel)
                    return channel.eventLoop.makeCompletedFuture {
                        try DownloadEndpoint.addHTTPHandlers(to: channel.pipeline.syncOperations)
                        return try DownloadEndpoint.HTTPChannel(wrappingChannelSynchronously: channel)
                    }
                }
        } catch {
            throw BackupError.invalidArgument("the admin listener cannot listen on \(settings.host):\(settings.port) (--admin-listen): \(error)")
        }
        if let address = server.channel.localAddress { settings.onListening(address) }
        logger.info("admin listener listening", metadata: ["address": "\(server.channel.localAddress.map { "\($0)" } ?? "?")"])
        try await withGracefulShutdownHandler {
            try await server.executeThenClose { inbound in
                try await withThrowingDiscardingTaskGroup { group in
                    for try await connection in inbound {
                        // Every accepted connection is served to its end, a closed one at once.
                        group.addTask { await serve(connection) }
                    }
                    // The port closed: connections kept alive between scrapes end now.
                    group.cancelAll()
                }
            }
        } onGracefulShutdown: {
            server.channel.close(promise: nil)
        }
    }

    private func serve(_ connection: DownloadEndpoint.HTTPChannel) async {
        let deadline = ConnectionDeadline(channel: connection.channel)
        let lifetime = ConnectionDeadline(channel: connection.channel)
        deadline.arm(Self.requestTimeout)
        lifetime.arm(Self.connectionLifetime)
        defer { lifetime.disarm() }
        do {
            try await withTaskCancellationHandler {
                try await connection.executeThenClose { inbound, outbound in
                    var request: HTTPRequestHead?
                    for try await part in inbound {
                        switch part {
                        case .head(let head):
                            request = head
                        case .body:
                            continue
                        case .end:
                            guard let head = request else { continue }
                            request = nil
                            deadline.arm(Self.requestTimeout)  // to answer, and for the answer to be taken
                            let (status, headers, body) = await answer(head)
                            let keepAlive = head.isKeepAlive
                            var fields = HTTPHeaders(headers)
                            if !keepAlive { fields.add(name: "Connection", value: "close") }
                            try await outbound.write(.head(HTTPResponseHead(version: head.version, status: status, headers: fields)))
                            if head.method != .HEAD { try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: body)))) }
                            try await outbound.write(.end(nil))
                            guard keepAlive else { return }
                            deadline.arm(Self.requestTimeout)
                        }
                    }
                }
            } onCancel: {
                connection.channel.close(promise: nil)
            }
        } catch {
            logger.debug("admin connection ended", metadata: ["error": "\(error)"])
        }
        deadline.disarm()
    }

    /// The answer to one request: status, headers and body.
    func answer(_ head: HTTPRequestHead) async -> (HTTPResponseStatus, [(String, String)], [UInt8]) {
        func text(_ status: HTTPResponseStatus, _ body: String, _ extra: [(String, String)] = []) -> (HTTPResponseStatus, [(String, String)], [UInt8]) {
            let bytes = Array(body.utf8)
            return (status, plainTextHeaders(length: bytes.count) + extra, bytes)
        }
        let path = head.uri.prefix(while: { $0 != "?" })
        if path == "/reload" {
            guard head.method == .POST else { return text(.methodNotAllowed, "/reload takes POST\n", [("Allow", "POST")]) }
            do {
                return text(.ok, try await reload() + "\n")
            } catch {
                return text(.internalServerError, "reload failed, the keys and certificates in use stay: \(error.description)\n")
            }
        }
        guard head.method == .GET || head.method == .HEAD else {
            return text(.methodNotAllowed, "the admin listener answers GET and HEAD\n", [("Allow", "GET, HEAD")])
        }
        switch path {
        case "/metrics":
            let body = metrics.export()
            return (.ok, [("Content-Type", "text/plain; version=0.0.4; charset=utf-8"), ("Content-Length", String(body.count)),
                          ("Cache-Control", "no-store")], body)
        case "/healthz":
            return text(.ok, "ok\n")
        case "/readyz":
            let problems = readiness.problems()
            let lines = problems.map { "\($0.check.rawValue): \($0.problem ?? "ok")\n" }.joined()
            return text(problems.allSatisfy { $0.problem == nil } ? .ok : .serviceUnavailable, lines)
        default:
            return text(.notFound, "no such page: the admin listener serves /metrics, /healthz, /readyz and /reload\n")
        }
    }
}

/// The admin listener's open connections, oldest first: admitting one past
/// the maximum closes the oldest. A connection leaves when it closes, so a
/// slot is given back however its answer ended.
final class AdminConnections: Sendable {
    private struct State {
        var open: [ObjectIdentifier: (order: UInt64, channel: any Channel)] = [:]
        var admitted: UInt64 = 0
    }

    private let maximum: Int
    private let state = NIOLockedValueBox(State())

    init(maximum: Int) {
        self.maximum = maximum
    }

    func admit(_ channel: any Channel) {
        let id = ObjectIdentifier(channel)
        let evicted: (any Channel)? = state.withLockedValue { state in
            state.admitted += 1
            state.open[id] = (state.admitted, channel)
            guard state.open.count > maximum, let oldest = state.open.min(by: { $0.value.order < $1.value.order }) else { return nil }
            state.open[oldest.key] = nil
            return oldest.value.channel
        }
        evicted?.close(promise: nil)
        channel.closeFuture.whenComplete { [state] _ in
            _ = state.withLockedValue { $0.open.removeValue(forKey: id) }
        }
    }
}
