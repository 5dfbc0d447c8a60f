import Foundation

/// A value shared between a test and the threads it starts.
public final class Atomic<Value: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: Value

    public init(_ value: Value) { stored = value }

    public var value: Value {
        get { lock.withLock { stored } }
        set { lock.withLock { stored = newValue } }
    }

    /// Changes the value under the lock, for read-modify-write from several threads.
    public func update(_ change: (inout Value) -> Void) {
        lock.withLock { change(&stored) }
    }
}

/// Runs `body` and fails instead of hanging if it takes longer than
/// `limit`. The body runs in a task of its own that is cancelled then and
/// left behind: a body that ignores cancellation (awaiting another task's
/// value, a child process) cannot hold the test, and so the whole run, forever.
public func within<T: Sendable>(_ limit: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    let work = Task { try await body() }
    let outcome = Atomic<Result<T, any Error>?>(nil)
    return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
        func settle(_ result: Result<T, any Error>) {
            var first = false
            outcome.update { if $0 == nil { $0 = result; first = true } }
            if first { continuation.resume(with: result) }
        }
        let timer = Task {
            guard (try? await Task.sleep(for: limit)) != nil else { return }  // the work ended first
            work.cancel()
            settle(.failure(TestSupportError("did not finish within \(limit)")))
        }
        Task {
            settle(await work.result)
            timer.cancel()
        }
    }
}
