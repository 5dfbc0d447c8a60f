import BackupRules
import Testing

@Suite struct RestoreRecoveryTests {
    /// docs/architecture.md's table, written out: every step against what
    /// can be observed. Before the database swap commits the target goes
    /// back, after it forward; from the recorded swap on, the folders are
    /// always put back, whichever of the swap's renames were made.
    /// `inPlace`: the target's name belongs to the restored database.
    static let table: [(step: RestoreStep, inPlace: Bool, decision: RestoreRecovery)] = [
        (.planned, true, .rollBack(undoFolderSwap: false)), (.planned, false, .rollBack(undoFolderSwap: false)),
        (.staged, true, .rollBack(undoFolderSwap: false)), (.staged, false, .rollBack(undoFolderSwap: false)),
        (.checked, true, .rollBack(undoFolderSwap: false)), (.checked, false, .rollBack(undoFolderSwap: false)),
        (.swapRecorded, true, .rollBack(undoFolderSwap: true)), (.swapRecorded, false, .rollBack(undoFolderSwap: true)),
        (.foldersSwapped, true, .complete), (.foldersSwapped, false, .rollBack(undoFolderSwap: true)),
        (.databasesSwapped, true, .complete), (.databasesSwapped, false, .complete),
        (.finished, true, .complete), (.finished, false, .complete),
    ]

    @Test func everyStepHasTheTablesDecisionForEveryObservation() {
        #expect(Set(Self.table.map(\.step.rawValue)) == Set(RestoreStep.allCases.map(\.rawValue)), "the table covers every step")
        #expect(Self.table.count == RestoreStep.allCases.count * 2)
        for row in Self.table {
            #expect(RestoreRecovery.decide(after: row.step, restoredDatabaseInPlace: row.inPlace) == row.decision,
                    "\(row.step), restored database in place \(row.inPlace)")
        }
    }

    @Test func theStepsAreRecordedInTheOrderTheyHappen() {
        #expect(RestoreStep.allCases.map(\.rawValue) == [
            "planned", "staged", "checked", "swap-recorded", "folders-swapped", "databases-swapped", "finished",
        ])
    }
}

@Suite struct RestoreForwardPathTests {
    typealias Path = RestoreForwardPath

    /// Every event that can reach each state of the forward path, with the
    /// actions it calls for and the state after. Before the database swap
    /// commits a failure rolls back (undoing the folder swap once it is
    /// done); after it, whatever fails is left to recovery, which completes.
    static let table: [(state: Path.State, event: Path.Event, actions: [Path.Action], next: Path.State)] = [
        (.at(.planned), .staged, [.record(.staged)], .at(.staged)),
        (.at(.planned), .failed, [.end(.rollBack(undoFolderSwap: false))], .ended),
        (.at(.staged), .checked, [.record(.checked)], .at(.checked)),
        (.at(.staged), .failed, [.end(.rollBack(undoFolderSwap: false))], .ended),
        (.at(.checked), .swapBegins, [.record(.swapRecorded)], .at(.swapRecorded)),
        (.at(.checked), .failed, [.end(.rollBack(undoFolderSwap: false))], .ended),
        (.at(.swapRecorded), .foldersSwapped, [.record(.foldersSwapped)], .at(.foldersSwapped)),
        // Refused before anything moved, or a folder swap that put the folders back itself.
        (.at(.swapRecorded), .failed, [.end(.rollBack(undoFolderSwap: true))], .ended),
        (.at(.foldersSwapped), .databaseSwap(.committed), [.record(.databasesSwapped), .end(.complete)], .completing),
        (.at(.foldersSwapped), .databaseSwap(.notCommitted), [.end(.rollBack(undoFolderSwap: true))], .ended),
        (.at(.foldersSwapped), .databaseSwap(.unseen), [.leaveToRecovery], .ended),
        // Recording the folder swap failed: the folders go back.
        (.at(.foldersSwapped), .failed, [.end(.rollBack(undoFolderSwap: true))], .ended),
        // The restore is in place; recording it, removing the copies or finishing failed.
        (.completing, .failed, [.leaveToRecovery], .ended),
        // The cleanup of an ended restore failed in turn: nothing more to decide.
        (.ended, .failed, [], .ended),
    ]

    @Test func everyEventThatCanOccurHasTheTablesActions() {
        for row in Self.table {
            var path = Path(at: row.state)
            #expect(path.handle(row.event) == row.actions, "\(row.state) on \(row.event)")
            #expect(path.state == row.next, "\(row.state) on \(row.event)")
        }
    }

    /// The events of a restore that succeeds record every step recovery
    /// reads, in order, and end it complete.
    @Test func aRestoreThatSucceedsRecordsEveryStepInOrder() {
        var path = Path()
        let actions = [Path.Event.staged, .checked, .swapBegins, .foldersSwapped, .databaseSwap(.committed)].flatMap { path.handle($0) }
        #expect(actions == [.record(.staged), .record(.checked), .record(.swapRecorded), .record(.foldersSwapped),
                            .record(.databasesSwapped), .end(.complete)])
    }

    /// Where the forward path rolls back, recovery after a crash at the same
    /// step would too (with nothing swapped), and where it completes, so would
    /// recovery (with the database in place): the two never disagree.
    @Test func theForwardPathAndRecoveryAgree() {
        for row in Self.table {
            guard case .at(let step) = row.state, let ending = row.actions.compactMap({ action -> RestoreRecovery? in
                if case .end(let ending) = action { return ending } else { return nil }
            }).first else { continue }
            #expect(RestoreRecovery.decide(after: step, restoredDatabaseInPlace: ending == .complete) == ending, "\(step) on \(row.event)")
        }
    }
}

extension RestoreForwardPath {
    /// A path in `state`, reached by the events that lead there.
    init(at state: State) {
        self.init()
        let events: [Event] = switch state {
        case .at(.planned): []
        case .at(.staged): [.staged]
        case .at(.checked): [.staged, .checked]
        case .at(.swapRecorded): [.staged, .checked, .swapBegins]
        case .at(.foldersSwapped): [.staged, .checked, .swapBegins, .foldersSwapped]
        case .completing: [.staged, .checked, .swapBegins, .foldersSwapped, .databaseSwap(.committed)]
        case .ended: [.failed]
        case .at(.databasesSwapped), .at(.finished): preconditionFailure("the forward path never rests at \(state)")
        }
        for event in events { _ = handle(event) }
    }
}
