import BackupCatalog
import BackupRules
import BackupStorage
import NIOPosix

/// `backupd store migrate`: content kept as is before encryption at rest
/// is copied encrypted under each namespace whose backups refer to it, a
/// batch at a time; each batch's rows are pointed at the copies in one
/// transaction, and a collection then removes the plain objects no row
/// refers to any more (those a job that began earlier may still read go at
/// a later collection). Stopped anywhere, the next run goes on where it
/// stopped: the rows say what is left. It runs beside serving processes.
public struct StoreMigration: Sendable {
    let catalog: Catalog
    let stores: NamespaceStores
    let threadPool: NIOThreadPool
    /// The clock the fence's renewal sleeps on.
    let clock: any ServiceClock
    /// Blobs copied before their rows are pointed at the copies.
    static let batch = 64

    public init(catalog: Catalog, store: any BlobStore, masterKeys: StorageKeys, threadPool: NIOThreadPool, clock: any ServiceClock) {
        self.catalog = catalog
        self.clock = clock
        stores = NamespaceStores(base: store, masterKeys: masterKeys, catalog: catalog)
        self.threadPool = threadPool
    }

    /// What a run did.
    public struct Outcome: Sendable, Equatable {
        /// Objects copied encrypted (one per namespace that refers to a plain object), and their content's bytes.
        public var copied = 0
        public var bytes: UInt64 = 0
        /// Plain objects that could not be read or did not match their hash, with why: left as they are.
        public var unreadable: [String] = []
        /// Plain objects backups still refer to after the run (unreadable, claimed by a collection, or past the limit).
        public var left = 0
        /// Objects the collection at the end removed.
        public var removed = 0
    }

    /// Namespaces whose backups refer to content kept as is: how many objects and bytes.
    public func plan() async throws -> [(namespace: String, blobs: Int, bytes: UInt64)] {
        try await catalog.namespacesWithPlainContent()
    }

    /// How long the run's collection fence lasts unless renewed (it is
    /// renewed four times as often): a run whose process died holds
    /// collections, and the next run, back this long (helper finding: with a
    /// lease of 15 minutes renewed per batch, a killed run held them 15 minutes).
    static let fenceLease = Duration.seconds(120)
    /// The fence's name: one run at a time (helper finding: two runs at once copied every object twice).
    static let fenceHolder = "store migrate"

    /// Copies at most `limit` objects, telling `progress` of each
    /// namespace's start and end, then collects. While it runs, a fence
    /// holds collections back from what it stores or reuses, as a running
    /// job does (helper finding: with no job running, a collection beside it
    /// removed copies it had written, or found, before it pointed rows at them).
    public func run(limit: Int = .max, progress: @escaping @Sendable (String) -> Void) async throws -> Outcome {
        try await stores.check(stores.masterKeys)
        let fence = try await catalog.openCollectionFence(lease: Self.fenceLease, holder: Self.fenceHolder)
        do {
            var outcome = try await holding(fence) { try await copy(limit: limit, fence: fence, progress: progress) }
            try await catalog.closeCollectionFence(fence)
            outcome.removed = try await BlobCollector(catalog: catalog, store: stores.base, threadPool: threadPool).collect()
            outcome.left = try await plan().reduce(0) { $0 + $1.blobs }
            return outcome
        } catch {
            try? await catalog.closeCollectionFence(fence)
            throw error
        }
    }

    /// Runs `body` while renewing `fence` (on a catalog connection of its
    /// own: the copying may wait on another); if the fence runs out all the
    /// same (the catalog was out of reach for a whole lease), `body` is
    /// cancelled and the run fails: collections no longer wait for it, and
    /// no batch is adopted after that (`adoptEncryptedCopies` checks the fence).
    private func holding(_ fence: String, _ body: @escaping @Sendable () async throws -> Outcome) async throws -> Outcome {
        let (catalog, clock) = (catalog, clock)
        return try await withThrowingTaskGroup(of: Outcome?.self) { group in
            defer { group.cancelAll() }
            group.addTask { try await body() }
            group.addTask {
                while true {
                    try await clock.sleep(for: Self.fenceLease / 4)
                    try await catalog.renewCollectionFence(fence, lease: Self.fenceLease)
                }
            }
            while let finished = try await group.next() {
                if let finished { return finished }
            }
            throw CancellationError()
        }
    }

    private func copy(limit: Int, fence: String, progress: @Sendable (String) -> Void) async throws -> Outcome {
        var outcome = Outcome()
        for (namespace, blobs, bytes) in try await plan() where outcome.copied < limit {
            progress("\(namespace): \(blobs) objects kept as is (\(bytes) bytes)")
            // As a job stores: a copy the store already holds is marked used before it stands for the content.
            let ledger = BlobLedger(catalog: catalog, store: try await stores.store(for: namespace), threadPool: threadPool,
                                    clock: clock)
            let (store, base, threadPool) = (ledger.store, stores.base, threadPool)
            let plain = try await catalog.plainContent(of: namespace)
            let before = outcome.copied
            for start in stride(from: 0, to: min(plain.count, limit - before), by: Self.batch) {
                try Task.checkCancellation()
                var copies: [(plain: ContentHash, sealed: StoredBlob)] = []
                for blob in plain[start..<min(start + Self.batch, plain.count, limit - before)] {
                    do {
                        let sealed = try await threadPool.runIfActive {
                            let writer = try store.writer()
                            _ = try base.read(blob.hash, interruption: nil) { try writer.write($0) }
                            return try writer.finish()
                        }
                        guard sealed.hash == blob.hash else { throw BlobStoreError.unreadable(blob.hash, reason: "its content's hash differs") }
                        copies.append((blob.hash, sealed))
                    } catch {
                        outcome.unreadable.append("\(namespace): \(error)")
                    }
                }
                // Only copies the store still holds once marked used: one a collection removed meanwhile is left for a later run.
                let kept = Set(try await ledger.keep(copies.map(\.sealed)).map(\.name))
                let taken = try await catalog.adoptEncryptedCopies(copies.filter { kept.contains($0.sealed.name) }, namespace: namespace,
                                                                   fence: fence)
                outcome.copied += taken.count
                outcome.bytes += taken.reduce(0) { $0 + $1.size }
            }
            progress("\(namespace): \(outcome.copied - before) objects copied encrypted")
        }
        return outcome
    }
}
