import BackupRules
#if canImport(Glibc)
import Glibc
#endif
import SystemPackage

/// An open file of backupd's own (a blob being written, a job's scratch
/// dump, an upload's spool file, an archive being served), read and written
/// through swift-system's `FileDescriptor`, which retries what a signal
/// interrupted. It is never reached through a link, and closes when
/// dropped. Every failure names the file (`BlobStoreError`). No module but
/// `BackupStorage` reads or writes a file itself.
public final class LocalFile {
    public let path: String
    let descriptor: FileDescriptor

    private init(path: String, descriptor: FileDescriptor) {
        self.path = path
        self.descriptor = descriptor
    }

    deinit { try? descriptor.close() }

    /// A new file for writing (never an existing one or a link), given
    /// `owner`: private to backupd unless said otherwise.
    public static func create(_ path: String, owner: FileOwner = FileOwner(mode: 0o600)) throws(BlobStoreError) -> LocalFile {
        let descriptor: FileDescriptor
        do {
            descriptor = try FileDescriptor.open(path, .writeOnly, options: [.create, .exclusiveCreate, .noFollow, .closeOnExec],
                                                 permissions: FilePermissions(rawValue: 0o600))
        } catch { throw .cannotWrite(path: path, errno: errorNumber(error)) }
        let file = LocalFile(path: path, descriptor: descriptor)
        if owner != FileOwner(mode: 0o600) {
            do { try owner.apply(to: descriptor.rawValue, path: path) } catch {
                FileSystem.remove(path)
                throw error
            }
        }
        return file
    }

    /// An existing file (not a link), to read, or to write in place.
    public static func open(_ path: String, writing: Bool = false) throws(BlobStoreError) -> LocalFile {
        guard let file = try openIfPresent(path, writing: writing) else {
            throw writing ? .cannotWrite(path: path, errno: ENOENT) : .cannotRead(path: path, errno: ENOENT)
        }
        return file
    }

    /// An existing file (not a link), to read or to write in place, or nil
    /// when nothing is at `path`.
    public static func openIfPresent(_ path: String, writing: Bool = false) throws(BlobStoreError) -> LocalFile? {
        do {
            return LocalFile(path: path, descriptor: try FileDescriptor.open(path, writing ? .writeOnly : .readOnly,
                                                                             options: [.noFollow, .closeOnExec]))
        } catch Errno.noSuchFileOrDirectory {
            return nil
        } catch { throw writing ? .cannotWrite(path: path, errno: errorNumber(error)) : .cannotRead(path: path, errno: errorNumber(error)) }
    }

    /// A file opened by a walk that refuses links (a file document), named
    /// `name` in errors; it closes when dropped.
    convenience init(adopting descriptor: Int32, name: String) {
        self.init(path: name, descriptor: FileDescriptor(rawValue: descriptor))
    }

    /// Writes all of `bytes` at the current offset.
    public func write(_ bytes: UnsafeRawBufferPointer) throws(BlobStoreError) {
        do { _ = try descriptor.writeAll(bytes) } catch { throw .cannotWrite(path: path, errno: errorNumber(error)) }
    }

    /// Writes all of `bytes` at `offset`, leaving the current offset as it is.
    public func write(_ bytes: UnsafeRawBufferPointer, at offset: UInt64) throws(BlobStoreError) {
        do { _ = try descriptor.writeAll(toAbsoluteOffset: Int64(offset), bytes) } catch {
            throw .cannotWrite(path: path, errno: errorNumber(error))
        }
    }

