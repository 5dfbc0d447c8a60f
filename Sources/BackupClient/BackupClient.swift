import BackupRules
import BackupWire
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL

/// Where and how to reach a backupd server.
public struct ClientSettings: Sendable {
    public var host: String
    public var port: Int
    /// The bearer token sent with every call.
    public var token: Secret<String>
    /// PEM file of the CA that signed the server's certificate; nil trusts the system's roots.
    public var caFile: String?
    /// A client certificate and its key, for servers that require mutual TLS.
    public var clientCertificate: (certificateFile: String, keyFile: String)?
    public var maxFrameBytes = defaultMaxFrameBytes

    public init(address: String, token: String, caFile: String? = nil) throws {
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]) else {
            throw RPCError(.invalidArgument, "address \"\(address)\" is not HOST:PORT")
        }
        var host = String(address[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        self.host = host
        self.port = port
        self.token = Secret(token)
        self.caFile = caFile
    }

    /// A TLS connection to the server offering `protocol` by ALPN
    /// (`backup-rpc/1`, `http/1.1` for downloads, or nil for none), with
    /// `configure` adding the handlers above TLS.
    public func connect<Inbound: Sendable, Outbound: Sendable>(
        protocol: String? = "backup-rpc/1", configure: @escaping @Sendable (any Channel) throws -> Void
    ) async throws -> NIOAsyncChannel<Inbound, Outbound> {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv12
        tls.applicationProtocols = `protocol`.map { [$0] } ?? []
        if let caFile { tls.trustRoots = .file(caFile) }
        if let (certificateFile, keyFile) = clientCertificate {
            tls.certificateChain = try NIOSSLCertificate.fromPEMFile(certificateFile).map { .certificate($0) }
            tls.privateKey = .privateKey(try NIOSSLPrivateKey(file: keyFile, format: .pem))
        }
        let sslContext = try NIOSSLContext(configuration: tls)
        let isAddress = (try? SocketAddress(ipAddress: host, port: port)) != nil
        let serverHostname = isAddress ? nil : host
        do {
            return try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .connect(host: host, port: port) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(
                            try NIOSSLClientHandler(context: sslContext, serverHostname: serverHostname))
                        try configure(channel)
                        return try NIOAsyncChannel<Inbound, Outbound>(wrappingChannelSynchronously: channel)
                    }
                }
        } catch {
            throw RPCError(.unavailable, "cannot connect to \(host):\(port): \(error)")
        }
    }
}

/// A connection to backupd that carries many calls at once. Open one with
/// `withConnection`; it closes when the closure returns.
public final class BackupClient: Sendable {
    private let write: @Sendable ([Frame]) async throws -> Void
    private let token: Secret<String>
    private let calls = NIOLockedValueBox(Calls())

    private struct Calls {
        var nextID: UInt32 = 1
        var open: [UInt32: AsyncThrowingStream<Frame.Kind, any Error>.Continuation] = [:]
        /// Bytes of responses received for each open call and not yet handed to its caller.
        var unread: [UInt32: Int] = [:]
    }

    /// Response bytes one call may have waiting for its caller; past this,
    /// the call is cancelled and fails, rather than the client's memory
    /// growing with a server that sends faster than the caller reads.
    private let maximumUnreadBytes: Int

    private init(token: Secret<String>, maximumUnreadBytes: Int, write: @escaping @Sendable ([Frame]) async throws -> Void) {
        self.token = token
        self.maximumUnreadBytes = maximumUnreadBytes
        self.write = write
    }

