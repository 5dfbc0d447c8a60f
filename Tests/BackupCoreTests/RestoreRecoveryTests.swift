import BackupCore
import Testing

@Suite struct RestoreRecoveryTests {
    /// Every step against every combination of what can be observed: before
    /// the database swap commits the target goes back, after it forward.
    @Test(arguments: RestoreStep.allCases)
    func everyStepHasADecisionForEveryObservation(_ step: RestoreStep) {
        for staging in [true, false] {
            for marked in [true, false] {
                let decision = RestoreRecovery.decide(after: step, seeing: RestoreFacts(stagingDatabaseExists: staging, restoredFilesInStore: marked))
                let expected: RestoreRecovery = switch step {
                case .planned, .staged, .checked, .previousDropped, .swapRecorded: .rollBack(undoFolderSwap: marked)
                case .foldersSwapped: staging ? .rollBack(undoFolderSwap: marked) : .complete
                case .databasesSwapped, .finished: .complete
                }
                #expect(decision == expected, "\(step), staging database \(staging), restored files in the store \(marked)")
            }
        }
    }

    @Test func theStepsAreRecordedInTheOrderTheyHappen() {
        #expect(RestoreStep.allCases.map(\.rawValue) == [
            "planned", "staged", "checked", "previous-dropped", "swap-recorded", "folders-swapped", "databases-swapped", "finished",
        ])
    }
}