    /// Fills `buffer` from `offset`, or as much of it as the file holds
    /// there; returns how many bytes it read.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlobStoreError) -> Int {
        var done = 0
        while done < buffer.count {
            let count: Int
            do {
                count = try descriptor.read(fromAbsoluteOffset: Int64(offset) + Int64(done),
                                            into: UnsafeMutableRawBufferPointer(rebasing: buffer[done...]))
            } catch { throw .cannotRead(path: path, errno: errorNumber(error)) }
            if count == 0 { break }
            done += count
        }
        return done
    }

    /// Reads from the current offset in chunks until the end or `limit`
    /// bytes, or until `interruption` is set (`interrupted`).
    public func readChunks(limit: UInt64 = .max, interruption: Interruption? = nil,
                           _ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.chunkSize, alignment: 16)
        defer { buffer.deallocate() }
        var remaining = limit
        while remaining > 0 {
            if interruption?.isSet == true { throw BlobStoreError.interrupted(path: path) }
            let count: Int
            do {
                count = try descriptor.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(min(UInt64(buffer.count), remaining))]))
            } catch { throw BlobStoreError.cannotRead(path: path, errno: errorNumber(error)) }
            if count == 0 { return }
            remaining -= UInt64(count)
            try body(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
        }
    }

    /// The SHA-256 and size of what `readChunks` reads from the current offset.
    public func contentHash(limit: UInt64 = .max, interruption: Interruption? = nil) throws -> (hash: ContentHash, size: UInt64) {
        let hasher = SHA256Hasher()
        var size: UInt64 = 0
        try readChunks(limit: limit, interruption: interruption) { chunk in
            hasher.update(chunk)
            size += UInt64(chunk.count)
        }
        return (hasher.finish(), size)
    }

    /// How much `readChunks` reads at a time.
    static let chunkSize = 1 << 20

    /// Goes back to the start, to read the file again.
    public func rewind() throws(BlobStoreError) {
        do { _ = try descriptor.seek(offset: 0, from: .start) } catch { throw .cannotRead(path: path, errno: errorNumber(error)) }
    }

    /// Flushes what was written to the disk.
    public func sync() throws(BlobStoreError) {
        guard fsync(descriptor.rawValue) == 0 else { throw .cannotWrite(path: path, errno: errno) }
    }

    /// Gives the open file this owner and mode.
    public func apply(_ owner: FileOwner) throws(BlobStoreError) {
        try owner.apply(to: descriptor.rawValue, path: path)
    }
}

/// A folder of backupd's own held open, so that what is made in it is made
/// relative to its descriptor: each folder on the way is opened without
/// following a link, and a file is created only where none (and no link)
/// is. Whatever is done to the folder's path meanwhile (renamed away, a link
/// put in its place), nothing is written anywhere but inside it.
public final class OpenFolder: Sendable {
    public let path: String
    let descriptor: Int32
    /// The folder's owner and mode, which files made for it take.
    public let owner: FileOwner
    /// Who owns the folder.
    var ownerID: uid_t { owner.uid ?? 0 }
    /// Which folder it is on its file system, whatever its name now.
    private let identity: (device: UInt64, inode: UInt64)

    private init(adopting descriptor: Int32, path: String) throws(BlobStoreError) {
        var info = stat()
        guard fstat(descriptor, &info) == 0 else {
            let code = errno
            close(descriptor)
            throw .cannotRead(path: path, errno: code)
        }
        self.path = path
        self.descriptor = descriptor
        self.owner = FileOwner(uid: info.st_uid, gid: info.st_gid, mode: info.st_mode & 0o7777)
        self.identity = (UInt64(info.st_dev), UInt64(info.st_ino))
    }

    /// Whether both are the same folder (device and inode), however either was reached.
    public func isSameFolder(as other: OpenFolder) -> Bool {
        identity == other.identity
    }

    /// Opens the folder at `path`, which must be a folder and not a link.
    public convenience init(_ path: String) throws(BlobStoreError) {
        let descriptor = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard descriptor >= 0 else { throw .cannotRead(path: path, errno: errno) }
        try self.init(adopting: descriptor, path: path)
    }

