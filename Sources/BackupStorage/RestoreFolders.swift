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
    public var restoredFilesInStore: Bool { Self.hasMarker(fileStore, jobMarker) }

    /// Makes the staging folder, private to backupd and marked as this
    /// job's, removing one an earlier attempt of the same job left, and
    /// returns it held open (every file goes in relative to it, so nothing
    /// done to its path can send a file elsewhere) with the owner and mode
    /// of the store (or of the folder it will be made in), which the
    /// staging folder gets once it is complete.
    public func makeStaging() throws -> (folder: OpenFolder, owner: FileOwner) {
        let parent = String(fileStore[..<fileStore.lastIndex(of: "/")!])
        let owner = try FileOwner(ofFolder: FileSystem.entry(at: fileStore) == .folder ? fileStore : parent)
        if FileSystem.entry(at: staging) == .folder {
            guard Self.hasMarker(staging, jobMarker) else {
                throw RestoreFolderError.notOurs(staging, "exists and was not made by this restore; move it away")
            }
            try removeTree(staging, removingLast: jobMarker)
        }
        try FileSystem.makeFolder(staging)
        let folder = try OpenFolder(staging)
        _ = try folder.createFile(jobMarker)
        return (folder, owner)
    }

    /// The previous copy (if any) goes aside as superseded, the store
    /// becomes the previous copy, the staging folder the store; a failing
    /// rename puts back what was moved before it.
    public func swap() throws {
        let hadPrevious = FileSystem.entry(at: previous) == .folder
        if hadPrevious {
            guard Self.hasMarker(previous, Self.previousMarker) else {
                throw RestoreFolderError.notOurs(previous, "exists and was not made by backupd; move it away to restore here")
            }
            do { try FileSystem.rename(previous, to: superseded) } catch {
                throw RestoreFolderError.cannotMove(previous, "aside", error)
            }
        }
        let hadFiles = FileSystem.entry(at: fileStore) != nil
        if hadFiles {
            do { try FileSystem.rename(fileStore, to: previous) } catch {
                if hadPrevious { try? FileSystem.rename(superseded, to: previous) }
                throw RestoreFolderError.cannotMove(fileStore, "aside", error)
            }
            // Marks the folder moved aside as backupd's to delete later.
            _ = try? OpenFolder(previous).createFile(Self.previousMarker)
        }
        // What is renamed into place must be the folder this restore staged (marked, and no link).
        guard Self.hasMarker(staging, jobMarker) else {
            if hadFiles, (try? FileSystem.rename(previous, to: fileStore)) != nil { Self.removeMarker(fileStore, Self.previousMarker) }
            if hadPrevious { try? FileSystem.rename(superseded, to: previous) }
            throw RestoreFolderError.notOurs(staging, "is no longer the folder this restore staged; move it away")
        }
        do { try FileSystem.rename(staging, to: fileStore) } catch {
            if hadFiles, (try? FileSystem.rename(previous, to: fileStore)) != nil { Self.removeMarker(fileStore, Self.previousMarker) }
            if hadPrevious { try? FileSystem.rename(superseded, to: previous) }
            throw RestoreFolderError.cannotMove(fileStore, "into place (the restored files)", error)
        }
    }

    /// Puts the store's own files back if the restored ones (known by the
    /// job's marker) are in their place, and the previous copy back from
    /// where the swap moved it aside. Whatever cannot be moved stays.
    public func unswap() {
        if Self.hasMarker(fileStore, jobMarker) {
            guard (try? FileSystem.rename(fileStore, to: staging)) != nil else { return }
        }
        if FileSystem.entry(at: fileStore) == nil && FileSystem.entry(at: previous) != nil {
            if (try? FileSystem.rename(previous, to: fileStore)) != nil { Self.removeMarker(fileStore, Self.previousMarker) }
        }
        if !superseded.isEmpty, FileSystem.entry(at: previous) == nil, FileSystem.entry(at: superseded) == .folder {
            try? FileSystem.rename(superseded, to: previous)
        }
    }

    /// Takes the job's marker off the store once the restore is complete.
    public func removeJobMarker() {
        if !fileStore.isEmpty { Self.removeMarker(fileStore, jobMarker) }
    }

    /// What became of a folder (or database) a restore meant to remove.
    public enum Removal: Equatable, Sendable { case absent, removed, notOurs }

    /// Removes a folder that carries `marker`, so backupd deletes only what
    /// it made; a folder (or link) there without the marker is someone
    /// else's and stays. The app may still write into the folder, so it is
    /// removed without following links (`removeTree`), the marker last.
    public static func remove(_ folder: String, carrying marker: String) throws -> Removal {
        switch FileSystem.entry(at: folder) {
        case nil: return .absent
        case .folder where hasMarker(folder, marker):
            try removeTree(folder, removingLast: marker)
            return .removed
        default: return .notOurs
        }
    }

    /// Whether `folder` is a folder (no link) holding the file `marker`.
    static func hasMarker(_ folder: String, _ marker: String) -> Bool {
        (try? OpenFolder(folder))?.holdsFile(marker) ?? false
    }

    /// Takes `marker` out of `folder`, a folder and no link, if it is there.
    static func removeMarker(_ folder: String, _ marker: String) {
        (try? OpenFolder(folder))?.removeFile(marker)
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
