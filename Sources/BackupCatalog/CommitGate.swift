import BackupRules
import BackupPostgres
import Synchronization

/// Decides, for one call with a deadline, whether its change commits or its
/// deadline wins: exactly one of them does. A transaction asks just before
/// COMMIT (`beginCommit`); the dispatcher's timer asks when the deadline
/// passes (`expire`). So a call that answers DEADLINE_EXCEEDED changed
/// nothing, and a call whose change committed answers with its result,
/// however late.
public final class CommitGate: Sendable {
    private enum State { case open, committing, expired }
    private let state = Mutex(State.open)

    /// The gate of the call the current task serves, if it has a deadline.
    @TaskLocal public static var current: CommitGate?

    public init() {}

    /// Whether a commit may go ahead; false once the deadline has passed.
    public func beginCommit() -> Bool {
        state.withLock { state in
            guard state != .expired else { return false }
            state = .committing
            return true
        }
    }

    /// Whether the deadline may end the call now; false once a commit has
    /// begun, when the call's own result must be awaited instead.
    public func expire() -> Bool {
        state.withLock { state in
            guard state != .committing else { return false }
            state = .expired
            return true
        }
    }
}

extension ConnectionPool {
    /// A transaction of the call being served: inside a call with a deadline
    /// (`CommitGate.current`) it commits only if the deadline has not passed;
    /// otherwise it is rolled back and the call hears DEADLINE_EXCEEDED with
    /// nothing changed.
    @discardableResult
    func callTransaction<T: Sendable>(idempotent: Bool = false,
                                      _ body: @escaping @Sendable (PostgresConnection) throws -> T) async throws -> T {
        let gate = CommitGate.current
        let requestID = CallScope.requestID
        return try await transaction(idempotent: idempotent, beforeCommit: {
            if let gate, !gate.beginCommit() {
                throw BackupError.deadlineExceeded("the call's deadline passed before its change was committed; nothing was changed")
            }
        }) { connection in
            // On the pool's thread, outside the call's task: the request id is bound again for what the body queues.
            try CallScope.$requestID.withValue(requestID) { try body(connection) }
        }
    }
}

/// The call a catalog change is made for. Jobs it queues keep its request
/// id, and their log lines carry it, so an operator finds a job's lines
/// from the call's access-log line (and back).
public enum CallScope {
    /// Empty outside a call (the scheduler's nightly backups).
    @TaskLocal public static var requestID = ""
}
