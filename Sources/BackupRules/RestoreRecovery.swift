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

    /// Whether a folder of the swap may have been renamed: from the recorded
    /// swap on. Before it, a marker in the store (the tenant's to plant)
    /// cannot mean the restored files are there.
    public var foldersMayBeSwapped: Bool {
        switch self {
        case .planned, .staged, .checked: false
        case .swapRecorded, .foldersSwapped, .databasesSwapped, .finished: true
        }
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

    /// The decision, from the last recorded step and whether the target's
    /// name belongs to the database the restore made (its staging database,
    /// known by oid: not a missing staging name, which anyone with the right
    /// may drop). Before the database swap commits the target can always go
    /// back; after it, only forward. From the recorded swap on, the folders
    /// may be part way through the swap's renames (or its undoing), so they
    /// are always put back: putting back finishes whichever renames were
    /// done and changes nothing where none was. Before it, no rename was
    /// made, and a marker in the store (the tenant's to plant) changes nothing.
    public static func decide(after step: RestoreStep, restoredDatabaseInPlace: Bool) -> RestoreRecovery {
        switch step {
        case .planned, .staged, .checked, .swapRecorded:
            .rollBack(undoFolderSwap: step.foldersMayBeSwapped)
        case .foldersSwapped:
            // The database swap may have committed without its step being recorded.
            restoredDatabaseInPlace ? .complete : .rollBack(undoFolderSwap: true)
        case .databasesSwapped, .finished:
            .complete
        }
    }
}

/// The forward path of a restore in the process that runs it: the job does
/// the work and reports each event; this says what to record and, when
/// something fails, how the restore ends, in the same terms recovery uses
/// (`RestoreRecovery`). Before the database swap commits every failure rolls
/// back; once it has committed, nothing rolls back: what fails after it is
/// left to recovery, which completes the restore.
public struct RestoreForwardPath: Sendable, Equatable {
    public enum State: Sendable, Equatable {
        /// The last step recorded (or being recorded).
        case at(RestoreStep)
        /// The database swap committed: the restore is being completed.
        case completing
        /// The restore has ended (rolled back or left to recovery); later events change nothing.
        case ended
    }

    public enum Event: Sendable, Equatable {
        /// The staging database and folder are complete.
        case staged
        /// Both were checked against the backup.
        case checked
        /// The swap begins: from here the target may be mid-swap.
        case swapBegins
        /// The folders were swapped.
        case foldersSwapped
        /// The database renames' transaction ended: committed, not, or with an outcome nobody can see now.
        case databaseSwap(DatabaseSwapOutcome)
        /// The work of the current step (or recording it) failed.
        case failed
    }

    public enum DatabaseSwapOutcome: Sendable, Equatable {
        case committed, notCommitted, unseen
    }

    public enum Action: Sendable, Equatable {
        /// Record the step in the catalog before going on.
        case record(RestoreStep)
        /// End the restore: roll back (with the failure as its reason) or complete it.
        case end(RestoreRecovery)
        /// Leave the restore RUNNING for recovery, which decides once it can see the outcome.
        case leaveToRecovery
    }

    public private(set) var state = State.at(.planned)

    public init() {}

    /// The actions an event calls for, in order. An event out of order is a
    /// bug in the job, not something input can cause.
    public mutating func handle(_ event: Event) -> [Action] {
        switch (state, event) {
        case (.at(.planned), .staged): return advance(to: .staged)
        case (.at(.staged), .checked): return advance(to: .checked)
        case (.at(.checked), .swapBegins): return advance(to: .swapRecorded)
        case (.at(.swapRecorded), .foldersSwapped): return advance(to: .foldersSwapped)
        case (.at(.foldersSwapped), .databaseSwap(.committed)):
            state = .completing
            return [.record(.databasesSwapped), .end(.complete)]
        case (.at(.foldersSwapped), .databaseSwap(.notCommitted)), (.at(.foldersSwapped), .failed):
            state = .ended
            return [.end(.rollBack(undoFolderSwap: true))]
        case (.at(.foldersSwapped), .databaseSwap(.unseen)), (.completing, .failed):
            state = .ended
            return [.leaveToRecovery]
        case (.at(.planned), .failed), (.at(.staged), .failed), (.at(.checked), .failed):
            state = .ended
            return [.end(.rollBack(undoFolderSwap: false))]
        case (.at(.swapRecorded), .failed):
            // A folder swap that failed put back what it could; a rename of its undoing that failed too is tried again.
            state = .ended
            return [.end(.rollBack(undoFolderSwap: true))]
        case (.ended, .failed):
            return []
        default:
            preconditionFailure("restore event \(event) in state \(state)")
        }
    }

    private mutating func advance(to step: RestoreStep) -> [Action] {
        state = .at(step)
        return [.record(step)]
    }
}
