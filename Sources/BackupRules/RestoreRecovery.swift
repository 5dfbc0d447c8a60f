/// The steps of a restore, recorded in the catalog as each is reached, so
/// that a backupd taking over from a dead one knows how far it got.
public enum RestoreStep: String, CaseIterable, Sendable {
    /// Staging and previous names recorded; nothing made yet.
    case planned
    /// The staging database and folder are complete.
    case staged
    /// Both were checked against the backup.
    case checked
    /// From here on the target may be mid-swap.
    case swapRecorded = "swap-recorded"
    /// The file store is the restored one; the old one is `.prerestore`, and
    /// the `.prerestore` before it is set aside as superseded.
    case foldersSwapped = "folders-swapped"
    /// The database renames committed: the restore is in place.
    case databasesSwapped = "databases-swapped"
    case finished
}

/// What a backupd taking over a dead process's restore sees for itself.
public struct RestoreFacts: Sendable, Equatable {
    /// The target's name belongs to the database the restore made (its
    /// staging database, known by oid): the database swap committed. Not a
    /// missing staging name, which anyone with the right may drop.
    public var restoredDatabaseInPlace: Bool
    /// The file store carries the restore's marker: its folders were swapped.
    public var restoredFilesInStore: Bool

    public init(restoredDatabaseInPlace: Bool, restoredFilesInStore: Bool) {
        self.restoredDatabaseInPlace = restoredDatabaseInPlace
        self.restoredFilesInStore = restoredFilesInStore
    }
}

/// How a restore whose process died ends: fully as it was, or fully restored.
public enum RestoreRecovery: Sendable, Equatable {
    /// Put the target's own folders back if they were swapped, drop the
    /// staging copies; the restore FAILED and the target is as it was.
    case rollBack(undoFolderSwap: Bool)
    /// The databases were swapped, so the files were too: the restore is
    /// complete and FINISHED.
    case complete

    /// The decision, from the last recorded step and what is observed. Before
    /// the database swap commits the target can always go back; after it,
    /// only forward.
    public static func decide(after step: RestoreStep, seeing facts: RestoreFacts) -> RestoreRecovery {
        switch step {
        case .planned, .staged, .checked, .swapRecorded:
            .rollBack(undoFolderSwap: facts.restoredFilesInStore)
        case .foldersSwapped:
            // The database swap may have committed without its step being recorded.
            facts.restoredDatabaseInPlace ? .complete : .rollBack(undoFolderSwap: facts.restoredFilesInStore)
        case .databasesSwapped, .finished:
            .complete
        }
    }
}
