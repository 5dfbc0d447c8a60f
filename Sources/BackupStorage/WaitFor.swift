import Dispatch
import Synchronization

/// Runs async work (a request to the object store, a catalog call) from a
/// thread that may block, a job's, and waits for its result: the blob
/// store's calls are synchronous, the object store's client and the catalog
/// are not. Never call it from a task or an event loop.
public func waitFor<T: Sendable>(_ work: @escaping @Sendable () async throws -> T) throws -> T {
    let done = DispatchSemaphore(value: 0)
    let result = Mutex<Result<T, any Error>?>(nil)
    Task {
        let outcome: Result<T, any Error>
        do { outcome = .success(try await work()) } catch { outcome = .failure(error) }
        result.withLock { $0 = outcome }
        done.signal()
    }
    done.wait()
    return try result.withLock { $0! }.get()
}
