import BackupRules
#if canImport(Glibc)
import Glibc
#endif

/// The folders a restore of file documents works with beside the target's
/// file store: `staging` (the restored files are written there), `previous`
/// (the store's own files, moved aside by the swap) and `superseded` (an
/// older previous copy, moved aside in its turn). Markers say what is
/// backupd's: the job's marker on what it staged (and so on the store once
/// swapped), `.backupd-previous` on copies moved aside. Nothing without its
/// marker is ever removed or replaced, and a swap is renames only, undone
/// in reverse when one fails.
public struct RestoreFolders: Sendable {
    public let fileStore: String
    public let staging: String
    public let previous: String
    /// Empty for a restore planned before superseded copies existed.
    public let superseded: String
    /// The file the staging folder carries, so that a restarted backupd can
    /// tell the restored files from the target's own.
    public let jobMarker: String

    /// The file a store moved aside by a restore carries, so that only such
    /// a folder is ever deleted as "the previous state".
    public static let previousMarker = ".backupd-previous"

    public init(fileStore: String, staging: String, previous: String, superseded: String, jobID: String) {
        self.fileStore = fileStore
        self.staging = staging
        self.previous = previous
        self.superseded = superseded
        self.jobMarker = ".backupd-restore-\(jobID)"
    }

    /// Whether the store holds this restore's files (the folder swap happened).
    public var restoredFilesInStore: Bool {
        guard let (parent, store) = try? Self.locate(fileStore) else { return false }
        return Self.holds(parent, store, jobMarker)
    }

    /// Makes the staging folder, private to backupd and marked as this
    /// job's, removing one an earlier attempt of the same job left, and
    /// returns it held open (every file goes in relative to it, so nothing
    /// done to its path can send a file elsewhere) with the owner and mode
    /// of the store (or of the folder it will be made in), which the
    /// staging folder gets once it is complete.
    public func makeStaging() throws -> (folder: OpenFolder, owner: FileOwner) {
        let (parent, store) = try Self.locate(fileStore)
        let staged = Self.name(of: staging)
        let owner = parent.entry(named: store) == .folder ? try parent.folder(named: store).owner : parent.owner
        if parent.entry(named: staged) == .folder {
            guard Self.holds(parent, staged, jobMarker) else {
                throw RestoreFolderError.notOurs(staging, "exists and was not made by this restore; move it away")
            }
            try parent.removeTree(named: staged, removingLast: jobMarker)
        }
        try parent.makeFolder(staged)
        let folder = try parent.folder(named: staged)
        _ = try folder.createFile(jobMarker)
        return (folder, owner)
    }

    /// The previous copy (if any) goes aside as superseded, the store
    /// becomes the previous copy, the staging folder the store; a failing
    /// rename puts back what was moved before it.
    public func swap() throws {
        let (parent, store) = try Self.locate(fileStore)
        let (staged, aside, older) = (Self.name(of: staging), Self.name(of: previous), Self.name(of: superseded))
        let hadPrevious = parent.entry(named: aside) == .folder
        if hadPrevious {
            guard Self.holds(parent, aside, Self.previousMarker) else {
                throw RestoreFolderError.notOurs(previous, "exists and was not made by backupd; move it away to restore here")
            }
            do { try parent.rename(aside, to: older) } catch {
                throw RestoreFolderError.cannotMove(previous, "aside", error)
            }
        }
        let hadFiles = parent.entry(named: store) != nil
        /// Puts back what was moved before a rename that failed.
        func undo() {
            if hadFiles, (try? parent.rename(aside, to: store)) != nil { Self.removeMarker(parent, store, Self.previousMarker) }
            if hadPrevious { try? parent.rename(older, to: aside) }
        }
        if hadFiles {
            do { try parent.rename(store, to: aside) } catch {
                if hadPrevious { try? parent.rename(older, to: aside) }
                throw RestoreFolderError.cannotMove(fileStore, "aside", error)
            }
            // Marks the folder moved aside as backupd's to delete later.
            _ = try? parent.folder(named: aside).createFile(Self.previousMarker)
        }
        // What is renamed into place must be the folder this restore staged (marked, and no link),
        // and what is in place after the rename must be that same folder: the name could be swapped between.
        guard let stagedFolder = try? parent.folder(named: staged), stagedFolder.holdsFile(jobMarker) else {
            undo()
            throw RestoreFolderError.notOurs(staging, "is no longer the folder this restore staged; move it away")
        }
        do { try parent.rename(staged, to: store) } catch {
            undo()
            throw RestoreFolderError.cannotMove(fileStore, "into place (the restored files)", error)
        }
        guard let placed = try? parent.folder(named: store), placed.isSameFolder(as: stagedFolder) else {
            try? parent.rename(store, to: staged)
            undo()
            throw RestoreFolderError.notOurs(staging, "was replaced while the restore swapped it in; move it away")
        }
    }

