import BackupRules
#if canImport(Glibc)
import Glibc
#endif

/// Where a file document lives in an app's file store: the storage key (a
/// UUID) in two folders named by its characters 1-2 and 3-4, as
/// `0d/3e/0d3e301f-5551-46f8-ad44-8de2be084c95`.
public enum FileStoreLayout {
    /// A key that could name something outside its folders. The key itself
    /// comes from an app database and is not repeated in messages.
    public struct InvalidKey: Error, CustomStringConvertible {
        public init() {}
        public var description: String {
            "a file storage key must be 4 to 200 characters of letters, digits, '-' or '_'"
        }
    }

    /// The folders and file name of a file document, relative to its store.
    /// Keys come from the app database, so anything that could climb out of
    /// the store is refused.
    public static func components(forKey key: String) throws(InvalidKey) -> [String] {
        let allowed = key.utf8.allSatisfy { byte in
            (48...57).contains(byte) || (65...90).contains(byte) || (97...122).contains(byte) || byte == 45 || byte == 95
        }
        guard allowed, (4...200).contains(key.utf8.count) else { throw InvalidKey() }
        let characters = Array(key)
        return [String(characters[0..<2]), String(characters[2..<4]), key]
    }

    /// The path of a file document relative to its file store.
    public static func relativePath(forKey key: String) throws(InvalidKey) -> String {
        try components(forKey: key).joined(separator: "/")
    }
}

/// Why a file document could not be opened for reading.
public enum FileDocumentError: Error, Equatable, CustomStringConvertible {
    case missing(key: String)
    case notRegular(key: String, what: String)
    case foreignHardLink(key: String)
    case unreadable(key: String, errno: Int32)

    public var key: String {
        switch self {
        case let .missing(key), let .notRegular(key, _), let .foreignHardLink(key), let .unreadable(key, _): key
        }
    }

    public var description: String {
        switch self {
        case let .missing(key): "file document \(key) is missing from the file store"
        case let .notRegular(key, what): "file document \(key) is \(what), not a regular file"
        case let .foreignHardLink(key): "file document \(key) is a hard link to a file of another user than the store's owner"
        case let .unreadable(key, code): "file document \(key) cannot be read: \(String(cString: strerror(code)))"
        }
    }
}

/// An app's file store, opened once, from which file documents are opened
/// beneath it without following any symbolic link: each folder and the file
/// itself are opened relative to the one above with `O_NOFOLLOW`, and only a
/// regular file is accepted. A document that is a link to `/etc/shadow` or
/// `/proc/self/environ`, a FIFO or a device is refused, never read.
///
/// A hard link to a file of another user than the store's owner is refused
/// too: a link the app made to a file it may not read (where the system
/// lets it) would otherwise be read by backupd and restored readable.
public final class FileStoreReader: Sendable {
    private let folder: OpenFolder
    private var descriptor: Int32 { folder.descriptor }
    private var owner: uid_t { folder.ownerID }

    /// Opens the store's folder from `/` without following a link on the
    /// way: a folder above the store that the tenant swapped for a link to
    /// another tenant's store after the placement check leads nowhere.
    public init(path: String) throws(BlobStoreError) {
        folder = try OpenFolder(reachedWithoutLinks: path)
    }

    /// Opens a document read-only; it closes when the caller drops it.
    public func open(key: String) throws -> OpenedDocument {
        let parts = try FileStoreLayout.components(forKey: key)
        var folder = descriptor
        defer { if folder != descriptor { close(folder) } }
        for part in parts.dropLast() {
            let next = openat(folder, part, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            guard next >= 0 else { throw Self.failure(errno, key: key, folder: true) }
            if folder != descriptor { close(folder) }
            folder = next
        }
        // O_NONBLOCK: opening a FIFO must not wait for a writer.
        let fd = openat(folder, parts.last!, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC)
        guard fd >= 0 else { throw Self.failure(errno, key: key, folder: false) }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            let code = errno
            close(fd)
            throw FileDocumentError.unreadable(key: key, errno: code)
        }
        guard info.st_mode & S_IFMT == S_IFREG else {
            close(fd)
            throw FileDocumentError.notRegular(key: key, what: Self.kind(info.st_mode))
        }
        guard info.st_nlink == 1 || info.st_uid == owner else {
            close(fd)
            throw FileDocumentError.foreignHardLink(key: key)
        }
        return OpenedDocument(file: LocalFile(adopting: fd, name: "file document \(key)"), size: UInt64(info.st_size))
    }

    private static func failure(_ code: Int32, key: String, folder: Bool) -> FileDocumentError {
        switch code {
        case ENOENT: .missing(key: key)
        case ELOOP, ENOTDIR:
            .notRegular(key: key, what: folder ? "in a folder that is a symbolic link or not a folder" : "a symbolic link")
        default: .unreadable(key: key, errno: code)
        }
    }

    private static func kind(_ mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFDIR: "a folder"
        case S_IFIFO: "a FIFO"
        case S_IFSOCK: "a socket"
        case S_IFCHR, S_IFBLK: "a device"
        default: "not a regular file"
        }
    }
}

/// A file document open for reading.
public struct OpenedDocument {
    public let file: LocalFile
    public let size: UInt64

    /// The later of its modification and status-change times now, in
    /// seconds since 1970: asked after reading, it covers changes made while
    /// the document was read (a status change cannot be dated back).
    public var lastChanged: Double {
        var info = stat()
        guard fstat(file.descriptor.rawValue, &info) == 0 else { return .infinity }
        return max(Double(info.st_mtim.tv_sec) + Double(info.st_mtim.tv_nsec) / 1e9,
                   Double(info.st_ctim.tv_sec) + Double(info.st_ctim.tv_nsec) / 1e9)
    }
}