    /// Opens the folder at an absolute `path` from `/`, one folder at a
    /// time, none of them a link: a folder on the way that someone swapped
    /// for a link (to another tenant's folder) is refused, never followed.
    public convenience init(reachedWithoutLinks path: String) throws(BlobStoreError) {
        let parts = path.split(separator: "/").map(String.init)
        guard path.hasPrefix("/"), !parts.contains(where: { $0 == ".." || $0 == "." }) else {
            throw .cannotRead(path: path, errno: EINVAL)
        }
        var folder = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard folder >= 0 else { throw .cannotRead(path: "/", errno: errno) }
        for part in parts {
            let next = openat(folder, part, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            let code = errno
            close(folder)
            guard next >= 0 else { throw .cannotRead(path: path, errno: code) }
            folder = next
        }
        try self.init(adopting: folder, path: path)
    }

    /// The folder `name` in this one, which must be a folder and not a link.
    public func folder(named name: String) throws(BlobStoreError) -> OpenFolder {
        let child = openat(descriptor, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard child >= 0 else { throw .cannotRead(path: "\(path)/\(name)", errno: errno) }
        return try OpenFolder(adopting: child, path: "\(path)/\(name)")
    }

    /// What is at `name` in this folder (a link is `other`), or nil when nothing is.
    public func entry(named name: String) -> FileSystem.Entry? {
        var info = stat()
        guard fstatat(descriptor, name, &info, AT_SYMLINK_NOFOLLOW) == 0 else { return nil }
        return FileSystem.Entry(info)
    }

    /// Renames an entry of this folder within it.
    public func rename(_ name: String, to newName: String) throws(BlobStoreError) {
        guard renameat(descriptor, name, descriptor, newName) == 0 else { throw .cannotWrite(path: "\(path)/\(newName)", errno: errno) }
    }

    /// A new folder `name` in this one (not an existing one) of `mode`.
    public func makeFolder(_ name: String, mode: mode_t = 0o700) throws(BlobStoreError) {
        guard mkdirat(descriptor, name, mode) == 0 else { throw .cannotWrite(path: "\(path)/\(name)", errno: errno) }
    }

    /// Deletes the entry `name` of this folder and all it holds without
    /// following a link (`removeTree`), `last` of it last.
    public func removeTree(named name: String, removingLast last: String? = nil) throws(BlobStoreError) {
        try removeEntry(name, in: descriptor, path: "\(path)/\(name)", last: last)
    }

    deinit { close(descriptor) }

    /// Whether the folder holds a regular file named `name` (not a link).
    public func holdsFile(_ name: String) -> Bool {
        var info = stat()
        return fstatat(descriptor, name, &info, AT_SYMLINK_NOFOLLOW) == 0 && info.st_mode & S_IFMT == S_IFREG
    }

    /// A new file at `relativePath` (folders separated by `/`, made as
    /// needed with `folderMode`), given `owner`; refuses a link anywhere on the way.
    public func createFile(_ relativePath: String, owner: FileOwner = FileOwner(mode: 0o600),
                           folderMode: mode_t = 0o700) throws(BlobStoreError) -> LocalFile {
        let parts = relativePath.split(separator: "/").map(String.init)
        guard let name = parts.last, !parts.contains(where: { $0 == ".." || $0 == "." }) else {
            throw .cannotWrite(path: "\(path)/\(relativePath)", errno: EINVAL)
        }
        var folder = descriptor
        defer { if folder != descriptor { close(folder) } }
        for part in parts.dropLast() {
            if mkdirat(folder, part, folderMode) != 0 && errno != EEXIST {
                throw .cannotWrite(path: "\(path)/\(relativePath)", errno: errno)
            }
            let next = openat(folder, part, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            guard next >= 0 else { throw .cannotWrite(path: "\(path)/\(relativePath)", errno: errno) }
            if folder != descriptor { close(folder) }
            folder = next
        }
        let fd = openat(folder, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .cannotWrite(path: "\(path)/\(relativePath)", errno: errno) }
        let file = LocalFile(adopting: fd, name: "\(path)/\(relativePath)")
        if owner != FileOwner(mode: 0o600) { try file.apply(owner) }
        return file
    }

    /// Removes the file `name` from the folder, if it is there.
    public func removeFile(_ name: String) {
        unlinkat(descriptor, name, 0)
    }

    /// Gives every folder under this one the owner and mode of `folders`,
    /// every regular file those of `files`, and this folder last, each
    /// through a descriptor opened without following a link: a link met on
    /// the way is left as it is. The folder comes last: a walk cut short is
    /// done again (the blob store is tightened at the next start), and a tree
    /// that stays private to backupd until its root is handed over cannot be
    /// changed by the new owner while the walk runs (a restore's staging folder).
    public func applyOwnership(folders: FileOwner, files: FileOwner) throws(BlobStoreError) {
        try Self.applyOwnership(in: descriptor, path: path, folders: folders, files: files)
        try folders.apply(to: descriptor, path: path)
    }

    private static func applyOwnership(in folder: Int32, path: String, folders: FileOwner, files: FileOwner) throws(BlobStoreError) {
        let listing = dup(folder)
        guard listing >= 0, let handle = fdopendir(listing) else { throw .cannotRead(path: path, errno: errno) }
        defer { closedir(handle) }
        while let entry = readdir(handle) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
            guard name != ".", name != ".." else { continue }
            let child = openat(folder, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC)
            guard child >= 0 else {
                if errno == ELOOP { continue }  // a link: left as it is
                throw .cannotWrite(path: "\(path)/\(name)", errno: errno)
            }
            defer { close(child) }
            var info = stat()
            guard fstat(child, &info) == 0 else { throw .cannotRead(path: "\(path)/\(name)", errno: errno) }
            switch info.st_mode & S_IFMT {
            case S_IFDIR:
                try applyOwnership(in: child, path: "\(path)/\(name)", folders: folders, files: files)
                try folders.apply(to: child, path: "\(path)/\(name)")
            case S_IFREG:
                try files.apply(to: child, path: "\(path)/\(name)")
            default:
                break
            }
        }
    }
}

/// The system's error number of a swift-system failure.
private func errorNumber(_ error: any Error) -> Int32 {
    (error as? Errno)?.rawValue ?? EIO
}

/// Operations on paths of backupd's own folders (the blob store, the
/// scratch folder, the spool, the archive cache, a restore's folders). None
/// follows a link.
public enum FileSystem {
    /// What is at a path.
    public enum Entry: Equatable, Sendable {
        case file(size: UInt64)
        case folder
        case other

        init(_ info: stat) {
            switch info.st_mode & S_IFMT {
            case S_IFREG: self = .file(size: UInt64(info.st_size))
            case S_IFDIR: self = .folder
            default: self = .other
            }
        }
    }

    /// Whether a folder can be made at `path`, or in it if it is one: tried
    /// in its nearest existing folder and removed again, since permissions
    /// alone do not say so (root, read-only and virtual file systems).
    public static func canMakeFolder(at path: String) -> Bool {
        var folder = path.isEmpty ? "." : path
        while access(folder, F_OK) != 0, folder != "/" {
            folder = folder.contains("/") ? String(folder[..<folder.lastIndex(of: "/")!]) : "."
            if folder.isEmpty { folder = "/" }
        }
        var template = Array("\(folder)/.backupd-check-XXXXXX".utf8CString)
        return template.withUnsafeMutableBufferPointer { buffer in
            guard let made = mkdtemp(buffer.baseAddress!) else { return false }
            rmdir(made)
            return true
        }
    }

    /// Whether the program at `path` may be run.
    public static func isExecutable(_ path: String) -> Bool { access(path, X_OK) == 0 }

    /// What is at `path` (a link is `other`), or nil when nothing is.
    public static func entry(at path: String) -> Entry? {
        var info = stat()
        guard lstat(path, &info) == 0 else { return nil }
        return Entry(info)
    }

    /// Removes a file if it is there: for clean-up, which must not fail.
    public static func remove(_ path: String) {
        unlink(path)
    }

    /// Removes a file; one that is not there counts as removed.
    public static func removeIfPresent(_ path: String) throws(BlobStoreError) {
        guard unlink(path) == 0 || errno == ENOENT else { throw .cannotWrite(path: path, errno: errno) }
    }

    /// Cuts a file (not a link to one) to `size` bytes.
    public static func truncate(_ path: String, to size: UInt64) throws(BlobStoreError) {
        let fd = open(path, O_WRONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { throw .cannotWrite(path: path, errno: errno) }
        defer { close(fd) }
        guard ftruncate(fd, off_t(size)) == 0 else { throw .cannotWrite(path: path, errno: errno) }
    }

    /// Renames within one file system: a file or folder appears whole at its new name.
    public static func rename(_ from: String, to: String) throws(BlobStoreError) {
        guard Glibc.rename(from, to) == 0 else { throw .cannotWrite(path: to, errno: errno) }
    }

    /// A new folder (not an existing one) of `mode`.
    public static func makeFolder(_ path: String, mode: mode_t = 0o700) throws(BlobStoreError) {
        guard mkdir(path, mode) == 0 else { throw .cannotWrite(path: path, errno: errno) }
    }

    /// `mkdir -p`; folders it makes get `mode` (less the umask).
    public static func makeFolders(_ path: String, mode: mode_t = 0o700) throws(BlobStoreError) {
        var current = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            current += "/" + component
            if mkdir(current, mode) != 0 && errno != EEXIST {
                throw .cannotWrite(path: current, errno: errno)
            }
        }
    }

    /// A new FIFO, private to backupd (a pipe a tool writes into by name).
    public static func makeFIFO(_ path: String) throws(BlobStoreError) {
        guard mkfifo(path, 0o600) == 0 else { throw .cannotWrite(path: path, errno: errno) }
    }

    /// Opens a FIFO for writing without waiting and closes it again: a
    /// reader still waiting for a writer sees its end.
    public static func openAndCloseForWriting(fifo path: String) {
        let fd = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC)
        if fd >= 0 { close(fd) }
    }

    /// Flushes a folder's entries (a rename into it) to the disk.
    public static func syncFolder(_ path: String) {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return }
        fsync(fd)
        close(fd)
    }

