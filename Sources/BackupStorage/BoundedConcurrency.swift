/// Runs `work` for each of `items`, at most `inFlight` at once (requests to
/// an object store, say); returns the results in the order they finished.
/// The first failure cancels the rest and is thrown.
public func concurrently<Item: Sendable, Result: Sendable>(
    _ items: [Item], inFlight: Int, _ work: @escaping @Sendable (Item) async throws -> Result
) async throws -> [Result] {
    try await withThrowingTaskGroup(of: Result.self) { group in
        var next = items.makeIterator()
        for _ in 0..<max(1, inFlight) {
            guard let item = next.next() else { break }
            group.addTask { try await work(item) }
        }
        var results: [Result] = []
        while let result = try await group.next() {
            results.append(result)
            if let item = next.next() { group.addTask { try await work(item) } }
        }
        return results
    }
}
