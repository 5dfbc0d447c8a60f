import BackupRules
import Testing

@Suite struct RestoreRecoveryTests {
    /// docs/architecture.md's table, written out: every step against every
    /// combination of what can be observed. Before the database swap commits
    /// the target goes back, after it forward.
    /// `inPlace`: the target's name belongs to the restored database; `marked`: the store holds the restored files.
    static let table: [(step: RestoreStep, inPlace: Bool, marked: Bool, decision: RestoreRecovery)] = [
        (.planned, true, true, .rollBack(undoFolderSwap: true)), (.planned, true, false, .rollBack(undoFolderSwap: false)),
        (.planned, false, true, .rollBack(undoFolderSwap: true)), (.planned, false, false, .rollBack(undoFolderSwap: false)),
        (.staged, true, true, .rollBack(undoFolderSwap: true)), (.staged, true, false, .rollBack(undoFolderSwap: false)),
        (.staged, false, true, .rollBack(undoFolderSwap: true)), (.staged, false, false, .rollBack(undoFolderSwap: false)),
        (.checked, true, true, .rollBack(undoFolderSwap: true)), (.checked, true, false, .rollBack(undoFolderSwap: false)),
        (.checked, false, true, .rollBack(undoFolderSwap: true)), (.checked, false, false, .rollBack(undoFolderSwap: false)),
        (.swapRecorded, true, true, .rollBack(undoFolderSwap: true)), (.swapRecorded, true, false, .rollBack(undoFolderSwap: false)),
        (.swapRecorded, false, true, .rollBack(undoFolderSwap: true)), (.swapRecorded, false, false, .rollBack(undoFolderSwap: false)),
        (.foldersSwapped, true, true, .complete), (.foldersSwapped, true, false, .complete),
        (.foldersSwapped, false, true, .rollBack(undoFolderSwap: true)), (.foldersSwapped, false, false, .rollBack(undoFolderSwap: false)),
        (.databasesSwapped, true, true, .complete), (.databasesSwapped, true, false, .complete),
        (.databasesSwapped, false, true, .complete), (.databasesSwapped, false, false, .complete),
        (.finished, true, true, .complete), (.finished, true, false, .complete),
        (.finished, false, true, .complete), (.finished, false, false, .complete),
    ]

    @Test func everyStepHasTheTablesDecisionForEveryObservation() {
        #expect(Set(Self.table.map(\.step.rawValue)) == Set(RestoreStep.allCases.map(\.rawValue)), "the table covers every step")
        #expect(Self.table.count == RestoreStep.allCases.count * 4)
        for row in Self.table {
            let decision = RestoreRecovery.decide(after: row.step, seeing: RestoreFacts(restoredDatabaseInPlace: row.inPlace,
                                                                                        restoredFilesInStore: row.marked))
            #expect(decision == row.decision, "\(row.step), restored database in place \(row.inPlace), restored files in the store \(row.marked)")
        }
    }

    @Test func theStepsAreRecordedInTheOrderTheyHappen() {
        #expect(RestoreStep.allCases.map(\.rawValue) == [
            "planned", "staged", "checked", "swap-recorded", "folders-swapped", "databases-swapped", "finished",
        ])
    }
}
