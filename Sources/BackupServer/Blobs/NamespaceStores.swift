import BackupCatalog
import BackupRules
import BackupStorage
import Synchronization

/// The blob store as each namespace sees it. With master keys
/// (`--storage-keys`), a namespace's content is encrypted under a data key
/// of its own (`SealedBlobStore`), made on its first use and kept in the
/// catalog wrapped by the master key in use; without them, content is kept
/// as is and every namespace sees the store itself. Whatever reads or
/// writes a namespace's content (its jobs, its downloads, its uploads) goes
/// through `store(for:)`; what spans namespaces (collection, the readiness
/// probe) uses `base`, which knows blobs by the names they are kept under.
final class NamespaceStores: Sendable {
    let base: any BlobStore
    /// Whether content is kept encrypted: for the process's life.
    let encrypts: Bool
    private let keys: Mutex<StorageKeys?>
    private let catalog: Catalog
    /// Each namespace's view, and the catalog's row it was made from: the
    /// row is read for every job, download and upload (one indexed row), so
    /// a key wrapped again or made anew by another process is seen at once.
    private let views = Mutex<[String: (key: WrappedNamespaceKey, view: SealedBlobStore)]>([:])

    init(base: any BlobStore, masterKeys: StorageKeys?, catalog: Catalog) {
        self.base = base
        encrypts = masterKeys != nil
        keys = Mutex(masterKeys)
        self.catalog = catalog
    }

    /// The master keys: those of the key file as last read (a reload reads it again).
    var masterKeys: StorageKeys? {
        get { keys.withLock { $0 } }
        set { keys.withLock { $0 = newValue } }
    }

    /// Refuses master keys (nil: none) that cannot read what the catalog
    /// keeps: a process without them, once some namespace has a key, would
    /// read none of its content and store new content unencrypted; a key
    /// file lacking a master key that wraps some namespace's key would fail
    /// every job of that namespace.
    func check(_ keys: StorageKeys?) async throws(BackupError) {
        let used: [WrappedNamespaceKey]
        do {
            used = try await catalog.namespaceKeys()
        } catch {
            throw .unavailable("cannot ask the catalog which master keys are in use: \(error)")
        }
        guard !used.isEmpty else { return }
        guard let keys else {
            throw .failedPrecondition(
                "\(used.count) namespaces keep their content encrypted, but this process has no --storage-keys: it would read none "
                    + "of it and store new content unencrypted; start it with the storage key file")
        }
        let missing = Set(used.map(\.keyID)).filter { keys.file.key($0) == nil }.sorted()
        guard missing.isEmpty else {
            throw .failedPrecondition(
                "the storage key file lacks master keys \(missing.joined(separator: ", ")), which wrap namespaces' data keys; "
                    + "put them back (a key may leave the file once `backupd keys list` shows no namespace under it)")
        }
    }

    /// The store as `namespace` sees it; fails when its key cannot be
    /// unwrapped (the key file lacks the master key that wrapped it).
    func store(for namespace: String) async throws -> any BlobStore {
        guard let masterKeys = self.masterKeys else { return base }
        let wrapped = try await catalog.namespaceKey(namespace) {
            let (keyID, wrapped) = masterKeys.wrap(NamespaceKeys.newDataKey())
            return WrappedNamespaceKey(namespace: namespace, keyID: keyID, wrapped: wrapped)
        }
        if let made = views.withLock({ $0[namespace] }), made.key == wrapped { return made.view }
        let view = SealedBlobStore(base, keys: NamespaceKeys(dataKey: try masterKeys.unwrap(wrapped.wrapped, keyID: wrapped.keyID)))
        views.withLock { $0[namespace] = (wrapped, view) }
        return view
    }
}

extension StorageKeys {
    /// Wraps every namespace's data key that another master key wraps again
    /// with the one in use; no blob changes. A row another rotation changed
    /// meanwhile is left to it.
    public func wrapAgain(in catalog: Catalog) async throws -> (wrapped: Int, alreadyCurrent: Int) {
        var (wrapped, current) = (0, 0)
        for key in try await catalog.namespaceKeys() {
            guard key.keyID != file.current.id else {
                current += 1
                continue
            }
            let (keyID, again) = wrap(try unwrap(key.wrapped, keyID: key.keyID))
            if try await catalog.replaceNamespaceKey(key, with: WrappedNamespaceKey(namespace: key.namespace, keyID: keyID, wrapped: again)) {
                wrapped += 1
            } else {
                current += 1
            }
        }
        return (wrapped, current)
    }
}
