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
    /// What the store asks before it reuses a copy (`markForReuse` tells it what needs no catalog round trip).
    private let claims: ReuseClaims
    let threadPool: NIOThreadPool
    /// Paces the wait for a collection removing content the job stores.
    let clock: any ServiceClock

    /// How often a job looks again at content a collection is removing, and for how long.
    static let collectionPoll = Duration.milliseconds(100)
    static let collectionWait = Duration.seconds(60)

    init(catalog: Catalog, store: any BlobStore, threadPool: NIOThreadPool, clock: any ServiceClock) {
        self.catalog = catalog
        self.threadPool = threadPool
        self.clock = clock
        // A reuse's size goes only into a new row: the job's record of the content it read sets sizes.
        claims = ReuseClaims { blob in
            try waitFor {
                let claimed = try await Self.markUsed([blob], sizesVerified: false, catalog: catalog, clock: clock)
                guard claimed.isEmpty else {
                    throw BackupError.unavailable("a collection has been removing content this job stores for \(Self.collectionWait)")
                }
            }
        }
        self.store = store.asking(claims)
    }

    /// Marks `blobs` used, waiting (up to `collectionWait`) for collections
    /// removing any of them to be done: their content is then gone or, for
    /// what a job wrote after the removal, the job's. Returns those still
    /// claimed after the wait, by name.
    private static func markUsed(_ blobs: [StoredBlob], sizesVerified: Bool, catalog: Catalog,
                                 clock: any ServiceClock) async throws -> Set<ContentHash> {
        var claimed = try await catalog.markBlobsUsed(blobs, sizesVerified: sizesVerified)
        var waited = Duration.zero
        while !claimed.isEmpty && waited < collectionWait {
            try await clock.sleep(for: collectionPoll)
            waited += collectionPoll
            claimed = try await catalog.markBlobsUsed(blobs.filter { claimed.contains($0.name) }, sizesVerified: sizesVerified)
        }
        return claimed
    }

    /// Marks `blobs` used; fails naming how many the store no longer holds.
    func record(_ blobs: [StoredBlob]) async throws {
        let kept = try await keep(blobs)
        guard kept.count == blobs.count else {
            throw BackupError.failedPrecondition("\(blobs.count - kept.count) blobs this job stored or reused were collected as it ran "
                + "(the backups that held them were deleted); run it again")
        }
    }

    /// Marks `blobs` used and returns those the store still holds once no
    /// collection is removing them: content a job may reuse (the chunks of an
    /// environment's latest backup), or stored (helper finding: a job that
    /// wrote content again between a collection's removal and its forgetting
    /// the rows found the rows claimed and failed). One look at the store
    /// per content, however many documents or chunks share it.
    func keep(_ blobs: [StoredBlob]) async throws -> [StoredBlob] {
        let claimed = try await Self.markUsed(blobs, sizesVerified: true, catalog: catalog, clock: clock)
        let store = self.store
        let distinct = Set(blobs.filter { !claimed.contains($0.name) }.map(\.hash))
        let held = try await threadPool.runIfActive { try distinct.filter { try store.contains($0) } }
        return blobs.filter { held.contains($0.hash) && !claimed.contains($0.name) }
    }

    /// Marks `blobs` used in one statement, so that the store, reusing one,
    /// asks only itself, as the job's documents are read (in parallel),
    /// rather than the catalog too: the documents of the environment's
    /// latest backup, most of which its next backup meets again. Unlike
    /// `keep`, it does not look at the store (on S3 a request each, one after
    /// another, before the first document is read). Those a collection is
    /// removing are left to be asked about when met.
    func markForReuse(_ blobs: [StoredBlob]) async throws {
        let claimed = try await catalog.markBlobsUsed(blobs, sizesVerified: false)
        claims.markedInBulk(blobs.map(\.name).filter { !claimed.contains($0) })
    }
}
