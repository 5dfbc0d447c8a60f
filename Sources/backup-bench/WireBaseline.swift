import BackupClient
import BackupWire
import NIOCore
import NIOPosix
import NIOSSL
import Synchronization

/// Bytes sent and received on a connection.
struct ByteCounts: Sendable {
    var sent = 0
    var received = 0

    static func - (after: ByteCounts, before: ByteCounts) -> ByteCounts {
        ByteCounts(sent: after.sent - before.sent, received: after.received - before.received)
    }
}

/// A connection's running byte counts, kept on its event loop and read from any task.
final class ByteTally: Sendable {
    private let state = Mutex(ByteCounts())

    var counts: ByteCounts { state.withLock { $0 } }

    fileprivate func add(sent: Int = 0, received: Int = 0) {
        state.withLock {
            $0.sent += sent
            $0.received += received
        }
    }
}

/// Counts the bytes that pass it into `tally`. Between TLS and the frame
/// codec, it sees the frames exactly as they cross the connection, before
/// encryption.
private final class ByteCountingHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let tally: ByteTally

    init(_ tally: ByteTally) { self.tally = tally }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        tally.add(received: Self.unwrapInboundIn(data).readableBytes)
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        tally.add(sent: Self.unwrapOutboundIn(data).readableBytes)
        context.write(data, promise: promise)
    }
}

/// A backupd connection like `BackupClient.withConnection`'s, with its
/// frame bytes counted.
enum ByteCountingConnection {
    /// Connects, runs `body` with the client and the connection's byte
    /// counts, and closes the connection.
    static func withClient<T: Sendable>(
        _ settings: ClientSettings, _ body: @Sendable (BackupClient, ByteTally) async throws -> T
    ) async throws -> T {
        let tally = ByteTally()
        let maxFrameBytes = settings.maxFrameBytes
        let channel: NIOAsyncChannel<Frame, Frame> = try await settings.connect { channel in
            try channel.pipeline.syncOperations.addHandler(ByteCountingHandler(tally))
            try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder(maxFrameBytes: maxFrameBytes)))
            try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(FrameEncoder()))
        }
        return try await channel.executeThenClose { inbound, outbound in
            try await BackupClient.withTransport(token: settings.token.revealed, inbound: inbound,
                                                 write: { try await outbound.write(contentsOf: $0) }) { client in
                try await body(client, tally)
            }
        }
    }
}

/// The floor under an RPC's round trip: a TLS 1.3 ping-pong on loopback,
/// with NIO and async/await on both ends. The server runs in this process
/// with backupd's certificate; the client connects as backupd's clients do
/// (`ClientSettings.connect`, TCP_NODELAY, verifying with the CA).
enum PingPong {
    /// Round trips in milliseconds: `count` timed after the warm-up, each
    /// the client sending `requestBytes` in one write and reading until the
    /// server's `responseBytes`, also written at once, have arrived.
    static func measure(certificateChain: String, privateKey: String, caFile: String,
                        requestBytes: Int, responseBytes: Int, count: Int) async throws -> [Double] {
        var tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: try NIOSSLCertificate.fromPEMFile(certificateChain).map { .certificate($0) },
            privateKey: .privateKey(try NIOSSLPrivateKey(file: privateKey, format: .pem)))
        tls.minimumTLSVersion = .tlsv13
        let sslContext = try NIOSSLContext(configuration: tls)
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .bind(host: "127.0.0.1", port: 0) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: sslContext))
                    return try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        guard let port = server.channel.localAddress?.port else { throw BenchError("the ping-pong server has no port") }

        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                try await server.executeThenClose { connections in
                    for try await connection in connections {
                        try await answer(connection, requestBytes: requestBytes, responseBytes: responseBytes)
                        return
                    }
                }
            }
            let settings = try ClientSettings(address: "127.0.0.1:\(port)", token: "", caFile: caFile)
            let client: NIOAsyncChannel<ByteBuffer, ByteBuffer> = try await settings.connect(protocol: nil) { _ in }
            let times = try await client.executeThenClose { inbound, outbound in
                let request = ByteBuffer(repeating: 0x2A, count: requestBytes)
                var responses = inbound.makeAsyncIterator()
                return try await timeRounds(count: count) {
                    try await outbound.write(request)
                    var received = 0
                    while received < responseBytes {
                        guard let bytes = try await responses.next() else {
                            throw BenchError("the ping-pong server closed the connection")
                        }
                        received += bytes.readableBytes
                    }
                }
            }
            try await group.waitForAll()
            return times
        }
    }

    /// The server's side of one connection: `responseBytes` for every
    /// `requestBytes` received, until the client closes.
    private static func answer(_ connection: NIOAsyncChannel<ByteBuffer, ByteBuffer>, requestBytes: Int, responseBytes: Int) async throws {
        try await connection.executeThenClose { inbound, outbound in
            let response = ByteBuffer(repeating: 0x2A, count: responseBytes)
            var pending = 0
            for try await bytes in inbound {
                pending += bytes.readableBytes
                while pending >= requestBytes {
                    pending -= requestBytes
                    try await outbound.write(response)
                }
            }
        }
    }
}
