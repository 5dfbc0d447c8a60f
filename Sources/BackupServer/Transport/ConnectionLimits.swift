import NIOCore
import Synchronization

/// How long a connection may take at each stage and how many may be open:
/// what keeps slow, silent or numerous clients from holding the server's
/// descriptors and memory.
public struct ConnectionLimits: Sendable {
    /// To finish the TLS handshake.
    public var handshakeTimeout: Duration = .seconds(10)
    /// From the handshake to the connection's first call that authenticates.
    public var authenticationTimeout: Duration = .seconds(10)
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
    public var sharedReceiveBytes = 16 * 1024 * 1024
    /// Of the shared bytes, what the connections of one client address may borrow.
    public var sharedReceiveBytesPerPeer = 8 * 1024 * 1024

    public init() {}
}

/// Counts open connections, in all and by client address, and admits a new
/// one only within the limits. When the server is full, a new connection
/// takes the place of the oldest one that has not yet made an authenticated
/// call, so that clients without a token cannot hold every slot.
final class ConnectionAdmission: Sendable {
    /// An admitted connection, counted until `release`.
    struct Ticket: Sendable {
        fileprivate let number: UInt64
        fileprivate let peer: String
    }

    private struct State {
        var next: UInt64 = 0
        var total = 0
        var byPeer: [String: Int] = [:]
        /// Admitted connections that have not authenticated a call, by admission number, with how to close them.
        var unauthenticated: [UInt64: (peer: String, close: @Sendable () -> Void)] = [:]
        /// Connections closed to make room, whose counts are already gone.
        var evicted: Set<UInt64> = []

        mutating func uncount(_ peer: String) {
            total -= 1
            byPeer[peer, default: 1] -= 1
            if byPeer[peer] == 0 { byPeer[peer] = nil }
        }
    }

    private let limits: ConnectionLimits
    private let state = Mutex(State())
    private let gauge: ConnectionGauge

    init(limits: ConnectionLimits, gauge: ConnectionGauge) {
        self.limits = limits
        self.gauge = gauge
    }

    /// Admits a connection from `peer`, closing the oldest unauthenticated
    /// one if the server is full; nil when `peer` has its share already, or
    /// every open connection has authenticated. `close` closes the new one,
    /// should it have to make room in turn.
    func admit(_ peer: String, close: @escaping @Sendable () -> Void) -> Ticket? {
        let (ticket, evicted): (Ticket?, (@Sendable () -> Void)?) = state.withLock { state in
            guard state.byPeer[peer, default: 0] < limits.maximumConnectionsPerPeer else { return (nil, nil) }
            var evicted: (@Sendable () -> Void)?
            if state.total >= limits.maximumConnections {
                guard let oldest = state.unauthenticated.keys.min(), let victim = state.unauthenticated.removeValue(forKey: oldest) else {
                    return (nil, nil)
                }
                state.uncount(victim.peer)
                state.evicted.insert(oldest)
                evicted = victim.close
            }
            state.next += 1
            state.total += 1
            state.byPeer[peer, default: 0] += 1
            state.unauthenticated[state.next] = (peer, close)
            gauge.admitted = state.total
            return (Ticket(number: state.next, peer: peer), evicted)
        }
        evicted?()
        return ticket
    }

    /// The connection made an authenticated call: it keeps its place.
    func authenticated(_ ticket: Ticket) {
        _ = state.withLock { $0.unauthenticated.removeValue(forKey: ticket.number) }
    }

    func release(_ ticket: Ticket) {
        state.withLock { state in
            state.unauthenticated[ticket.number] = nil
            guard state.evicted.remove(ticket.number) == nil else { return }
            state.uncount(ticket.peer)
            gauge.admitted = state.total
        }
    }
}

/// How many connections a listener holds admitted right now: for tests
/// that wait until every connection they opened is counted (or let go),
/// and for whoever watches the server.
public final class ConnectionGauge: Sendable {
    private let count = Mutex(0)

    public init() {}

    public internal(set) var admitted: Int {
        get { count.withLock { $0 } }
        set { count.withLock { $0 = newValue } }
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
    private let bytes: Int
    private let state: Mutex<State>

    init(bytes: Int, perPeer: Int) {
        self.perPeer = perPeer
        self.bytes = bytes
        self.state = Mutex(State(available: bytes))
    }

    var available: Int { state.withLock { $0.available } }

    /// The bytes lent out now.
    var inUse: Int { bytes - available }

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
