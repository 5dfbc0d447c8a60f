import BackupRules
import NIOPosix

/// A bounded pool of libpq connections. Every use runs on a thread of an
/// `NIOThreadPool`, so blocking libpq calls never hold an event loop or a
/// thread of Swift's cooperative pool.
public actor ConnectionPool {
    /// The catalog's libpq connection string: it may carry a password.
    public let connectionString: Secret<String>
    private let maximumConnections: Int
    public let threadPool: NIOThreadPool
    /// A connection idle this long is checked (`SELECT 1`) before it is lent
    /// out: after a server restart or failover, idle connections are dead
    /// but look healthy until used.
    private let validateAfterIdle: Duration
    private var idle: [(connection: PostgresConnection, since: ContinuousClock.Instant)] = []
    private var open = 0
    /// Tasks waiting for a connection, first come first served; a cancelled
    /// one leaves the queue at once (its call's deadline passed, say).
    private var waiters: [(number: UInt64, continuation: CheckedContinuation<Void, any Error>)] = []
    private var nextWaiter: UInt64 = 0
    private var closing = false
    /// `close` waiting for the lent connections.
    private var allReturned: [CheckedContinuation<Void, Never>] = []

    public init(connectionString: String, maximumConnections: Int, threadPool: NIOThreadPool,
                validateAfterIdle: Duration = .seconds(10)) {
        self.connectionString = Secret(connectionString)
        self.maximumConnections = maximumConnections
        self.threadPool = threadPool
        self.validateAfterIdle = validateAfterIdle
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
            let connection = try await checkOut()
            let before = connection.completedStatements
            do {
                let value = try await threadPool.runIfActive { try body(connection) }
                checkIn(connection)
                return value
            } catch let error as PostgresError where attempt <= maximumConnections + 1 && !connection.isHealthy {
                checkIn(connection)  // closed, being broken
                let nothingRan = connection.completedStatements == before
                guard nothingRan || (idempotent && !retriedAfterWork) else { throw error }
                retriedAfterWork = retriedAfterWork || !nothingRan
                // The loop takes another connection: a new one at the latest once every dead one is gone.
            } catch {
                checkIn(connection)
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
    public nonisolated func dedicatedConnection() async throws -> ConnectionHandle {
        try await ConnectionHandle.connect(connectionString.revealed, threadPool: threadPool)
    }

    /// Closes the pool, at shutdown: leases asked for from now on, and the
    /// ones waiting, fail; idle connections close at once, lent ones as they
    /// come back; returns once every connection is closed.
    public func close() async {
        closing = true
        open -= idle.count
        idle.removeAll()
        let waiting = waiters
        waiters.removeAll()
        waiting.forEach { $0.continuation.resume(throwing: Self.closedError) }
        while open > 0 {
            await withCheckedContinuation { allReturned.append($0) }
        }
    }

    private static let closedError = PostgresError(sqlState: nil, message: "the connection pool is closed")

    private func checkOut() async throws -> PostgresConnection {
        while true {
            guard !closing else { throw Self.closedError }
            if let (connection, since) = idle.popLast() {
                guard ContinuousClock.now - since >= validateAfterIdle else { return connection }
                if (try? await threadPool.runIfActive { try connection.query("SELECT 1") }) != nil { return connection }
                open -= 1  // dead: drop it and take or make another
                continue
            }
            if open < maximumConnections {
                open += 1
                do {
                    let connectionString = self.connectionString
                    return try await threadPool.runIfActive { try PostgresConnection(connectionString.revealed) }
                } catch {
                    open -= 1
                    wakeOne()
                    throw error
                }
            }
            nextWaiter += 1
            let number = nextWaiter
            try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                    if Task.isCancelled {
                        continuation.resume(throwing: CancellationError())
                    } else {
                        waiters.append((number, continuation))
                    }
                }
            } onCancel: {
                Task { await self.stopWaiting(number) }
            }
        }
    }

    private func checkIn(_ connection: PostgresConnection) {
        if closing {
            open -= 1
            if open == 0 {
                allReturned.forEach { $0.resume() }
                allReturned.removeAll()
            }
            return
        }
        if connection.isHealthy && !connection.isInTransaction {
            idle.append((connection, ContinuousClock.now))
        } else {
            open -= 1
        }
        wakeOne()
    }

    private func wakeOne() {
        if !waiters.isEmpty { waiters.removeFirst().continuation.resume() }
    }

    private func stopWaiting(_ number: UInt64) {
        guard let index = waiters.firstIndex(where: { $0.number == number }) else { return }
        waiters.remove(at: index).continuation.resume(throwing: CancellationError())
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
