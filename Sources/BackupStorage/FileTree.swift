import BackupRules
#if canImport(Glibc)
import Glibc
#endif

/// Deletes a folder and everything in it without following a single link,
/// for folders that someone else can write to while they are deleted (an
/// app's previous file store). Every entry is opened and removed relative to
/// the descriptor of the folder holding it, with `O_NOFOLLOW`: a folder
/// swapped for a link halfway through is removed as a link, never entered,
/// so nothing outside the tree is touched. `last`, an entry of the top
/// folder (a marker), goes only after everything else, so a deletion cut
/// short still carries it and can be finished later. A missing folder is
/// not an error.
public func removeTree(_ path: String, removingLast last: String? = nil) throws(BlobStoreError) {
    guard let slash = path.lastIndex(of: "/"), slash != path.startIndex, slash != path.index(before: path.endIndex) else {
        throw .cannotWrite(path: path, errno: EINVAL)
    }
    // The folder holding it is reached from `/` without following a link either (`OpenFolder(reachedWithoutLinks:)`).
    let parent: OpenFolder
    do { parent = try OpenFolder(reachedWithoutLinks: String(path[..<slash])) } catch where error.errorNumber == ENOENT { return }
    try parent.removeTree(named: String(path[path.index(after: slash)...]), removingLast: last)
}

func removeEntry(_ name: String, in folder: Int32, path: String, last: String? = nil) throws(BlobStoreError) {
    let child = openat(folder, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
    if child >= 0 {
        defer { close(child) }
        try removeContents(of: child, path: path, last: last)
        guard unlinkat(folder, name, AT_REMOVEDIR) == 0 || errno == ENOENT else { throw .cannotWrite(path: path, errno: errno) }
    } else if errno == ENOTDIR || errno == ELOOP {
        guard unlinkat(folder, name, 0) == 0 || errno == ENOENT else { throw .cannotWrite(path: path, errno: errno) }
    } else if errno != ENOENT {
        throw .cannotWrite(path: path, errno: errno)
    }
}

private func removeContents(of folder: Int32, path: String, last: String?) throws(BlobStoreError) {
    for name in try folderEntries(folder, path: path) where name != last {
        try removeEntry(name, in: folder, path: path + "/" + name)
    }
    if let last, unlinkat(folder, last, 0) != 0, errno != ENOENT { throw .cannotWrite(path: path + "/" + last, errno: errno) }
}

/// The names in an open folder, without `.` and `..`; the descriptor stays open.
func folderEntries(_ folder: Int32, path: String) throws(BlobStoreError) -> [String] {
    let listing = dup(folder)
    guard listing >= 0, let stream = fdopendir(listing) else { throw .cannotRead(path: path, errno: errno) }
    defer { closedir(stream) }
    var names: [String] = []
    while let entry = readdir(stream) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        if name != ".", name != ".." { names.append(name) }
    }
    return names
}

/// The names in the folder at `path` (not followed if it is a link), without `.` and `..`.
func folderEntries(atPath path: String) throws(BlobStoreError) -> [String] {
    let folder = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
    guard folder >= 0 else { throw .cannotRead(path: path, errno: errno) }
    defer { close(folder) }
    return try folderEntries(folder, path: path)
}
