import ArgumentParser
import BackupCatalog
import BackupPostgres
import BackupServer
import BackupStorage
import Foundation
import NIOPosix

/// What the keys commands read: serve's catalog and master keys, from the
/// same flags, BACKUPD_ variables and configuration file, so they run with
/// serve's own file, beside running servers.
struct KeysOptions: ParsableArguments {
    @OptionGroup var catalog: CatalogOptions

    @Option(help: "File of the master keys (serve's --storage-keys).")
    var storageKeys = ""

    @Option(help: "serve's YAML configuration file, whose catalog and storage-keys are read.")
    var config: String?

    func validate() throws {
        guard !storageKeys.isEmpty else { throw ValidationError("--storage-keys (or BACKUPD_STORAGE_KEYS, or storage-keys in --config) is required") }
    }
}

/// `backupd keys`: the namespaces' data keys of encryption at rest, kept in
/// the catalog wrapped by the master keys of `--storage-keys`.
struct KeysCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keys", abstract: "List, rotate and shred the keys that encrypt namespaces' content.",
        subcommands: [List.self, Rotate.self, Shred.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Say which master key wraps each namespace's data key.")

        @OptionGroup var options: KeysOptions

        func run() async throws {
            try await KeysCommand.withCatalog(options) { catalog, keys in
                let wrapped = try await catalog.namespaceKeys()
                for key in wrapped {
                    let listed = keys.file.key(key.keyID) != nil ? "" : "  (not in the key file: unreadable)"
                    print("\(key.namespace)\t\(key.keyID)\(listed)")
                }
                let byKey = Dictionary(grouping: wrapped, by: \.keyID).mapValues(\.count)
                let summary = keys.file.keys.map { "\($0.id): \(byKey[$0.id] ?? 0)" }.joined(separator: ", ")
                print("# \(wrapped.count) namespaces; by master key: \(summary); new keys are wrapped with \(keys.file.current.id)")
            }
        }
    }

    struct Rotate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Wrap every namespace's data key again with the master key in use (no blob is re-encrypted).",
            discussion: """
                Rotating a master key: add the new key to the key file of every process (still wrapping with the old: \
                wrap-with OLD) and reload them (SIGHUP or backupd reload), make the new key the one in use (drop the \
                wrap-with line or name NEW) and reload again, then run this. Once keys list shows no namespace under \
                the old key, remove it from the file and reload. Safe while backupd serves: data keys do not change, \
                only how the catalog keeps them.
                """)

        @OptionGroup var options: KeysOptions

        func run() async throws {
            try await KeysCommand.withCatalog(options) { catalog, keys in
                let rotated = try await keys.wrapAgain(in: catalog)
                print("wrapped \(rotated.wrapped) namespace keys again with \(keys.file.current.id); "
                      + "\(rotated.alreadyCurrent) already were")
            }
        }
    }

    struct Shred: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Erase a namespace: delete its data key and every backup and upload of it (crypto-shredding).",
            discussion: """
                Without its data key, what the store keeps of the namespace cannot be read by anyone: the bucket, its \
                replicas and its copies alike. The backups and uploads go from the catalog in the same transaction, and \
                backupd's next collections remove their content. The namespace's environments and schedules stay (delete \
                them to stop its backups); its next backup is made under a new key. Refused while a job works on the \
                namespace. The catalog's own backups still hold the wrapped key: see docs/security.md.
                """)

        @OptionGroup var options: KeysOptions

        @Argument(help: "The namespace to erase.")
        var namespace: String

        @Flag(help: "Only say what would be deleted.")
        var dryRun = false

        @Flag(help: "Shred without asking (required: there is no undo).")
        var yes = false

        func validate() throws {
            do {
                try validateName(namespace, "namespace")
            } catch {
                throw ValidationError(error.description)
            }
        }

        func run() async throws {
            try await KeysCommand.withCatalog(options) { catalog, _ in
                let plan = try await catalog.shredNamespaceKey(namespace, actor: "backupd keys shred", dryRun: true)
                let what = "the data key of namespace \(namespace) (wrapped by \(plan.keyID)), its \(plan.backups) backups "
                    + "and \(plan.uploads) uploads"
                guard !dryRun else { return print("would delete \(what)") }
                guard yes else { throw CommandFailure(description: "this deletes \(what), for ever; run again with --yes") }
                let done = try await catalog.shredNamespaceKey(namespace, actor: "backupd keys shred", dryRun: false)
                print("deleted the data key of namespace \(namespace) (wrapped by \(done.keyID)), its \(done.backups) backups "
                      + "and \(done.uploads) uploads; the next collections remove their content from the store")
            }
        }
    }

    /// Runs `body` with the catalog and master keys `options` name.
    private static func withCatalog(_ options: KeysOptions, _ body: (Catalog, StorageKeys) async throws -> Void) async throws {
        let keys: StorageKeys
        do {
            keys = try StorageKeys(reading: options.storageKeys)
        } catch {
            throw CommandFailure(description: "--storage-keys: \(error)")
        }
        try await options.catalog.withCatalog { catalog, _ in try await body(catalog, keys) }
    }
}
