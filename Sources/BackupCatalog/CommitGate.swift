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
