@testable import BackupServer
import Testing

/// A running job's rules, one table per rule: each row is an event and the
/// actions it must produce. No catalog, no clock: times are offsets from the claim.
@Suite struct JobExecutionTests {
    typealias Machine = JobExecution
    typealias Action = Machine.Action

    enum Event {
        case renewalDue
        case renewed(held: Bool, cancelRequested: Bool = false, at: Duration)
        case renewalFailed(at: Duration)
        case changeHeard
        case cancellationChecked(Bool)
        case shutdownGraceOver
        case workReturned(Machine.WorkResult)
    }

    struct Row {
        let event: Event
        let actions: [Action]
        init(_ event: Event, _ actions: [Action] = []) {
            self.event = event
            self.actions = actions
        }
    }

    static let claimed = ContinuousClock.now

    @discardableResult
    func run(_ rows: [Row], sourceLocation: SourceLocation = #_sourceLocation) -> Machine {
        var machine = Machine(leaseDuration: .seconds(30), claimedAt: Self.claimed)
        for (index, row) in rows.enumerated() {
            let actions: [Action]
            switch row.event {
            case .renewalDue: actions = machine.renewalDue()
            case .renewed(let held, let cancelRequested, let at):
                actions = machine.leaseRenewed(held: held, cancelRequested: cancelRequested, now: Self.claimed + at)
            case .renewalFailed(let at): actions = machine.renewalFailed(now: Self.claimed + at)
            case .changeHeard: actions = machine.changeHeard()
            case .cancellationChecked(let requested): actions = machine.cancellationChecked(requested: requested)
            case .shutdownGraceOver: actions = machine.shutdownGraceOver()
            case .workReturned(let result): actions = machine.workReturned(result)
            }
            #expect(actions == row.actions, "row \(index + 1): \(row.event)", sourceLocation: sourceLocation)
        }
        return machine
    }

    @Test func theLeaseIsRenewedEveryThirdOfItsLengthAndNeverMoreOftenThanEachSecond() {
        #expect(Machine(leaseDuration: .seconds(30), claimedAt: Self.claimed).renewalInterval == .seconds(10))
        #expect(Machine(leaseDuration: .seconds(2), claimedAt: Self.claimed).renewalInterval == .seconds(1))
    }

    @Test func workThatReturnsWhileRunningIsRecordedAsItCameBack() {
        run([Row(.renewalDue, [.renewLease]), Row(.renewed(held: true, at: .seconds(10))),
             Row(.workReturned(.succeeded), [.record(.finished)]), Row(.renewalDue)])
        run([Row(.workReturned(.failed("pg_dump exited 1")), [.record(.failed("pg_dump exited 1"))])])
        run([Row(.workReturned(.deferred("server down")), [.record(.deferred("server down"))])])
    }

    @Test func aCancelHeardStopsTheWorkAndIsRecordedAsCancelled() {
        let machine = run([
            Row(.changeHeard, [.checkCancellation]),
            Row(.cancellationChecked(false)),
            Row(.changeHeard, [.checkCancellation]),
            Row(.cancellationChecked(true), [.stopWork]),
            // Stopping: no more checks; the lease is still renewed until the work returns.
            Row(.changeHeard),
            Row(.renewalDue, [.renewLease]),
            Row(.renewed(held: true, cancelRequested: true, at: .seconds(10))),
            Row(.workReturned(.failed("pg_dump was killed")), [.record(.cancelled)]),
        ])
        #expect(machine.phase == .ended)
    }

    @Test func aCancelReadWithTheRenewalStopsTheWorkWhenTheNotificationWasLost() {
        run([
            Row(.renewalDue, [.renewLease]),
            Row(.renewed(held: true, cancelRequested: true, at: .seconds(10)), [.stopWork]),
            Row(.workReturned(.deferred("cancelled mid-swap")), [.record(.cancelled)]),
        ])
    }

    @Test func aLeaseTakenByAnotherProcessStopsTheWork() {
        run([
            Row(.renewalDue, [.renewLease]),
            Row(.renewed(held: false, at: .seconds(10)), [.stopWork]),
            Row(.cancellationChecked(true)),
            Row(.workReturned(.failed("query cancelled")), [.record(.failed(Machine.leaseLostText))]),
        ])
    }

    @Test func aCatalogThatCannotBeAskedStopsTheWorkOnlyOnceTheLeaseHasRunOut() {
        run([
            Row(.renewalDue, [.renewLease]),
            Row(.renewalFailed(at: .seconds(10))),
            Row(.renewalFailed(at: .seconds(20))),
            // Answered again: the lease runs 30 s from this renewal.
            Row(.renewed(held: true, at: .seconds(25))),
            Row(.renewalFailed(at: .seconds(54))),
            Row(.renewalFailed(at: .seconds(55)), [.stopWork]),
            Row(.renewalFailed(at: .seconds(65))),
            Row(.workReturned(.failed("cancelled")), [.record(.failed(Machine.leaseLostText))]),
        ])
    }

    @Test func theEndOfTheShutdownGraceStopsTheWorkAndRecordsTheInterruption() {
        run([
            Row(.shutdownGraceOver, [.stopWork]),
            Row(.shutdownGraceOver),
            Row(.cancellationChecked(true)),
            Row(.workReturned(.deferred("swap unseen")), [.record(.failed(Machine.shutdownText))]),
        ])
    }

    @Test func theFirstStopReasonStandsAndWorkThatFinishedAnywayIsFinished() {
        run([
            Row(.cancellationChecked(true), [.stopWork]),
            Row(.renewed(held: false, at: .seconds(10))),
            Row(.shutdownGraceOver),
            Row(.workReturned(.succeeded), [.record(.finished)]),
            Row(.workReturned(.failed("again"))),
        ])
        run([
            Row(.renewed(held: false, at: .seconds(10)), [.stopWork]),
            Row(.cancellationChecked(true)),
            Row(.workReturned(.failed("x")), [.record(.failed(Machine.leaseLostText))]),
        ])
    }
}
