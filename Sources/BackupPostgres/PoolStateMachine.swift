/// The connection pool's rules as a pure state machine: events in, actions
/// out, with no I/O, no lock and no clock read (the time is an argument), so
/// that first-come order, validation of idle connections, cancellation and
/// closing are rows of a table test. `ConnectionPool` holds it in a lock and
/// carries out what it returns outside the lock.
///
/// A lease is answered with a grant: a connection to use, a connection slot
/// to fill by connecting, or an idle connection to check first. Whoever is
/// granted a slot or a check reports back (`connected`, `connectFailed`,
/// `validated`), so the I/O runs in the task that asked, never in the pool.
///
///     lease ──idle, fresh──▶ lend
///       │  ──idle, stale──▶ validate ──healthy──▶ lend
///       │                      └──dead──▶ (drop it, serve the same lease again, first in line)
///       │  ──room──▶ connect ──connected──▶ lend
///       │                └──failed──▶ (the lease fails; the slot goes to the first waiter)
///       └──full──▶ wait (first come, first served) ──cancelled──▶ fail
///
/// A released connection goes straight to the first waiter, so a woken
/// waiter can never lose it to a newcomer.
public struct PoolStateMachine: Sendable {
    public typealias RequestID = UInt64
    public typealias ConnectionID = UInt64
    public typealias Instant = ContinuousClock.Instant

    /// What a lease is given.
    public enum Grant: Equatable, Sendable {
        /// Use this connection.
        case lend(ConnectionID)
        /// Open a connection (the pool has room for it) and report `connected` or `connectFailed`.
        case connect(ConnectionID)
        /// This connection sat idle long enough to have died: check it and report `validated`.
        case validate(ConnectionID)
    }

    public enum Failure: Error, Equatable, Sendable {
        case closed, cancelled
    }

    public enum Action: Equatable, Sendable {
        case grant(Grant, to: RequestID)
        /// The lease is refused; the one that asked is told why.
        case fail(RequestID, Failure)
        /// Close this connection and forget it.
        case discard(ConnectionID)
        /// The pool is closed and every connection gone.
        case closed
    }

    public let maximumConnections: Int
    /// A connection idle this long is checked before it is lent out.
    public let validateAfterIdle: Duration

    /// Connections that exist, idle or not (being opened, checked or lent).
    public private(set) var open = 0
    /// Idle connections, the most recently used last (lent first: the others may then time out on the server, not in use).
    private var idle: [(connection: ConnectionID, since: Instant)] = []
    /// Leases waiting, first come first served.
    public private(set) var waiting: [RequestID] = []
    private var nextConnection: ConnectionID = 0
    public private(set) var closing = false

    public init(maximumConnections: Int, validateAfterIdle: Duration) {
        precondition(maximumConnections > 0, "a pool needs room for one connection")
        self.maximumConnections = maximumConnections
        self.validateAfterIdle = validateAfterIdle
    }

    public var idleCount: Int { idle.count }

    /// A task asks for a connection.
    public mutating func lease(_ request: RequestID, now: Instant) -> [Action] {
        guard !closing else { return [.fail(request, .closed)] }
        if !waiting.isEmpty {  // others were first
            waiting.append(request)
            return []
        }
        return serve(request, now: now, firstInLine: false)
    }

    /// The connection opened for `request`.
    public mutating func connected(_ connection: ConnectionID, for request: RequestID) -> [Action] {
        guard !closing else { return [.fail(request, .closed)] + drop(connection) }
        return [.grant(.lend(connection), to: request)]
    }

    /// Opening a connection failed: the one that tried fails with its own error, and the slot goes to the first waiter.
    public mutating func connectFailed(now: Instant) -> [Action] {
        open -= 1
        return closing ? closedIfEmpty() : serveFirstWaiter(now: now)
    }

    /// The check of an idle connection granted to `request` ended.
    public mutating func validated(_ connection: ConnectionID, for request: RequestID, healthy: Bool, now: Instant) -> [Action] {
        if closing { return [.fail(request, .closed)] + drop(connection) }
        if healthy { return [.grant(.lend(connection), to: request)] }
        open -= 1
        return [.discard(connection)] + serve(request, now: now, firstInLine: true)
    }

    /// A lent connection comes back; `reusable` when it is healthy and outside a transaction.
    public mutating func released(_ connection: ConnectionID, reusable: Bool, now: Instant) -> [Action] {
        if closing { return drop(connection) }
        guard reusable else {
            open -= 1
            return [.discard(connection)] + serveFirstWaiter(now: now)
        }
        if !waiting.isEmpty {
            return [.grant(.lend(connection), to: waiting.removeFirst())]
        }
        idle.append((connection, now))
        return []
    }

    /// The task behind `request` was cancelled: a waiting lease leaves the line; one already served goes on.
    public mutating func cancelled(_ request: RequestID) -> [Action] {
        guard let index = waiting.firstIndex(of: request) else { return [] }
        waiting.remove(at: index)
        return [.fail(request, .cancelled)]
    }

    /// Shutdown: waiting leases fail, idle connections close, lent ones close as they come back.
    public mutating func close() -> [Action] {
        guard !closing else { return [] }
        closing = true
        let failed = waiting.map { Action.fail($0, .closed) }
        waiting.removeAll()
        let discarded = idle.map { Action.discard($0.connection) }
        open -= idle.count
        idle.removeAll()
        return failed + discarded + closedIfEmpty()
    }

    private mutating func serve(_ request: RequestID, now: Instant, firstInLine: Bool) -> [Action] {
        if let (connection, since) = idle.popLast() {
            let grant: Grant = since.duration(to: now) >= validateAfterIdle ? .validate(connection) : .lend(connection)
            return [.grant(grant, to: request)]
        }
        if open < maximumConnections {
            open += 1
            nextConnection += 1
            return [.grant(.connect(nextConnection), to: request)]
        }
        if firstInLine { waiting.insert(request, at: 0) } else { waiting.append(request) }
        return []
    }

    private mutating func serveFirstWaiter(now: Instant) -> [Action] {
        guard !waiting.isEmpty else { return [] }
        return serve(waiting.removeFirst(), now: now, firstInLine: true)
    }

    private mutating func drop(_ connection: ConnectionID) -> [Action] {
        open -= 1
        return [.discard(connection)] + closedIfEmpty()
    }

    private func closedIfEmpty() -> [Action] {
        closing && open == 0 ? [.closed] : []
    }
}
