import BackupStorage
import BackupWire
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOTLS
import ServiceLifecycle

/// TLS settings of the listener.
public struct TLSSettings: Sendable {
    public var certificateChainPath: String
    public var privateKeyPath: String
    /// When set, clients must present a certificate signed by this CA
    /// (mutual TLS), in addition to their bearer token.
    public var clientCAPath: String?

    public init(certificateChainPath: String, privateKeyPath: String, clientCAPath: String? = nil) {
        self.certificateChainPath = certificateChainPath
        self.privateKeyPath = privateKeyPath
        self.clientCAPath = clientCAPath
    }
}

/// ALPN protocol names served on the one port.
public enum ALPN {
    public static let rpc = "backup-rpc/1"
    public static let http = "http/1.1"
}

/// Accepts TLS connections on one port and hands each to the protocol that
/// ALPN chose: `backup-rpc/1` is the RPC protocol, `http/1.1` the download
/// endpoint. Without ALPN the first byte decides: a letter begins an HTTP
/// request line, while an RPC frame begins with its length's high byte (0).
actor TLSListener {
    private enum Negotiated: Sendable {
        case rpc(NIOAsyncChannel<ReceivedFrame, Never>, ConnectionController)
        /// `verified` hears the connection's first request with a signed URL.
        case http(DownloadEndpoint.HTTPChannel, verified: @Sendable () -> Void)
        /// No ALPN: decided by the first byte the client sends.
        case undecided(EventLoopFuture<Negotiated>)
        case unsupported(String)
    }

    /// A connection whose TLS handshake and protocol negotiation are under way.
    private struct Accepted: Sendable {
        let channel: any Channel
        let negotiated: EventLoopFuture<Negotiated>
    }

    private let host: String
    private let port: Int
    private let credentials: TLSCredentials
    private let maxFrameBytes: Int
    private let limits: ConnectionLimits
    private let admission: ConnectionAdmission
    private let receivePool: ReceivePool
    private let connection: RPCConnection
    private let downloads: DownloadEndpoint
    private let eventLoopGroup: any EventLoopGroup
    private let gauge: ConnectionGauge
    private let metrics: ServiceMetrics
    private let logger: Logger
    private let onListening: @Sendable (SocketAddress) -> Void

    init(host: String, port: Int, credentials: TLSCredentials, maxFrameBytes: Int, limits: ConnectionLimits, gauge: ConnectionGauge,
         dispatcher: RPCDispatcher, downloads: DownloadEndpoint, eventLoopGroup: any EventLoopGroup, metrics: ServiceMetrics, logger: Logger,
         onListening: @escaping @Sendable (SocketAddress) -> Void) {
        self.gauge = gauge
        self.metrics = metrics
        self.host = host
        self.port = port
        self.credentials = credentials
        self.maxFrameBytes = maxFrameBytes
        self.limits = limits
        self.admission = ConnectionAdmission(limits: limits, gauge: gauge)
        self.receivePool = ReceivePool(bytes: limits.sharedReceiveBytes, perPeer: limits.sharedReceiveBytesPerPeer)
        self.connection = RPCConnection(dispatcher: dispatcher, logger: logger)
        self.downloads = downloads
        self.eventLoopGroup = eventLoopGroup
        self.logger = logger
        self.onListening = onListening
    }

    static let tls12CipherSuites = [
        "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    ].joined(separator: ":")

    func run() async throws {
        let credentials = self.credentials
        credentials.use(try credentials.load())
        let (maxFrameBytes, admission, receivePool, logger) = (self.maxFrameBytes, self.admission, self.receivePool, self.logger)
        let settings = ConnectionStateMachine.Settings(limits: limits, maximumHeldBytes: maxFrameBytes)

        let server = try await ServerBootstrap(group: eventLoopGroup)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .bind(host: host, port: port) { channel in
                // Over the limits (in all, or from this client's address), a connection is closed at once.
                let peer = channel.peerAddress
                guard let ticket = admission.admit(peer, close: { channel.close(promise: nil) }) else {
                    logger.warning("refusing connection: too many open", metadata: ["peer": "\(peer)"])
                    channel.close(promise: nil)
                    return channel.eventLoop.makeSucceededFuture(
                        Accepted(channel: channel, negotiated: channel.eventLoop.makeFailedFuture(ChannelError.ioOnClosedChannel)))
                }
                channel.closeFuture.whenComplete { _ in admission.release(ticket) }
                // Its timers and memory from here on are the controller's.
                let controller = ConnectionController(channel: channel, settings: settings, pool: receivePool, peer: peer) {
                    admission.authenticated(ticket)
                }
                // The credentials in use when the connection came: a reload later does not change its handshake.
                guard let sslContext = credentials.inUse?.context else {
                    channel.close(promise: nil)
                    return channel.eventLoop.makeSucceededFuture(
                        Accepted(channel: channel, negotiated: channel.eventLoop.makeFailedFuture(ChannelError.ioOnClosedChannel)))
                }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: sslContext))
                    // Either protocol's pipeline, set up on the event loop.
                    let rpc: @Sendable () throws -> Negotiated = {
                        // What the kernel holds for a client that does not read is answers the controller
                        // cannot see: keep it to a few hundred statuses, so that it stops reading such a
                        // client after a few hundred calls rather than tens of thousands.
                        try channel.syncOptions?.setOption(.socketOption(.so_sndbuf), value: TLSListener.rpcSendBuffer)
                        try channel.pipeline.syncOperations.addHandler(ReceiveGate(controller: controller))
                        try channel.pipeline.syncOperations.addHandler(
                            ByteToMessageHandler(ReceivedFrameDecoder(frames: FrameDecoder(maxFrameBytes: maxFrameBytes))))
                        try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(FrameEncoder()))
                        return .rpc(try NIOAsyncChannel<ReceivedFrame, Never>(wrappingChannelSynchronously: channel), controller)
                    }
                    let http: @Sendable () throws -> Negotiated = {
                        controller.handedOver()
                        return .http(try DownloadEndpoint.configure(channel), verified: { admission.authenticated(ticket) })
                    }
                    let negotiation = NIOTypedApplicationProtocolNegotiationHandler<Negotiated> { result, channel in
                        switch result {
                        case .negotiated(ALPN.rpc):
                            channel.eventLoop.makeCompletedFuture(withResultOf: rpc)
                        case .negotiated(ALPN.http):
                            channel.eventLoop.makeCompletedFuture(withResultOf: http)
                        case .fallback:
                            channel.eventLoop.makeCompletedFuture {
                                let sniffer = ProtocolSniffer(promise: channel.eventLoop.makePromise()) { firstByte in
                                    try (65...90).contains(firstByte) ? http() : rpc()
                                }
                                try channel.pipeline.syncOperations.addHandler(sniffer)
                                return .undecided(sniffer.decided)
                            }
                        case .negotiated(let other):
                            channel.close().map { .unsupported(other) }
                        }
                    }
                    try channel.pipeline.syncOperations.addHandler(negotiation)
                    let negotiated = negotiation.protocolNegotiationResult
                    negotiated.whenSuccess { _ in controller.handshakeCompleted() }
                    return Accepted(channel: channel, negotiated: negotiated)
                }
            }
        if let address = server.channel.localAddress { onListening(address) }
        logger.info("listening", metadata: ["address": "\(server.channel.localAddress.map { "\($0)" } ?? "?")"])

        // While it listens: its connections, what they borrowed of the receive pool, and when its certificate expires.
        let series = SampledSeries(metrics: metrics)
        let gauge = self.gauge
        let sampler = metrics.addSampler {
            series.replace(with: [
                (ServiceMetrics.Name.connectionsOpen, [], Double(gauge.admitted)),
                (ServiceMetrics.Name.receivePoolBytes, [], Double(receivePool.inUse)),
            ] + (credentials.inUse.map { [(ServiceMetrics.Name.certificateExpiry, [], $0.notAfter)] } ?? []))
        }
        defer {
            sampler.remove()
            series.replace(with: [])
        }
        do {
            try await withGracefulShutdownHandler {
                try await serve(server)
            } onGracefulShutdown: {
                server.channel.close(promise: nil)
            }
        } catch is ListenerClosed {}
    }

    /// Runs each accepted connection until the port closes; then calls in
    /// flight get a moment (`drainTime`) to finish before every connection
    /// still open is ended. With none open, it returns at once.
    private func serve(_ server: NIOAsyncChannel<Accepted, Never>) async throws {
        try await server.executeThenClose { inbound in
            let (portClosed, closing) = AsyncStream<Void>.makeStream()
            try await withThrowingTaskGroup(of: Void.self) { drain in
                // Returns once the port has closed and every connection has ended.
                drain.addTask {
                    try await withThrowingDiscardingTaskGroup { group in
                        for try await accepted in inbound {
                            group.addTask { await self.run(accepted) }
                        }
                        closing.finish()
                    }
                }
                drain.addTask {
                    for await _ in portClosed {}
                    try await Task.sleep(for: TLSListener.drainTime)
                    throw ListenerClosed()
                }
                // The first to end decides: the connections (the drain's timer is cancelled) or the drain time.
                try await drain.next()
                drain.cancelAll()
            }
        }
    }

    /// Negotiates an accepted connection's protocol and serves it to its end.
    private func run(_ accepted: Accepted) async {
        do {
            // A future cannot be cancelled; closing its connection ends the wait.
            var negotiated = try await withTaskCancellationHandler {
                try await accepted.negotiated.get()
            } onCancel: {
                accepted.channel.close(promise: nil)
            }
            if case .undecided(let decided) = negotiated {
                negotiated = try await withTaskCancellationHandler {
                    try await decided.get()
                } onCancel: {
                    accepted.channel.close(promise: nil)
                }
            }
            switch negotiated {
            case .rpc(let channel, let controller):
                await connection.run(channel, controller: controller, origin: await Self.origin(of: channel.channel))
            case .http(let channel, let verified):
                await downloads.serve(channel, verified: verified)
            case .undecided, .unsupported:
                break
            }
        } catch {
            logger.debug("handshake failed", metadata: ["error": "\(error)"])
        }
    }

    /// Who is at the other end of a connection whose handshake is done: its
    /// address, and its certificate's subject under mutual TLS.
    private static func origin(of channel: any Channel) async -> CallOrigin {
        let certificate = try? await channel.nioSSL_peerCertificate().get()
        return CallOrigin(peer: channel.peerAddress,
                          clientIdentity: certificate.flatMap { try? $0.toDERBytes() }.flatMap(certificateSubject(derEncoded:)))
    }

    /// The kernel's send buffer of an RPC connection. RPC answers are small
    /// or streamed frame by frame; bulk downloads go over HTTP.
    static let rpcSendBuffer = 256 * 1024

    /// How long open connections may go on once the port has closed.
    static let drainTime: Duration = .seconds(2)
}

