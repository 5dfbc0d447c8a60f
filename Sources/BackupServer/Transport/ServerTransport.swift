import BackupRules
import Logging
import NIOCore

/// A way calls reach the server: the TLS listener on a port (`TLSTransport`),
/// or memory (`InProcessTransport`, for tests that need the handlers but no
/// socket). The server hands each transport what it serves once it runs, and
/// runs every transport until a graceful shutdown ends it.
public protocol ServerTransport: Sendable {
    /// Serves calls (and, where the transport carries HTTP, download
    /// requests) until the task is cancelled or a graceful shutdown ends it.
    func serve(_ server: ServedEndpoints) async throws

    /// Reads again what the transport serves with (a listener's certificate
    /// and key) and checks it, changing nothing yet; nil when it reads no
    /// file. Throws naming the file and the problem.
    func prepareReload() throws(BackupError) -> PreparedReload?
}

/// What a reload read and checked, applied only once everything it reads
/// has been checked, so a reload changes all or nothing.
public struct PreparedReload: Sendable {
    /// What is served with from then on, for the log and `backupd reload`.
    let summary: String
    let apply: @Sendable () -> Void
}

/// What a transport serves: the RPC dispatcher and the HTTPS download
/// endpoint, with the limits every connection keeps.
public struct ServedEndpoints: Sendable {
    let dispatcher: RPCDispatcher
    let downloads: DownloadEndpoint
    let limits: ConnectionLimits
    let maxFrameBytes: Int
    let metrics: ServiceMetrics
    let logger: Logger
    /// Hears the address a listening transport bound (useful with port 0).
    let onListening: @Sendable (SocketAddress) -> Void
}

/// The TLS listener as a transport: RPC and HTTPS downloads on one port.
public struct TLSTransport: ServerTransport {
    let host: String
    let port: Int
    let eventLoopGroup: any EventLoopGroup
    let credentials: TLSCredentials
    /// The connections the listener holds admitted.
    public let connections = ConnectionGauge()

    /// Listens on `host`:`port` (0: a free port, told to `onListening`).
    public init(host: String, port: Int, eventLoopGroup: any EventLoopGroup, tls: TLSSettings) {
        self.host = host
        self.port = port
        self.eventLoopGroup = eventLoopGroup
        self.credentials = TLSCredentials(tls)
    }

    public func prepareReload() throws(BackupError) -> PreparedReload? {
        let loaded = try credentials.load()
        return PreparedReload(summary: loaded.summary) { [credentials] in credentials.use(loaded) }
    }

    public func serve(_ server: ServedEndpoints) async throws {
        try await TLSListener(host: host, port: port, credentials: credentials, maxFrameBytes: server.maxFrameBytes, limits: server.limits,
                              gauge: connections, dispatcher: server.dispatcher, downloads: server.downloads, eventLoopGroup: eventLoopGroup,
                              metrics: server.metrics, logger: server.logger, onListening: server.onListening).run()
    }
}