    /// Marks a file as used now (its modification time); false when it is not there.
    public static func touch(_ path: String) -> Bool {
        utimensat(AT_FDCWD, path, nil, AT_SYMLINK_NOFOLLOW) == 0
    }

    /// When the file at `path` was last modified, Unix seconds.
    public static func modified(_ path: String) -> Double? {
        var info = stat()
        guard lstat(path, &info) == 0 else { return nil }
        return Double(info.st_mtim.tv_sec) + Double(info.st_mtim.tv_nsec) / 1e9
    }

    /// A hard link `to` of the file at `from`; false where the file system
    /// refuses links between them (another file system, a limit), so the
    /// caller copies instead.
    public static func link(_ from: String, to: String) throws(BlobStoreError) -> Bool {
        if Glibc.link(from, to) == 0 { return true }
        guard errno == EXDEV || errno == EPERM || errno == EMLINK else { throw .cannotWrite(path: to, errno: errno) }
        return false
    }

    /// The names in a folder, without `.` and `..`.
    public static func names(in folder: String) throws(BlobStoreError) -> [String] {
        guard let handle = opendir(folder) else { throw .cannotRead(path: folder, errno: errno) }
        defer { closedir(handle) }
        var names: [String] = []
        while let entry = readdir(handle) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// The bytes an unprivileged writer may still put on the disk of
    /// `folder`; nil when the disk cannot be asked.
    public static func freeBytes(in folder: String) -> UInt64? {
        var info = statvfs()
        guard statvfs(folder, &info) == 0 else { return nil }
        return UInt64(info.f_bavail) * UInt64(info.f_frsize)
    }

    /// Whether the disk of `folder` keeps `reserved` bytes free after
    /// `bytes` more are written; true when the disk cannot be asked (the
    /// write itself then says what is wrong). Every room check asks here.
    public static func hasRoom(for bytes: UInt64, reserved: UInt64, in folder: String) -> Bool {
        guard let free = freeBytes(in: folder) else { return true }
        return free >= bytes + reserved
    }
}

/// Who owns a file that backupd writes, and its mode. `uid` and `gid` nil
/// keep backupd's own.
public struct FileOwner: Sendable, Equatable {
    public var uid: uid_t?
    public var gid: gid_t?
    public var mode: mode_t

