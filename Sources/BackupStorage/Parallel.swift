import BackupRules
import Dispatch
import Synchronization

/// Runs `body` for every index in `0..<count` on all cores at once and
/// returns the results in index order, or throws the first index's error.
/// For CPU-bound batches (hashing, compressing) inside work that already
/// runs on a thread of its own.
public func concurrentMap<T: Sendable>(_ count: Int, _ body: @Sendable (Int) throws -> T) throws -> [T] {
    let results = Mutex<[Int: Result<T, any Error>]>([:])
    DispatchQueue.concurrentPerform(iterations: count) { index in
        let result = Result { try body(index) }
        results.withLock { $0[index] = result }
    }
    return try results.withLock { done in try (0..<count).map { try done[$0]!.get() } }
}
