import ArgumentParser
import BackupServer
import BackupStorage
import Foundation

/// What the store commands read: serve's catalog and blob store settings
/// (the master keys among them), from the same flags, BACKUPD_ variables
/// and configuration file, so they run beside running servers.
struct StoreOptions: ParsableArguments {
    @OptionGroup var catalog: CatalogOptions
    @OptionGroup var blobStore: BlobStoreOptions

    @Option(help: "serve's YAML configuration file, whose catalog and blob store settings are read.")
    var config: String?

    func validate() throws {
        guard !blobStore.storageKeys.isEmpty else {
            throw ValidationError("--storage-keys (or BACKUPD_STORAGE_KEYS, or storage-keys in --config) is required")
        }
    }
}

/// `backupd store`: work on the blob store itself.
struct StoreCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "store", abstract: "Work on the blob store.", subcommands: [Migrate.self])

    struct Migrate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Copy content kept unencrypted (written before --storage-keys) encrypted under each namespace that uses it.",
            discussion: """
                Each namespace gets its own encrypted copy of every object its backups refer to that was kept as is; its \
                backups then refer to the copies, and the objects kept as is are removed by a collection at the end (one a job \
                that began earlier may still read goes at a later collection of backupd). Safe while backupd serves; stopped \
                anywhere, run it again to go on. Dumps stored whole, by versions before dumps were chunked, stay as they are.
                """)

        @OptionGroup var options: StoreOptions

        @Flag(help: "Only say which namespaces use content kept unencrypted, and how much.")
        var dryRun = false

        @Option(help: "Copy at most this many objects, then stop (run again to go on).")
        var maxObjects: Int?

        func validate() throws {
            if let maxObjects, maxObjects < 1 { throw ValidationError("--max-objects must be at least 1") }
        }

        func run() async throws {
            let keys: StorageKeys
            do {
                keys = try StorageKeys(reading: options.blobStore.storageKeys)
            } catch {
                throw CommandFailure(description: "--storage-keys: \(error)")
            }
            let objectStore = try options.blobStore.objectStore()
            let http = options.blobStore.objectStoreHTTP(objectStore)
            do {
                let store = try options.blobStore.makeBlobStore(objectStore, http: http)
                try await options.catalog.withCatalog { catalog, threadPool in
                    let migration = StoreMigration(catalog: catalog, store: store, masterKeys: keys, threadPool: threadPool, clock: ContinuousClock())
                    guard !dryRun else {
                        let plan = try await migration.plan()
                        for (namespace, blobs, bytes) in plan { print("\(namespace)\t\(blobs) objects\t\(bytes) bytes") }
                        return print("# \(plan.count) namespaces use content kept unencrypted")
                    }
                    let outcome = try await migration.run(limit: maxObjects ?? .max) { print($0) }
                    for problem in outcome.unreadable { print("unreadable, left as it is: \(problem)") }
                    print("copied \(outcome.copied) objects (\(outcome.bytes) bytes) encrypted; collection removed \(outcome.removed) objects; "
                          + "\(outcome.left) objects kept unencrypted are still in use" + (outcome.left > 0 ? " (run again)" : ""))
                    if !outcome.unreadable.isEmpty { throw ExitCode(1) }
                }
            } catch {
                try? await http?.shutdown()
                throw error
            }
            try? await http?.shutdown()
        }
    }
}
