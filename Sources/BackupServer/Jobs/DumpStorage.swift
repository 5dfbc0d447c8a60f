import BackupCatalog
import BackupCore
import NIOPosix

/// Takes a finished dump file into the blob store as content-defined,
/// zstd-compressed chunks, reusing every chunk the environment's latest
/// backup stored (so a nightly dump of a database that changed a little
/// writes little), and records the chunks' blobs in the job's ledger. One
/// way for every job that stores a dump: a backup and an upload's validation.
struct DumpStorage: Sendable {
    let catalog: Catalog
    let blobStore: any BlobStore
    let threadPool: NIOThreadPool
    /// zstd level of new chunks.
    let level: Int32

    func store(_ path: String, of environment: (namespace: String, name: String), ledger: BlobLedger,
               progress: ProgressReporter) async throws -> StoredDump {
        let known = try await catalog.knownDumpChunks(namespace: environment.namespace, environment: environment.name)
        let writer = DumpChunkWriter(store: blobStore, level: level)
        // The job's bytes are its dump's and files' once: storing shows as its phase.
        let dump = try await progress.reporting(on: threadPool, to: .none) { interruption, _ in
            try writer.store(file: path, known: known, interruption: interruption)
        }
        try await ledger.record(dump.blobs)
        return dump
    }
}
