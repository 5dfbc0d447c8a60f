import BackupCatalog
import BackupRules
import BackupStorage
import Foundation
import NIOPosix

/// Removes the blobs no snapshot refers to, beside running jobs: the
/// catalog says which rows are unreferenced and claims them, the store
/// removes their content, the catalog forgets them (`Catalog+Blobs`). Then
/// the content the store holds that no row knows and that was last written
/// or reused before the fence goes the same way: what failed jobs stored
/// but never recorded, and the writes a process that died left unfinished.
/// No catalog connection is held while the store works.
struct BlobCollector: Sendable {
    let catalog: Catalog
    let store: any BlobStore
    let threadPool: NIOThreadPool
    /// How many blobs are claimed, removed and forgotten at a time: a job
    /// storing content a collection claimed waits for its batch, not for
    /// the whole collection.
    static let batch = 1000
    /// How much older than the fence unrecorded content must look to go:
    /// an object store keeps an object's time in whole seconds, and the
    /// clocks of processes sharing a store are a little apart. Found in CI
    /// once collection ran beside the claim loop: a job claimed just after a
    /// collection read a fence of no job wrote an object at 24.7 s, its time
    /// read 24 s, before the collection's 24.5 s, and the collection took
    /// it for what a failed job left.
    static let clockMargin: TimeInterval = 2

    /// Returns how many blobs went.
    func collect() async throws -> Int {
        // A job claimed after the fence is read writes after this instant.
        let beforeFence = Date()
        var (unreferenced, fenceAge) = try await catalog.claimUnreferencedBlobs(limit: Self.batch)
        var removed = try await remove(unreferenced)
        while unreferenced.count == Self.batch {
            unreferenced = try await catalog.claimUnreferencedBlobs(limit: Self.batch).claimed
            removed += try await remove(unreferenced)
        }
        // The fence on this process's clock (processes sharing a store keep their clocks in step with the catalog's).
        let fenceSeconds = Double(fenceAge.components.seconds) + Double(fenceAge.components.attoseconds) / 1e18
        let cutoff = beforeFence.addingTimeInterval(-fenceSeconds - Self.clockMargin)
        let store = self.store
        let stored = try await threadPool.runIfActive {
            _ = try store.dropAbandonedWrites(startedBefore: cutoff)
            return try store.storedHashes(unusedSince: cutoff)
        }
        for start in stride(from: 0, to: stored.count, by: Self.batch) {
            let claimed = try await catalog.claimUnrecordedBlobs(Array(stored[start..<min(start + Self.batch, stored.count)]))
            removed += try await remove(claimed)
        }
        return removed
    }

    /// Removes the content of a batch of claimed blobs, then forgets them;
    /// the claims of what could not be removed are given back. Under object
    /// lock, an object the store refused to remove because it retains it
    /// (the catalog's date behind the store's: a catalog restored from its
    /// own backup, say) is no failure: its date is recorded, and collection
    /// waits for it (helper finding: the refusal stopped every collection).
    private func remove(_ claimed: [ContentHash]) async throws -> Int {
        guard !claimed.isEmpty else { return 0 }
        let store = self.store
        let (gone, failure) = try await threadPool.runIfActive { store.remove(all: claimed) }
        try await catalog.forgetCollectedBlobs(gone)
        guard let failure else { return gone.count }
        let left = Array(Set(claimed).subtracting(gone))
        var retained = 0
        if let retaining = store.retaining {
            for name in left {
                guard let until = try? await retaining.retainedUntil(name), until > Date() else { continue }
                try await catalog.recordRetention(of: [name], until: until, completing: nil)
                retained += 1
            }
        }
        try await catalog.releaseBlobClaims(left)
        guard retained == left.count else { throw failure }
        return gone.count
    }
}
