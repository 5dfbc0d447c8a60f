import Foundation
import NIOPosix

/// Runs blocking per-file work (hashing, copying, linking) on the thread
/// pool in batches, `width` batches at a time (default: one per core), handing each finished batch's
/// results to `completed` on the calling task. Cancellation stops it between
/// batches.
func inBatches<Item: Sendable, Result: Sendable>(
    _ items: [Item], size: Int = 64, width: Int = ProcessInfo.processInfo.activeProcessorCount, threadPool: NIOThreadPool,
    _ work: @escaping @Sendable (Item) throws -> Result,
    completed: ([Result]) async throws -> Void
) async throws {
    let batches = stride(from: 0, to: items.count, by: size).map { Array(items[$0..<min($0 + size, items.count)]) }
    try await withThrowingTaskGroup(of: [Result].self) { group in
        var pending = batches.makeIterator()
        func startNext() -> Bool {
            guard let batch = pending.next() else { return false }
            group.addTask { try await threadPool.runIfActive { try batch.map(work) } }
            return true
        }
        for _ in 0..<max(1, width) where !startNext() { break }
        while let results = try await group.next() {
            try await completed(results)
            _ = startNext()
        }
    }
}
