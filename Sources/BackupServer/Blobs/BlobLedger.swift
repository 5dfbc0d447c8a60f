import BackupCatalog
import BackupRules
import BackupStorage
import NIOPosix

/// Records the blobs a running job stores or reuses, marking each used now,
/// so that collection, which runs beside jobs, keeps them until the job
/// references them (see `Catalog.markBlobsUsed`). A blob is checked to be
/// in the store after it is marked: one collected just before (its last
/// reference deleted as the job ran), or being collected, fails the job,
/// which can be run again, rather than a backup referencing nothing.
struct BlobLedger: Sendable {
    let catalog: Catalog
    /// The store as the job sees it: each copy it reuses is marked used in
    /// the catalog first (`ReuseClaims`). The job stores through this.
    let store: any BlobStore
    let threadPool: NIOThreadPool

    /// How often a reuse looks again at a copy a collection is removing, and for how long.
    static let collectionPoll = Duration.milliseconds(100)
    static let collectionWait = Duration.seconds(60)

    /// `clock` paces the wait for a collection removing a copy the job would reuse.
    init(catalog: Catalog, store: any BlobStore, threadPool: NIOThreadPool, clock: any ServiceClock) {
        self.catalog = catalog
        self.store = store.asking(ReuseClaims { blob in try waitFor { try await Self.markUsed(blob, catalog: catalog, clock: clock) } })
        self.threadPool = threadPool
    }

    /// Marks `blob` used for a reuse, waiting out a collection that is
    /// removing it; says whether none was. The size goes only into a new
    /// row: the job's record of the content it read sets sizes.
    private static func markUsed(_ blob: StoredBlob, catalog: Catalog, clock: any ServiceClock) async throws -> Bool {
        var waited = Duration.zero
        while try await !catalog.markBlobsUsed([blob], sizesVerified: false).isEmpty {
            guard waited < collectionWait else {
                throw BackupError.unavailable("a collection has been removing content this job stores for \(collectionWait)")
            }
            try await clock.sleep(for: collectionPoll)
            waited += collectionPoll
        }
        return waited == .zero
    }

    /// Marks `blobs` used; fails naming how many the store no longer holds.
    func record(_ blobs: [StoredBlob]) async throws {
        let kept = try await keep(blobs)
        guard kept.count == blobs.count else {
            throw BackupError.failedPrecondition("\(blobs.count - kept.count) blobs this job stored or reused were collected as it ran "
                + "(the backups that held them were deleted); run it again")
        }
    }

    /// Marks `blobs` used and returns those the store still holds and no
    /// collection is removing: content a job may reuse (the chunks of an
    /// environment's latest backup). One look at the store per content,
    /// however many documents or chunks share it.
    func keep(_ blobs: [StoredBlob]) async throws -> [StoredBlob] {
        let claimed = try await catalog.markBlobsUsed(blobs)
        let store = self.store
        let distinct = Set(blobs.map(\.hash)).subtracting(claimed)
        let held = try await threadPool.runIfActive { try distinct.filter { try store.contains($0) } }
        return blobs.filter { held.contains($0.hash) }
    }
}