    /// Puts the store's own files back if the restored ones (known by the
    /// job's marker) are in their place, and the previous copy back from
    /// where the swap moved it aside: whichever rename of the swap (or of
    /// its undoing) a killed process got to, this finishes putting things
    /// back. Whatever cannot be moved stays.
    public func unswap() {
        guard let (parent, store) = try? Self.locate(fileStore) else { return }
        let (staged, aside, older) = (Self.name(of: staging), Self.name(of: previous), Self.name(of: superseded))
        if Self.holds(parent, store, jobMarker) {
            guard (try? parent.rename(store, to: staged)) != nil else { return }
        }
        if parent.entry(named: store) == nil && parent.entry(named: aside) != nil {
            if (try? parent.rename(aside, to: store)) != nil { Self.removeMarker(parent, store, Self.previousMarker) }
        }
        if !superseded.isEmpty, parent.entry(named: aside) == nil, parent.entry(named: older) == .folder {
            try? parent.rename(older, to: aside)
        }
    }

    /// Takes the job's marker off the store once the restore is complete.
    public func removeJobMarker() {
        guard !fileStore.isEmpty, let (parent, store) = try? Self.locate(fileStore) else { return }
        Self.removeMarker(parent, store, jobMarker)
    }

    /// What became of a folder (or database) a restore meant to remove.
    public enum Removal: Equatable, Sendable { case absent, removed, notOurs }

    /// Removes a folder that carries `marker`, so backupd deletes only what
    /// it made; a folder (or link) there without the marker is someone
    /// else's and stays, as does anything reached through a link. The app
    /// may still write into the folder, so it is removed without following
    /// links (`removeTree`), the marker last.
    public static func remove(_ folder: String, carrying marker: String) throws -> Removal {
        let parent: OpenFolder, name: String
        do { (parent, name) = try locate(folder) } catch { return error.errorNumber == ENOENT ? .absent : .notOurs }
        switch parent.entry(named: name) {
        case nil: return .absent
        case .folder where holds(parent, name, marker):
            try parent.removeTree(named: name, removingLast: marker)
            return .removed
        default: return .notOurs
        }
    }

    /// The folder holding `path`, reached from `/` without following a link
    /// (`OpenFolder(reachedWithoutLinks:)`), and the name of `path` in it.
    /// Every operation goes through it: a folder above the store that the
    /// tenant swaps for a link to another tenant's never leads there.
    private static func locate(_ path: String) throws(BlobStoreError) -> (OpenFolder, String) {
        guard let slash = path.lastIndex(of: "/"), slash != path.startIndex else { throw .cannotRead(path: path, errno: EINVAL) }
        return (try OpenFolder(reachedWithoutLinks: String(path[..<slash])), name(of: path))
    }

    private static func name(of path: String) -> String {
        path.lastIndex(of: "/").map { String(path[path.index(after: $0)...]) } ?? path
    }

    /// Whether `name` in `parent` is a folder (no link) holding the file `marker`.
    private static func holds(_ parent: OpenFolder, _ name: String, _ marker: String) -> Bool {
        (try? parent.folder(named: name))?.holdsFile(marker) ?? false
    }

    /// Takes `marker` out of the folder `name` in `parent`, a folder and no link, if it is there.
    private static func removeMarker(_ parent: OpenFolder, _ name: String, _ marker: String) {
        (try? parent.folder(named: name))?.removeFile(marker)
    }
}

/// Why a restore's folders could not be prepared or swapped; the paths are
/// the tenant's own file store's, so they are said as they are.
public enum RestoreFolderError: ReportableError, CustomStringConvertible {
    case notOurs(String, String)
    case cannotMove(String, String, any Error)

    public var description: String {
        switch self {
        case let .notOurs(path, what): "\(path) \(what)"
        case let .cannotMove(path, whither, error):
            "cannot move \(path) \(whither): \((error as? BlobStoreError).map { String(cString: strerror($0.errorNumber)) } ?? "\(error)")"
        }
    }

    public var publicError: BackupError { .failedPrecondition(description) }
    public var logDetail: String { description }
}
