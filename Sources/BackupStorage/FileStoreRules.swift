#if canImport(Glibc)
import BackupRules
import Glibc
#endif

/// Where environments' file stores may be. backupd replaces and deletes
/// folders around a file store when it restores (`STORE.restore-…`,
/// `STORE.prerestore`), as its own user, so a store must be a canonical path
/// strictly under one of the configured roots, and apart from backupd's own
/// folders and from every other environment's store and those siblings.
public struct FileStoreRules: Sendable {
    /// Canonical folders that file stores may lie under.
    public let roots: [String]
    /// backupd's own folders (the blob store, holding its scratch folder).
    public let reserved: [String]

    /// Refuses roots that are not canonical existing folders, or that lie
    /// inside backupd's own folders.
    public init(roots: [String], reserved: [String]) throws(BackupError) {
        for root in roots {
            guard canonicalPath(root) == root, isDirectory(root) else {
                throw .invalidArgument("file store root \(root) must be an existing folder given by its canonical path (no links, no trailing '/')")
            }
            if let folder = reserved.first(where: { root == $0 || isInside(root, $0) }) {
                throw .invalidArgument("file store root \(root) lies in backupd's own folder \(folder)")
            }
        }
        self.roots = roots
        self.reserved = reserved
    }

    /// The path of a file store as it will be kept, after every check:
    /// `others` are the stores of the other environments, by name.
    public func check(_ path: String, others: [(name: String, path: String)]) throws(BackupError) -> String {
        guard !roots.isEmpty else {
            throw .failedPrecondition("backupd has no file store roots; start it with --file-store-root to allow file stores")
        }
        guard path.hasPrefix("/"), path.count > 1 else {
            throw .invalidArgument("file_store_path must be an absolute path")
        }
        guard !path.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) else {
            throw .invalidArgument("file_store_path must not contain control characters")
        }
        let components = path.dropFirst().split(separator: "/", omittingEmptySubsequences: false)
        guard !path.hasSuffix("/"), components.allSatisfy({ !$0.isEmpty && $0 != "." && $0 != ".." }) else {
            throw .invalidArgument("file_store_path must be canonical: no '.', '..', empty components or trailing '/'")
        }
        guard roots.contains(where: { isInside(path, $0) }) else {
            throw .permissionDenied("file_store_path must lie strictly under a file store root: \(roots.joined(separator: ", "))")
        }
        let parent = String(path[..<path.lastIndex(of: "/")!])
        guard canonicalPath(parent) == parent else {
            throw .invalidArgument("file_store_path must be canonical: a folder above it is a symbolic link or does not exist")
        }
        var info = stat()
        if lstat(path, &info) == 0 {
            guard info.st_mode & S_IFMT == S_IFDIR else {
                throw .invalidArgument("file_store_path must be a folder, not a symbolic link or a file")
            }
        } else if errno != ENOENT {
            throw .invalidArgument("file_store_path cannot be examined: \(String(cString: strerror(errno)))")
        }
        if let folder = reserved.first(where: { fileStoresOverlap(path, $0) }) {
            throw .permissionDenied("file_store_path overlaps backupd's own folder \(folder)")
        }
        if let other = others.first(where: { fileStoresOverlap(path, $0.path) }) {
            throw .permissionDenied("file_store_path overlaps the file store of environment \(other.name)")
        }
        return path
    }
}

/// Whether `path` lies strictly inside `folder`.
func isInside(_ path: String, _ folder: String) -> Bool {
    path.hasPrefix(folder + "/")
}

/// Whether two file stores (or a store and one of backupd's folders) could
/// touch each other's files: one holds the other, or one is among the
/// folders a restore of the other makes beside it.
public func fileStoresOverlap(_ a: String, _ b: String) -> Bool {
    func belongs(_ path: String, to store: String) -> Bool {
        path == store || isInside(path, store) || path == store + ".prerestore" || isInside(path, store + ".prerestore")
            || path.hasPrefix(store + ".restore-")
    }
    return belongs(a, to: b) || belongs(b, to: a)
}

/// `realpath`, or nil when the path does not resolve.
public func canonicalPath(_ path: String) -> String? {
    guard let resolved = realpath(path, nil) else { return nil }
    defer { free(resolved) }
    return String(cString: resolved)
}

func isDirectory(_ path: String) -> Bool {
    var info = stat()
    return lstat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFDIR
}
