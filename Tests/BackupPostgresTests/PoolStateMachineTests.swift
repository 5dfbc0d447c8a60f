import BackupPostgres
import Testing

/// The pool's rules, one table per rule: each row is an event and the
/// actions it must produce, in order. No PostgreSQL, no clock: times are
/// offsets from one instant.
@Suite struct PoolStateMachineTests {
    typealias Machine = PoolStateMachine
    typealias Action = Machine.Action

    enum Event {
        case lease(Machine.RequestID, at: Duration = .zero)
        case connected(Machine.ConnectionID, for: Machine.RequestID)
        case connectFailed(at: Duration = .zero)
        case validated(Machine.ConnectionID, for: Machine.RequestID, healthy: Bool, at: Duration = .zero)
        case released(Machine.ConnectionID, reusable: Bool = true, at: Duration = .zero)
        case cancelled(Machine.RequestID)
        case close
    }

    struct Row {
        let event: Event
        let actions: [Action]
        init(_ event: Event, _ actions: [Action] = []) {
            self.event = event
            self.actions = actions
        }
    }

    static let start = ContinuousClock.now

    @discardableResult
    func run(_ rows: [Row], maximumConnections: Int = 1, sourceLocation: SourceLocation = #_sourceLocation) -> Machine {
        var machine = Machine(maximumConnections: maximumConnections, validateAfterIdle: .seconds(10))
        for (index, row) in rows.enumerated() {
            let actions: [Action]
            switch row.event {
            case .lease(let request, let at): actions = machine.lease(request, now: Self.start + at)
            case .connected(let connection, let request): actions = machine.connected(connection, for: request)
            case .connectFailed(let at): actions = machine.connectFailed(now: Self.start + at)
            case .validated(let connection, let request, let healthy, let at):
                actions = machine.validated(connection, for: request, healthy: healthy, now: Self.start + at)
            case .released(let connection, let reusable, let at):
                actions = machine.released(connection, reusable: reusable, now: Self.start + at)
            case .cancelled(let request): actions = machine.cancelled(request)
            case .close: actions = machine.close()
            }
            #expect(actions == row.actions, "row \(index + 1): \(row.event)", sourceLocation: sourceLocation)
        }
        return machine
    }

    @Test func aLeaseWithRoomOpensAConnectionAndReusesItOnceReturned() {
        let machine = run([
            Row(.lease(1), [.grant(.connect(1), to: 1)]),
            Row(.connected(1, for: 1), [.grant(.lend(1), to: 1)]),
            Row(.released(1, at: .seconds(1))),
            Row(.lease(2, at: .seconds(2)), [.grant(.lend(1), to: 2)]),
            Row(.released(1, at: .seconds(3))),
        ])
        #expect(machine.open == 1 && machine.idleCount == 1)
    }

    @Test func aConnectionIdleTenSecondsIsCheckedFirstAndADeadOneReplaced() {
        run([
            Row(.lease(1), [.grant(.connect(1), to: 1)]),
            Row(.connected(1, for: 1), [.grant(.lend(1), to: 1)]),
            Row(.released(1)),
            Row(.lease(2, at: .milliseconds(9_999)), [.grant(.lend(1), to: 2)]),
            Row(.released(1, at: .seconds(10))),
            Row(.lease(3, at: .seconds(20)), [.grant(.validate(1), to: 3)]),
            Row(.validated(1, for: 3, healthy: true, at: .seconds(20)), [.grant(.lend(1), to: 3)]),
            Row(.released(1, at: .seconds(20))),
            Row(.lease(4, at: .seconds(30)), [.grant(.validate(1), to: 4)]),
            // A newcomer while the check runs: the pool is full, it waits.
            Row(.lease(5, at: .seconds(30))),
            // The dead one goes; the lease it was checked for is served before the newcomer.
            Row(.validated(1, for: 4, healthy: false, at: .seconds(30)), [.discard(1), .grant(.connect(2), to: 4)]),
            Row(.connected(2, for: 4), [.grant(.lend(2), to: 4)]),
            Row(.released(2, at: .seconds(31)), [.grant(.lend(2), to: 5)]),
        ])
    }

    @Test func waitersAreServedFirstComeFirstServedAndAWokenWaiterCannotLoseItsConnection() {
        let machine = run([
            Row(.lease(1), [.grant(.connect(1), to: 1)]),
            Row(.connected(1, for: 1), [.grant(.lend(1), to: 1)]),
            Row(.lease(2)),
            Row(.lease(3)),
            // Handed over on release: there is never an idle moment a newcomer could take it in.
            Row(.released(1), [.grant(.lend(1), to: 2)]),
            Row(.lease(4)),
            Row(.released(1), [.grant(.lend(1), to: 3)]),
            Row(.released(1), [.grant(.lend(1), to: 4)]),
            Row(.released(1)),
            Row(.lease(5), [.grant(.lend(1), to: 5)]),
        ])
        #expect(machine.waiting.isEmpty)
    }

