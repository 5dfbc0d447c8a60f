import BackupCatalog
import BackupRules
import BackupStorage
import NIOPosix

/// Takes a finished dump file into the blob store as content-defined,
/// zstd-compressed chunks, reusing every chunk the environment's latest
/// backup stored (so a nightly dump of a database that changed a little
/// writes little), and records the chunks' blobs in the job's ledger. One
/// way for every job that stores a dump: a backup and an upload's validation.
struct DumpStorage: Sendable {
    let catalog: Catalog
    let threadPool: NIOThreadPool
    /// zstd level of new chunks.
    let level: Int32

    /// Stores the dump at `path`, a file or a FIFO `pg_dump` writes into;
    /// the bytes read go to `target` of the job's progress.
    func store(_ path: String, of environment: (namespace: String, name: String), ledger: BlobLedger,
               progress: ProgressReporter, reportingTo target: ProgressReporter.Target) async throws -> StoredDump {
        // Marked used before the dump starts, so a collection beside this job keeps them: only those still there are reused.
        // Only chunks kept as the store keeps new content now: one kept unencrypted before the namespace had a key is
        // stored again, encrypted (helper finding: its plain name was reused whenever the encrypted copy existed).
        let store = ledger.store
        let latest = try await catalog.knownDumpChunks(namespace: environment.namespace, environment: environment.name)
            .filter { store.keepsAsNew($0.value.blob) }
        let kept = Set(try await ledger.keep(latest.values.map(\.blob)).map(\.hash))
        let known = latest.filter { kept.contains($0.value.blob.hash) }
        let writer = DumpChunkWriter(store: ledger.store, level: level)
        // Each batch's chunks are recorded as soon as they are stored: a chunk reused from a backup deleted meanwhile
        // is marked used before a collection beside this job could take it.
        let dump = try await progress.reporting(on: threadPool, to: target) { interruption, report in
            try writer.store(file: path, known: known, interruption: interruption, progress: report) { blobs in
                guard !blobs.isEmpty else { return }
                try waitFor { try await ledger.record(blobs) }
            }
        }
        return dump
    }
}
