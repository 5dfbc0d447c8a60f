import BackupCatalog
import BackupRules
import BackupStorage
import Foundation
import NIOPosix

/// Prepares a download: writes a backup's archive (or, database only, its
/// bare dump) from the blob store into the archive cache, hashed as it is
/// written, takes it into the blob store under that hash (so that every
/// backupd process serves it) and marks it ready. Only the blob store is
/// read, through its streaming interface: the backup's environment and
/// databases are not touched, so an archive job does not take its
/// environment's turn.
struct ArchiveJob: Sendable {
    let catalog: Catalog
    let clock: any ServiceClock
    let stores: NamespaceStores
    let cache: ArchiveCache
    let gzipLevel: Int
    let threadPool: NIOThreadPool

    func run(_ claimed: ClaimedJob, owner: String) async throws {
        let work = try await catalog.archiveWork(jobID: claimed.job.id)
        let progress = ProgressReporter(catalog: catalog, jobID: claimed.job.id, clock: clock)
        let content = work.archive.dump.size + (work.databaseOnly ? 0 : work.archive.files.reduce(0) { $0 + $1.blob.size })
        await progress.update(done: 0, total: content, phase: work.databaseOnly ? "copying the dump" : "writing the archive")
        try cache.requireRoom(for: work.reservedBytes)
        let partial = cache.partialPath(of: work.archiveID)
        // The backup is pinned while this job runs, so every blob it reads stays referenced and is never collected.
        let blobStore = try await stores.store(for: work.namespace)
        let written = try await write(work, to: partial, from: blobStore, progress: progress)
        await progress.update(done: content, total: content, phase: "storing the archive")
        let ledger = BlobLedger(catalog: catalog, store: blobStore, threadPool: threadPool, clock: clock)
        let archive = try await threadPool.runIfActive { [store = ledger.store] in
            try store.adopt(partial, as: StoredBlob(hash: written.sha256, size: written.size))
        }
        // Marked used before it is ready: a collection beside this job keeps it, and one already removing it fails the job.
        try await ledger.record([archive])
        try await catalog.finishArchive(jobID: claimed.job.id, owner: owner, blob: archive)
    }

    /// Writes on the thread pool, stopping within a chunk when the job is
    /// cancelled or the archive grows past its reservation, its progress reported as it goes.
    private func write(_ work: ArchiveWork, to path: String, from blobStore: any BlobStore,
                       progress: ProgressReporter) async throws -> (size: UInt64, sha256: ContentHash) {
        let gzipLevel = self.gzipLevel
        return try await progress.reporting(on: threadPool) { interruption, report in
            work.databaseOnly
                ? try work.archive.writeDump(to: path, from: blobStore, limit: work.reservedBytes, interruption: interruption, progress: report)
                : try work.archive.write(to: path, from: blobStore, gzipLevel: gzipLevel, limit: work.reservedBytes,
                                         interruption: interruption, progress: report)
        }
    }
}