    /// Connects over TLS, runs `body` with the client, and closes the connection.
    public static func withConnection<T: Sendable>(
        _ settings: ClientSettings, _ body: @Sendable (BackupClient) async throws -> T
    ) async throws -> T {
        let maxFrameBytes = settings.maxFrameBytes
        let channel: NIOAsyncChannel<Frame, Frame> = try await settings.connect { channel in
            try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder(maxFrameBytes: maxFrameBytes)))
            try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(FrameEncoder()))
        }
        return try await channel.executeThenClose { inbound, outbound in
            try await withTransport(token: settings.token.revealed, inbound: inbound, maximumUnreadBytes: 4 * maxFrameBytes,
                                    write: { try await outbound.write(contentsOf: $0) }, body)
        }
    }

    /// Runs `body` with a client over any carrier of frames: `inbound` is
    /// what the server sends, `write` sends frames to it (awaiting
    /// back-pressure). The TLS connection and the in-process transport of
    /// the tests both come here.
    public static func withTransport<T: Sendable, Inbound: AsyncSequence<Frame, any Error> & Sendable>(
        token: String, inbound: Inbound, maximumUnreadBytes: Int = 4 * defaultMaxFrameBytes,
        write: @escaping @Sendable ([Frame]) async throws -> Void, _ body: @Sendable (BackupClient) async throws -> T
    ) async throws -> T {
        let client = BackupClient(token: Secret(token), maximumUnreadBytes: maximumUnreadBytes, write: write)
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                do {
                    for try await frame in inbound { client.deliver(frame) }
                    client.failAll(RPCError(.unavailable, "the server closed the connection"))
                } catch {
                    client.failAll(RPCError(.unavailable, Self.refusedForWantOfACertificate(error)
                        ? "the server requires a client certificate (mutual TLS)"
                        : "the connection failed: \(error)"))
                }
            }
            defer { group.cancelAll() }
            return try await body(client)
        }
    }

    /// Whether `error` is the TLS alert of a server that requires a client
    /// certificate: read from the TLS library's errors (whose codes it keeps
    /// to itself, so by their reason's name), not from whatever an error says.
    static func refusedForWantOfACertificate(_ error: any Error) -> Bool {
        let tlsError: BoringSSLError? = switch error {
        case let error as BoringSSLError: error
        case NIOSSLError.handshakeFailed(let error): error
        default: nil
        }
        guard case .sslError(let errors)? = tlsError else { return false }
        return errors.contains { $0.description.contains("CERTIFICATE_REQUIRED") }
    }

    /// One request, one response.
    public func unary<Request, Response>(_ method: Method<Request, Response>, _ request: Request,
                                         timeout: Duration? = nil) async throws -> Response {
        var response: Response?
        try await call(method, requests: [request], timeout: timeout) { response = $0 }
        guard let response else { throw RPCError(.internal, "\(method.name) ended OK without a response") }
        return response
    }

    /// One request, then every response as it arrives.
    public func serverStreaming<Request, Response>(_ method: Method<Request, Response>, _ request: Request,
                                                   onResponse: (Response) async throws -> Void) async throws {
        try await call(method, requests: [request], timeout: nil, onResponse: onResponse)
    }

    /// Runs one call: start, the request messages, half-close; then the
    /// responses until the status. A status other than OK is thrown as `RPCError`.
    public func call<Request, Response>(
        _ method: Method<Request, Response>, requests: [Request], timeout: Duration?,
        onResponse: (Response) async throws -> Void
    ) async throws {
        let (id, responses) = open()
        let frames = [Frame(callID: id, .start(callStart(method, timeout: timeout)))]
            + requests.map { Frame(callID: id, .message($0.serializedBytes())) } + [Frame(callID: id, .halfClose)]
        do {
            try await write(frames)
        } catch {
            try await failedWrite(id, responses, error)
        }
        try await receivingUntilCancelled(id) { try await receive(method, id, responses, onResponse: onResponse) }
    }

    /// Runs `receiving` for call `id`; when the calling task is cancelled,
    /// the call ends at once with CANCELLED, is forgotten, and the server is
    /// sent a Cancel, so it stops the call's work.
    private func receivingUntilCancelled<T>(_ id: UInt32, _ receiving: () async throws -> T) async throws -> T {
        let cancelled = RPCError(.cancelled, "the call was cancelled")
        do {
            return try await withTaskCancellationHandler {
                try await receiving()
            } onCancel: {
                end(id, cancelled)
            }
        } catch where Task.isCancelled {
            end(id, cancelled)
            // Sent from a task of its own: this one is cancelled, and its writes would be too.
            let write = self.write
            await Task { try? await write([Frame(callID: id, .cancel)]) }.value
            throw cancelled
        }
    }

    /// A client-streaming call whose requests are made as they are sent:
    /// `sending` is handed a function that sends one request, returning once
    /// the connection has taken it (so a request is made only when there is
    /// room for it), and the call is half-closed when `sending` returns. The
    /// server's status may come first (a refused chunk, say): it ends the
    /// call, the next send throws, and the status is what the call throws.
    public func clientStreaming<Request, Response: Sendable>(
        _ method: Method<Request, Response>, timeout: Duration? = nil,
        sending: (_ send: (Request) async throws -> Void) async throws -> Void
    ) async throws -> Response {
        let (id, responses) = open()
        do {
            try await write([Frame(callID: id, .start(callStart(method, timeout: timeout)))])
        } catch {
            try await failedWrite(id, responses, error)
        }
        let ended = NIOLockedValueBox(false)
        return try await withThrowingTaskGroup(of: Response.self) { group in
            group.addTask {
                defer { ended.withLockedValue { $0 = true } }
                var response: Response?
                try await self.receivingUntilCancelled(id) { try await self.receive(method, id, responses) { response = $0 } }
                guard let response else { throw RPCError(.internal, "\(method.name) ended OK without a response") }
                return response
            }
            do {
                try await sending { request in
                    guard !ended.withLockedValue({ $0 }) else { throw CallEnded() }
                    try await self.writeWhileOpen([Frame(callID: id, .message(request.serializedBytes()))])
                }
                try await writeWhileOpen([Frame(callID: id, .halfClose)])
            } catch {
                // A write that failed means the connection is ending: the receiver learns why (a status, or
                // UNAVAILABLE when it closed), which says more than the write's own error.
                if !(error is CallEnded) {
                    // The requests could not be made (a file that cannot be read): the call is cancelled.
                    try? await write([Frame(callID: id, .cancel)])
                    close(id)
                    group.cancelAll()
                    throw error
                }
            }
            return try await group.next()!
        }
    }

    /// A send after the call ended, or that the connection could not take.
    private struct CallEnded: Error {}

    /// Writes a streaming call's frames; a connection that cannot take them is ending (`CallEnded`).
    private func writeWhileOpen(_ frames: [Frame]) async throws {
        do {
            try await write(frames)
        } catch let error as CancellationError {
            throw error
        } catch {
            throw CallEnded()
        }
    }

    private func callStart<Request, Response>(_ method: Method<Request, Response>, timeout: Duration?) -> CallStart {
        var start = CallStart()
        start.method = method.name
        start.metadata = [MetadataEntry("authorization", "Bearer \(token.revealed)")]
        if let timeout { start.timeoutMS = UInt32(clamping: timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000) }
        return start
    }

    /// A call whose frames could not be sent fails, with the reason the
    /// connection's reader learned if it learned one.
    private func failedWrite(_ id: UInt32, _ responses: AsyncThrowingStream<Frame.Kind, any Error>, _ error: any Error) async throws -> Never {
        // A connection that failed under the write is ending: what its reader learns (the alert a server
        // sent when it refused this client's certificate, say) says why better than the write's error.
        if !(error is CancellationError) {
            do { for try await _ in responses {} } catch let reason as RPCError { throw reason }
        }
        close(id)
        throw RPCError(.unavailable, "cannot send the call: \(error)")
    }

    /// A call's responses until its status; a status other than OK is thrown as `RPCError`.
    private func receive<Request, Response>(_ method: Method<Request, Response>, _ id: UInt32,
                                            _ responses: AsyncThrowingStream<Frame.Kind, any Error>,
                                            onResponse: (Response) async throws -> Void) async throws {
        for try await kind in responses {
            switch kind {
            case .message(let bytes):
                calls.withLockedValue { $0.unread[id]? -= bytes.count }
                guard let response = try? Response(serializedBytes: bytes) else {
                    throw RPCError(.internal, "the server's response is not a valid \(String(cString: Response.descriptor.name))")
                }
                try await onResponse(response)
            case .status(let status):
                if let error = status.error { throw error }
                return
            default:
                continue
            }
        }
        throw RPCError(.unavailable, "the connection closed before \(method.name) ended")
    }

    private func open() -> (UInt32, AsyncThrowingStream<Frame.Kind, any Error>) {
        let (stream, continuation) = AsyncThrowingStream<Frame.Kind, any Error>.makeStream()
        let id = calls.withLockedValue { calls in
            let id = calls.nextID
            calls.nextID &+= 1
            calls.open[id] = continuation
            calls.unread[id] = 0
            return id
        }
        return (id, stream)
    }

    private func close(_ id: UInt32) {
        calls.withLockedValue { calls in
            calls.unread[id] = nil
            return calls.open.removeValue(forKey: id)
        }?.finish()
    }

    private func deliver(_ frame: Frame) {
        guard let kind = frame.kind else { return }
        if frame.callID == 0, case .status(let status) = kind {
            failAll(RPCError(status.code, status.message))
            return
        }
        let id = frame.callID
        let (continuation, overflowing) = calls.withLockedValue { calls -> (AsyncThrowingStream<Frame.Kind, any Error>.Continuation?, Bool) in
            guard let continuation = calls.open[id] else { return (nil, false) }
            guard case .message(let bytes) = kind else { return (continuation, false) }
            calls.unread[id, default: 0] += bytes.count
            guard calls.unread[id, default: 0] > maximumUnreadBytes else { return (continuation, false) }
            calls.unread[id] = nil
            return (calls.open.removeValue(forKey: id), true)
        }
        guard let continuation else { return }
        if overflowing {
            continuation.finish(throwing: RPCError(.resourceExhausted, "the server sent more than \(maximumUnreadBytes) bytes "
                + "of responses the caller has not read yet; the call was cancelled"))
            Task { [write] in try? await write([Frame(callID: id, .cancel)]) }
            return
        }
        continuation.yield(kind)
        if case .status = kind { close(frame.callID) }
    }

    /// Ends one call with `error`, if it is still open.
    private func end(_ id: UInt32, _ error: RPCError) {
        calls.withLockedValue { calls in
            calls.unread[id] = nil
            return calls.open.removeValue(forKey: id)
        }?.finish(throwing: error)
    }

    private func failAll(_ error: RPCError) {
        let open = calls.withLockedValue { calls in
            defer {
                calls.open.removeAll()
                calls.unread.removeAll()
            }
            return Array(calls.open.values)
        }
        open.forEach { $0.finish(throwing: error) }
    }
}