    @Test func aBrokenConnectionIsDiscardedAndItsSlotGoesToTheFirstWaiter() {
        run([
            Row(.lease(1), [.grant(.connect(1), to: 1)]),
            Row(.connected(1, for: 1), [.grant(.lend(1), to: 1)]),
            Row(.lease(2)),
            Row(.lease(3)),
            Row(.released(1, reusable: false), [.discard(1), .grant(.connect(2), to: 2)]),
            Row(.connected(2, for: 2), [.grant(.lend(2), to: 2)]),
            Row(.released(2, reusable: false), [.discard(2), .grant(.connect(3), to: 3)]),
            Row(.connected(3, for: 3), [.grant(.lend(3), to: 3)]),
            // With no one waiting, a broken one is only discarded.
            Row(.released(3, reusable: false), [.discard(3)]),
            Row(.lease(4), [.grant(.connect(4), to: 4)]),
        ])
    }

    @Test func aFailedConnectFreesItsSlotForTheFirstWaiter() {
        let machine = run([
            Row(.lease(1), [.grant(.connect(1), to: 1)]),
            Row(.lease(2)),
            Row(.connectFailed(), [.grant(.connect(2), to: 2)]),
            Row(.connectFailed()),
            Row(.lease(3), [.grant(.connect(3), to: 3)]),
        ])
        #expect(machine.open == 1)
    }

    @Test func aCancelledWaiterLeavesTheLineAndOneAlreadyServedGoesOn() {
        let machine = run([
            Row(.lease(1), [.grant(.connect(1), to: 1)]),
            Row(.lease(2)),
            Row(.lease(3)),
            Row(.cancelled(2), [.fail(2, .cancelled)]),
            Row(.cancelled(2)),
            Row(.cancelled(1)),
            Row(.connected(1, for: 1), [.grant(.lend(1), to: 1)]),
            Row(.released(1), [.grant(.lend(1), to: 3)]),
        ])
        #expect(machine.waiting.isEmpty)
    }

    @Test func closingFailsWaitersClosesIdleConnectionsAndEndsWhenTheLentOnesReturn() {
        run([
            Row(.lease(1), [.grant(.connect(1), to: 1)]),
            Row(.connected(1, for: 1), [.grant(.lend(1), to: 1)]),
            Row(.lease(2), [.grant(.connect(2), to: 2)]),
            Row(.connected(2, for: 2), [.grant(.lend(2), to: 2)]),
            Row(.released(2)),
            Row(.lease(3), [.grant(.lend(2), to: 3)]),
            Row(.lease(4)),
            Row(.released(2), [.grant(.lend(2), to: 4)]),
            Row(.released(2)),
            Row(.lease(5), [.grant(.lend(2), to: 5)]),
            Row(.lease(6)),
            Row(.close, [.fail(6, .closed)]),
            Row(.close),
            Row(.lease(7), [.fail(7, .closed)]),
            Row(.released(2), [.discard(2)]),
            Row(.released(1), [.discard(1), .closed]),
        ], maximumConnections: 2)
    }

    @Test func closingDiscardsIdleConnectionsAtOnce() {
        run([
            Row(.lease(1), [.grant(.connect(1), to: 1)]),
            Row(.connected(1, for: 1), [.grant(.lend(1), to: 1)]),
            Row(.released(1)),
            Row(.close, [.discard(1), .closed]),
        ])
        run([Row(.close, [.closed])])
    }

    @Test func connectionsOpenedOrCheckedWhileClosingAreDiscardedAndTheirLeasesFail() {
        run([
            Row(.lease(1), [.grant(.connect(1), to: 1)]),
            Row(.lease(2), [.grant(.connect(2), to: 2)]),
            Row(.lease(3), [.grant(.connect(3), to: 3)]),
            Row(.connected(3, for: 3), [.grant(.lend(3), to: 3)]),
            Row(.released(3)),
            Row(.lease(4, at: .seconds(60)), [.grant(.validate(3), to: 4)]),
            Row(.close),
            Row(.connected(1, for: 1), [.fail(1, .closed), .discard(1)]),
            Row(.validated(3, for: 4, healthy: true), [.fail(4, .closed), .discard(3)]),
            Row(.connectFailed(), [.closed]),
        ], maximumConnections: 3)
    }
}
