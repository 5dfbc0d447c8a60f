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
    /// Calls one connection may have open at once; more get RESOURCE_EXHAUSTED.
    public var maximumOpenCalls = 128
    /// Bytes of received frames a connection may hold before its calls take
    /// them without borrowing from the shared pool: room for any unary call.
    public var receiveWindow = 64 * 1024
    /// Bytes all connections together may borrow beyond their windows.
    public var sharedReceiveBytes = 32 * 1024 * 1024
    /// Of the shared bytes, what the connections of one client address may borrow.
    public var sharedReceiveBytesPerPeer = 8 * 1024 * 1024

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

/// The bytes that connections may hold beyond their own windows, shared by
/// all and capped per client address, so that many connections each sending
/// a large frame cannot take the server's memory with them. A connection
/// that cannot borrow stops reading until bytes come back.
final class ReceivePool: Sendable {
    private struct State {
        var available: Int
        var byPeer: [String: Int] = [:]
        var waiting: [ObjectIdentifier: @Sendable () -> Void] = [:]
    }

    private let perPeer: Int
    private let state: Mutex<State>

    init(bytes: Int, perPeer: Int) {
        self.perPeer = perPeer
        self.state = Mutex(State(available: bytes))
    }

    var available: Int { state.withLock { $0.available } }

    /// Lends `bytes` to a connection of `peer`, or keeps `wake` to call once
    /// bytes come back, when the borrower should ask again.
    func borrow(_ bytes: Int, peer: String, borrower: ObjectIdentifier, wake: @escaping @Sendable () -> Void) -> Bool {
        state.withLock { state in
            let peerHolds = state.byPeer[peer, default: 0]
            guard bytes <= state.available, peerHolds + bytes <= perPeer else {
                state.waiting[borrower] = wake
                return false
            }
            state.available -= bytes
            state.byPeer[peer] = peerHolds + bytes
            return true
        }
    }

    func giveBack(_ bytes: Int, peer: String) {
        let waiting = state.withLock { state in
            state.available += bytes
            state.byPeer[peer, default: bytes] -= bytes
            if state.byPeer[peer] == 0 { state.byPeer[peer] = nil }
            defer { state.waiting.removeAll() }
            return Array(state.waiting.values)
        }
        waiting.forEach { $0() }
    }

    /// A borrower that closed no longer waits.
    func forget(_ borrower: ObjectIdentifier) {
        _ = state.withLock { $0.waiting.removeValue(forKey: borrower) }
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
