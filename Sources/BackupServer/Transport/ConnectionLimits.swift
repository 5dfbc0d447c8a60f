import NIOCore
import Synchronization

/// How long a connection may take at each stage and how many may be open:
/// what keeps slow, silent or numerous clients from holding the server's
/// descriptors and memory.
public struct ConnectionLimits: Sendable {
    /// To finish the TLS handshake.
    public var handshakeTimeout: Duration = .seconds(10)
    /// From a frame's first byte to its last.
    public var partialFrameTimeout: Duration = .seconds(30)
    /// With no call open.
    public var idleTimeout: Duration = .seconds(300)
    public var maximumConnections = 1024
    /// From one client address.
    public var maximumConnectionsPerPeer = 128

    public init() {}
}

/// Counts open connections, in all and by client address, and admits a new
/// one only within the limits.
final class ConnectionAdmission: Sendable {
    private struct Counts {
        var total = 0
        var byPeer: [String: Int] = [:]
    }

    private let limits: ConnectionLimits
    private let counts = Mutex(Counts())

    init(limits: ConnectionLimits) {
        self.limits = limits
    }

    /// Whether `peer` may open another connection; if so it is counted until `release`.
    func admit(_ peer: String) -> Bool {
        counts.withLock { counts in
            guard counts.total < limits.maximumConnections, counts.byPeer[peer, default: 0] < limits.maximumConnectionsPerPeer else {
                return false
            }
            counts.total += 1
            counts.byPeer[peer, default: 0] += 1
            return true
        }
    }

    func release(_ peer: String) {
        counts.withLock { counts in
            counts.total -= 1
            counts.byPeer[peer, default: 1] -= 1
            if counts.byPeer[peer] == 0 { counts.byPeer[peer] = nil }
        }
    }
}

/// Closes a connection whose frame has begun but not ended within the
/// timeout: a client that sends half a frame and falls silent. The timer
/// runs from the first byte of the frame under way, so a client that keeps
/// completing frames is never cut off, however long it streams. It follows
/// the framing (a 4-byte length, then the body) without buffering anything,
/// ahead of the frame decoder.
final class PartialFrameTimeout: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let timeout: TimeAmount
    private var lengthBytes: [UInt8] = []
    private var bodyRemaining = 0
    private var timer: Scheduled<Void>?

    init(timeout: Duration) {
        self.timeout = TimeAmount(timeout)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        var completedAFrame = false
        while bytes.readableBytes > 0 {
            if bodyRemaining > 0 {
                let skipped = min(bodyRemaining, bytes.readableBytes)
                bytes.moveReaderIndex(forwardBy: skipped)
                bodyRemaining -= skipped
                completedAFrame = completedAFrame || bodyRemaining == 0
            } else if let byte = bytes.readInteger(as: UInt8.self) {
                lengthBytes.append(byte)
                if lengthBytes.count == 4 {
                    bodyRemaining = lengthBytes.reduce(0) { $0 << 8 | Int($1) }
                    lengthBytes.removeAll()
                    completedAFrame = completedAFrame || bodyRemaining == 0
                }
            }
        }
        let partial = bodyRemaining > 0 || !lengthBytes.isEmpty
        // The frame the timer was for is complete: a frame still under way began in this read.
        if completedAFrame || !partial {
            timer?.cancel()
            timer = nil
        }
        if partial && timer == nil {
            let channel = context.channel
            timer = context.eventLoop.scheduleTask(in: timeout) { channel.close(promise: nil) }
        }
        context.fireChannelRead(data)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
    }
}

extension TimeAmount {
    init(_ duration: Duration) {
        self = .nanoseconds(Int64(duration.components.seconds) * 1_000_000_000 + duration.components.attoseconds / 1_000_000_000)
    }
}

extension Duration {
    /// Whole milliseconds, as the wire reports durations.
    var milliseconds: UInt32 {
        UInt32(clamping: components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000)
    }
}
