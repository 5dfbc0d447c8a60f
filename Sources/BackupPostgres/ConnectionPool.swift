import BackupRules
import NIOPosix
import Synchronization

/// What a pool reports as it lends connections, for metrics: how long each
/// lease waited, how many wait, and connections opened and closed.
public protocol ConnectionPoolObserver: Sendable {
    func leaseGranted(waited: Duration)
    func leaseQueued(waiting: Int)
    func connectionOpened()
    func connectionClosed()
}

/// A bounded pool of libpq connections. Every use runs on a thread of an
/// `NIOThreadPool`, so blocking libpq calls never hold an event loop or a
/// thread of Swift's cooperative pool. Its rules are `PoolStateMachine`'s,
/// held in a lock; the connecting, checking and closing that it asks for run
/// outside the lock, in the task that asked for a connection.
public final class ConnectionPool: Sendable {
    public typealias RequestID = PoolStateMachine.RequestID
    public typealias ConnectionID = PoolStateMachine.ConnectionID

    /// The catalog's libpq connection string: it may carry a password.
    public let connectionString: Secret<String>
    public let threadPool: NIOThreadPool
    private let maximumConnections: Int
    private let clock: any ServiceClock
    private let observer: (any ConnectionPoolObserver)?
    private let state: Mutex<State>

    /// What a lease is handed by the machine, with the connection it names.
    private enum Lease {
        case use(ConnectionID, PostgresConnection)
        case connect(ConnectionID)
        case check(ConnectionID, PostgresConnection)
    }

    private struct State {
        var machine: PoolStateMachine
        var connections: [ConnectionID: PostgresConnection] = [:]
        /// Leases suspended until the machine grants them something.
        var waiting: [RequestID: CheckedContinuation<Lease, any Error>] = [:]
        /// `close` calls waiting for the lent connections to come back.
        var closeWaiters: [CheckedContinuation<Void, Never>] = []
        var nextRequest: RequestID = 0
    }

    /// `validateAfterIdle`: a connection idle this long is checked
    /// (`SELECT 1`) before it is lent out: after a server restart or
    /// failover, idle connections are dead but look healthy until used.
    public init(connectionString: String, maximumConnections: Int, threadPool: NIOThreadPool,
                validateAfterIdle: Duration = .seconds(10), clock: any ServiceClock = ContinuousClock(),
                observer: (any ConnectionPoolObserver)? = nil) {
        self.connectionString = Secret(connectionString)
        self.threadPool = threadPool
        self.maximumConnections = maximumConnections
        self.clock = clock
        self.observer = observer
        state = Mutex(State(machine: PoolStateMachine(maximumConnections: maximumConnections, validateAfterIdle: validateAfterIdle)))
    }

    /// Connections open, lent out, and leases waiting for one, now: for metrics.
    public var usage: (open: Int, leased: Int, waiting: Int) {
        state.withLock { ($0.machine.open, $0.machine.open - $0.machine.idleCount, $0.machine.waiting.count) }
    }

    /// Runs `body` with a connection of its own. A connection left broken or
    /// inside a transaction is closed rather than reused.
    ///
    /// A pooled connection the server ended while it sat idle (a restart,
    /// `pg_terminate_backend`) fails on its first statement, before anything
    /// ran: `body` then runs again on another connection (each dead one is
    /// dropped, so this ends), and the caller never hears of it. When the
    /// connection is lost after statements ran, `body` runs once more on a
    /// fresh connection only if it is `idempotent` (reads, and writes that
    /// set a state rather than add to it): running it twice must be harmless,
    /// as a lost reply may hide a commit.
    @discardableResult
    public func withConnection<T: Sendable>(idempotent: Bool = false,
                                            _ body: @escaping @Sendable (PostgresConnection) throws -> T) async throws -> T {
        var retriedAfterWork = false
        for attempt in 1... {
            let (id, connection) = try await checkOut()
            let before = connection.completedStatements
            do {
                let value = try await threadPool.runIfActive { try body(connection) }
                checkIn(id, connection)
                return value
            } catch let error as PostgresError where attempt <= maximumConnections + 1 && !connection.isHealthy {
                checkIn(id, connection)  // closed, being broken
                let nothingRan = connection.completedStatements == before
                guard nothingRan || (idempotent && !retriedAfterWork) else { throw error }
                retriedAfterWork = retriedAfterWork || !nothingRan
                // The loop takes another connection: a new one at the latest once every dead one is gone.
            } catch {
                checkIn(id, connection)
                throw error
            }
        }
        preconditionFailure("unreachable")
    }

    /// Runs `body` in a transaction on a connection of its own, retried as
    /// `withConnection` says. `beforeCommit` runs last inside the
    /// transaction; throwing from it rolls the transaction back.
    @discardableResult
    public func transaction<T: Sendable>(idempotent: Bool = false, beforeCommit: @escaping @Sendable () throws -> Void = {},
                                         _ body: @escaping @Sendable (PostgresConnection) throws -> T) async throws -> T {
        try await withConnection(idempotent: idempotent) { connection in
            try connection.transaction {
                let value = try body(connection)
                try beforeCommit()
                return value
            }
        }
    }

    /// A connection of the pool's database outside the pool, owned by the
    /// caller (for session state such as a lock, that must be known lost
    /// when the connection is); it closes when the last handle to it goes.
    public func dedicatedConnection() async throws -> ConnectionHandle {
        try await ConnectionHandle.connect(connectionString.revealed, threadPool: threadPool)
    }