    public init(uid: uid_t? = nil, gid: gid_t? = nil, mode: mode_t) {
        self.uid = uid
        self.gid = gid
        self.mode = mode
    }

    /// The owner of a folder, with the folder's mode (files take it without
    /// the execute bits).
    public init(ofFolder path: String) throws(BlobStoreError) {
        var info = stat()
        guard lstat(path, &info) == 0 else { throw .cannotRead(path: path, errno: errno) }
        self.init(uid: info.st_uid, gid: info.st_gid, mode: info.st_mode & 0o7777)
    }

    /// The same owner, with the mode a file in a folder of this owner gets.
    public var forFiles: FileOwner { FileOwner(uid: uid, gid: gid, mode: mode & 0o666) }

    /// Gives an open file this owner and mode.
    func apply(to descriptor: Int32, path: String) throws(BlobStoreError) {
        if uid != nil || gid != nil {
            guard fchown(descriptor, uid ?? uid_t.max, gid ?? gid_t.max) == 0 else { throw .cannotWrite(path: path, errno: errno) }
        }
        guard fchmod(descriptor, mode) == 0 else { throw .cannotWrite(path: path, errno: errno) }
    }
}

/// The most a key, certificate or configuration file may hold: far more
/// than any real one, little enough that reading a wrong file (a disk
/// image, `/dev/zero`) is refused at once rather than parsed for minutes.
public let maximumKeyFileBytes = 1 << 20

/// A file an operator names (a key file, a certificate, the
/// configuration), read whole, of at most `maximumKeyFileBytes`. Links are
/// followed (certificates often live in a renewal tool's folder of links);
/// only a regular file is read, opened without blocking, so a FIFO or a
/// terminal named by mistake is refused rather than waited on. Errors name
/// `what` and the path.
public func readSmallFile(_ path: String, _ what: String) throws(BackupError) -> [UInt8] {
    let descriptor: FileDescriptor
    do {
        descriptor = try FileDescriptor.open(path, .readOnly, options: [.nonBlocking, .closeOnExec])
    } catch {
        throw .invalidArgument("cannot read \(what) \(path): \(error)")
    }
    defer { try? descriptor.close() }
    guard (try? descriptor.stat().type) == .regular else { throw .invalidArgument("\(what) \(path) is not a regular file") }
    var bytes = [UInt8](repeating: 0, count: maximumKeyFileBytes + 1)
    var count = 0
    do {
        while count < bytes.count {
            let read = try bytes.withUnsafeMutableBytes { try descriptor.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[count...])) }
            if read == 0 { break }
            count += read
        }
    } catch {
        throw .invalidArgument("cannot read \(what) \(path): \(error)")
    }
    guard count <= maximumKeyFileBytes else {
        throw .invalidArgument("\(what) \(path) is larger than \(maximumKeyFileBytes >> 20) MiB")
    }
    return Array(bytes.prefix(count))
}