/// Ends the connections of a listener whose port has closed.
private struct ListenerClosed: Error {}

/// Waits for the first byte of a connection that negotiated no protocol,
/// lets `choose` set the pipeline up behind it for the protocol that byte
/// begins, then hands that byte and all after it on and steps aside.
private final class ProtocolSniffer<Chosen: Sendable>: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    private let promise: EventLoopPromise<Chosen>
    private let choose: (UInt8) throws -> Chosen

    /// Completes once the first byte has arrived and its protocol is set up.
    var decided: EventLoopFuture<Chosen> { promise.futureResult }

    init(promise: EventLoopPromise<Chosen>, choose: @escaping (UInt8) throws -> Chosen) {
        self.promise = promise
        self.choose = choose
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = unwrapInboundIn(data)
        guard let first = bytes.getInteger(at: bytes.readerIndex, as: UInt8.self) else { return }
        do {
            promise.succeed(try choose(first))
        } catch {
            promise.fail(error)
            context.close(promise: nil)
            return
        }
        context.fireChannelRead(data)
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        promise.fail(ChannelError.eof)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        promise.fail(error)
        context.close(promise: nil)
    }
}

extension Channel {
    /// The client's IP address, as connection limits count it and the access log names it.
    var peerAddress: String { remoteAddress?.ipAddress ?? "unknown" }
}