    /// Closes the pool, at shutdown: leases asked for from now on, and the
    /// ones waiting, fail; idle connections close at once, lent ones as they
    /// come back; returns once every connection is closed.
    public func close() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            apply { state in
                state.closeWaiters.append(continuation)
                let actions = state.machine.close()
                return actions.isEmpty && state.machine.open == 0 ? actions + [.closed] : actions
            }
        }
    }

    static let closedError = PostgresError(sqlState: nil, message: "the connection pool is closed")

    /// A connection for the calling task, in first-come order; the I/O the
    /// machine asks for on the way (opening one, checking an idle one) runs here.
    private func checkOut() async throws -> (ConnectionID, PostgresConnection) {
        let request = state.withLock { state in
            state.nextRequest += 1
            return state.nextRequest
        }
        let asked = clock.now
        return try await withTaskCancellationHandler {
            var lease = try await step(request) { state, now in
                Task.isCancelled ? [.fail(request, .cancelled)] : state.machine.lease(request, now: now)
            }
            while true {
                switch lease {
                case .use(let id, let connection):
                    observer?.leaseGranted(waited: asked.duration(to: clock.now))
                    return (id, connection)
                case .connect(let id):
                    let connectionString = self.connectionString
                    let connection: PostgresConnection
                    do {
                        connection = try await threadPool.runIfActive { try PostgresConnection(connectionString.revealed) }
                    } catch {
                        apply { state in state.machine.connectFailed(now: clock.now) }
                        throw error
                    }
                    observer?.connectionOpened()
                    lease = try await step(request) { state, _ in
                        state.connections[id] = connection
                        return state.machine.connected(id, for: request)
                    }
                case .check(let id, let connection):
                    let healthy = (try? await threadPool.runIfActive { try connection.query("SELECT 1") }) != nil
                    lease = try await step(request) { state, now in
                        state.machine.validated(id, for: request, healthy: healthy, now: now)
                    }
                }
            }
        } onCancel: {
            apply { $0.machine.cancelled(request) }
        }
    }

    private func checkIn(_ id: ConnectionID, _ connection: PostgresConnection) {
        let reusable = connection.isHealthy && !connection.isInTransaction
        apply { $0.machine.released(id, reusable: reusable, now: clock.now) }
    }

    /// Feeds an event for `request` and waits for what the machine grants it (at once, or when its turn comes).
    private func step(_ request: RequestID,
                      _ event: @escaping (inout State, PoolStateMachine.Instant) -> [PoolStateMachine.Action]) async throws -> Lease {
        try await withCheckedThrowingContinuation { continuation in
            apply { state in
                state.waiting[request] = continuation
                let actions = event(&state, clock.now)
                if state.machine.waiting.last == request { observer?.leaseQueued(waiting: state.machine.waiting.count) }
                return actions
            }
        }
    }

    /// Runs an event on the machine inside the lock, then carries out its actions outside it.
    private func apply(_ event: (inout State) -> [PoolStateMachine.Action]) {
        let effects: [() -> Void] = state.withLock { state in
            event(&state).map { action in
                switch action {
                case .grant(let grant, let request):
                    guard let continuation = state.waiting.removeValue(forKey: request) else { return {} }
                    let lease: Lease = switch grant {
                    case .lend(let id): .use(id, state.connections[id]!)
                    case .connect(let id): .connect(id)
                    case .validate(let id): .check(id, state.connections[id]!)
                    }
                    return { continuation.resume(returning: lease) }
                case .fail(let request, let failure):
                    guard let continuation = state.waiting.removeValue(forKey: request) else { return {} }
                    let error: any Error = failure == .closed ? Self.closedError : CancellationError()
                    return { continuation.resume(throwing: error) }
                case .discard(let id):
                    let connection = state.connections.removeValue(forKey: id)
                    return { [observer] in
                        withExtendedLifetime(connection) {}  // its last reference: it closes here, outside the lock
                        observer?.connectionClosed()
                    }
                case .closed:
                    let waiters = state.closeWaiters
                    state.closeWaiters.removeAll()
                    return { waiters.forEach { $0.resume() } }
                }
            }
        }
        effects.forEach { $0() }
    }
}

/// A connection held by one task across awaits; every call on it runs on the
/// thread pool, one at a time.
public struct ConnectionHandle: Sendable {
    public let connection: PostgresConnection
    let threadPool: NIOThreadPool

    public init(_ connection: PostgresConnection, threadPool: NIOThreadPool) {
        self.connection = connection
        self.threadPool = threadPool
    }

    /// Opens a connection on the thread pool (libpq's connect blocks, up to its `connect_timeout`).
    public static func connect(_ connectionString: String, threadPool: NIOThreadPool) async throws -> ConnectionHandle {
        ConnectionHandle(try await threadPool.runIfActive { try PostgresConnection(connectionString) }, threadPool: threadPool)
    }

    /// Runs `body` on the thread pool, one body at a time on this connection.
    @discardableResult
    public func run<T: Sendable>(_ body: @escaping @Sendable (PostgresConnection) throws -> T) async throws -> T {
        let connection = self.connection
        return try await threadPool.runIfActive { try connection.exclusive.withLock { _ in try body(connection) } }
    }

    /// Runs `body` on the thread pool; cancelling the calling task asks the
    /// server to cancel the query running then, so a task waiting on a slow
    /// or stuck query ends promptly. For connections of one owner only (an
    /// app session), never for pooled ones: a late cancel request could
    /// reach the next borrower's query.
    @discardableResult
    public func runCancellable<T: Sendable>(_ body: @escaping @Sendable (PostgresConnection) throws -> T) async throws -> T {
        let connection = self.connection
        return try await withTaskCancellationHandler {
            try await threadPool.runIfActive { try connection.exclusive.withLock { _ in try body(connection) } }
        } onCancel: {
            connection.cancelRunningQuery()
        }
    }
}
