import BackupWire
@testable import BackupServer
import NIOCore
import NIOEmbedded
import Testing

/// The connection state machine, one table per rule: each row is an event
/// and the actions it must produce, in order.
@Suite struct ConnectionStateMachineTests {
    typealias Machine = ConnectionStateMachine
    typealias Action = Machine.Action

    enum Event {
        case accepted, handshakeCompleted, shutdown, closed, statusWritten, poolFreed, authenticated
        case fired(Machine.Timer)
        case start(UInt32, Machine.CallDecision)
        case end(UInt32)
        /// Bytes as they arrive: a frame's length field followed by `body` of its bytes.
        case header(length: Int, body: Int)
        case body(Int)
        case raw([UInt8])
        case consumed(Int)
        case lent(Int)
        case writing(Int)
        case wrote(Int)
    }

    struct Row {
        let event: Event
        let actions: [Action]
        init(_ event: Event, _ actions: [Action] = []) {
            self.event = event
            self.actions = actions
        }
    }

    static func settings(maximumOpenCalls: Int = 128, window: Int = 100, maximumHeld: Int = 1000) -> Machine.Settings {
        var limits = ConnectionLimits()
        limits.handshakeTimeout = .seconds(10)
        limits.authenticationTimeout = .seconds(20)
        limits.partialFrameTimeout = .seconds(30)
        limits.idleTimeout = .seconds(300)
        limits.maximumOpenCalls = maximumOpenCalls
        limits.receiveWindow = window
        return Machine.Settings(limits: limits, maximumHeldBytes: maximumHeld)
    }

    /// Runs the rows in order, from a machine whose handshake is done unless `handshaking`.
    func run(_ rows: [Row], settings: Machine.Settings = settings(), handshaking: Bool = false,
             sourceLocation: SourceLocation = #_sourceLocation) {
        var machine = Machine(settings: settings)
        if !handshaking {
            _ = machine.accepted()
            _ = machine.handshakeCompleted()
        }
        for (index, row) in rows.enumerated() {
            let actions: [Action]
            switch row.event {
            case .accepted: actions = machine.accepted()
            case .handshakeCompleted: actions = machine.handshakeCompleted()
            case .shutdown: actions = machine.gracefulShutdown()
            case .closed: actions = machine.closed()
            case .statusWritten: actions = machine.statusWritten()
            case .poolFreed: actions = machine.poolFreed()
            case .authenticated: actions = machine.callAuthenticated()
            case .writing(let bytes): actions = machine.writing(bytes)
            case .wrote(let bytes): actions = machine.wrote(bytes)
            case .fired(let timer): actions = machine.timerFired(timer)
            case .start(let id, let expected):
                let (decision, startActions) = machine.callStarted(id)
                #expect(decision == expected, "row \(index)", sourceLocation: sourceLocation)
                actions = startActions
            case .end(let id): actions = machine.callEnded(id)
            case .header(let length, let body):
                var bytes = ByteBuffer()
                bytes.writeInteger(UInt32(length))
                bytes.writeRepeatingByte(7, count: body)
                actions = machine.received(bytes)
            case .body(let count): actions = machine.received(ByteBuffer(repeating: 7, count: count))
            case .raw(let bytes): actions = machine.received(ByteBuffer(bytes: bytes))
            case .consumed(let bytes): actions = machine.consumed(bytes)
            case .lent(let bytes): actions = machine.lent(bytes)
            }
            #expect(actions == row.actions, "row \(index): \(row.event)", sourceLocation: sourceLocation)
        }
    }

    @Test func aHandshakeMustEndInTime() {
        run([Row(.accepted, [.arm(.handshake, .seconds(10))]), Row(.fired(.handshake), [.close])], handshaking: true)
    }

    @Test func aFinishedHandshakeStartsTheIdleTimer() {
        run([
            Row(.accepted, [.arm(.handshake, .seconds(10))]),
            Row(.handshakeCompleted, [.cancel(.handshake), .arm(.authentication, .seconds(20)), .arm(.idle, .seconds(300))]),
            Row(.fired(.handshake)),  // too late to matter
            Row(.fired(.idle), [.close]),
        ], handshaking: true)
    }

    @Test func anOpenCallHoldsOffTheIdleTimer() {
        run([
            Row(.start(1, .accept), [.cancel(.idle)]),
            Row(.start(2, .accept)),
            Row(.fired(.idle)),  // a timer that fired as the call opened
            Row(.end(1)),
            Row(.end(2), [.arm(.idle, .seconds(300))]),
            Row(.statusWritten),
            Row(.statusWritten),
            Row(.fired(.idle), [.close]),
        ])
    }

    @Test func callIDsZeroAndOpenOnesBreakTheProtocol() {
        run([
            Row(.start(0, .violation(RPCError(.invalidArgument, "call_id 0 is reserved for the connection's own status")))),
            Row(.start(7, .accept), [.cancel(.idle)]),
            Row(.start(7, .violation(RPCError(.invalidArgument, "call_id 7 is already open on this connection")))),
            // Once its end is known (before its status is written) the id may be used again.
            Row(.end(7), [.arm(.idle, .seconds(300))]),
            Row(.start(7, .accept), [.cancel(.idle)]),
        ])
    }

    @Test func callsPastTheLimitAreRefusedAndTheConnectionGoesOn() {
        run([
            Row(.start(1, .accept), [.cancel(.idle)]),
            Row(.start(2, .accept)),
            Row(.start(3, .refuse(RPCError(.resourceExhausted, "a connection may have 2 calls open at once")))),
            Row(.statusWritten),
            Row(.end(1)),
            Row(.statusWritten),
            Row(.start(3, .accept)),
        ], settings: Self.settings(maximumOpenCalls: 2))
    }

    @Test func shutdownLetsOpenCallsEndAndClosesOnceTheirStatusIsOut() {
        run([
            Row(.start(1, .accept), [.cancel(.idle)]),
            Row(.shutdown),
            Row(.start(2, .refuse(RPCError(.unavailable, "the server is shutting down")))),
            Row(.end(1)),
            Row(.statusWritten),
            Row(.statusWritten, [.close]),
        ])
    }

    @Test func shutdownClosesAQuietConnectionAtOnce() {
        run([Row(.shutdown, [.close]), Row(.fired(.idle))])
        run([Row(.accepted, [.arm(.handshake, .seconds(10))]), Row(.shutdown, [.close])], handshaking: true)
        // A status still being written holds the close back.
        run([Row(.start(1, .accept), [.cancel(.idle)]), Row(.end(1), [.arm(.idle, .seconds(300))]), Row(.shutdown), Row(.statusWritten, [.close])])
    }

    @Test func halfAFrameThenSilenceCloses() {
        run([
            Row(.header(length: 50, body: 20), [.arm(.partialFrame, .seconds(30))]),
            Row(.body(10)),
            Row(.fired(.partialFrame), [.close]),
        ])
    }

    /// The timer runs from a frame's first byte: a client that keeps
    /// completing frames is never cut off, even when reads end mid-frame.
    @Test func framesThatKeepCompletingRestartTheTimer() {
        run([
            Row(.header(length: 10, body: 10)),  // a whole frame: no timer
            Row(.raw([0, 0]), [.arm(.partialFrame, .seconds(30))]),  // half a length field
            Row(.raw([0, 5])),
            Row(.body(3)),
            // The rest of that frame and half the next: the timer starts again for the new frame.
            Row(.raw([7, 7, 0, 0, 0, 1]), [.cancel(.partialFrame), .arm(.partialFrame, .seconds(30))]),
            Row(.raw([7]), [.cancel(.partialFrame)]),
            Row(.consumed(14 + 9 + 5)),
        ])
    }

    /// A connection that has made no authenticated call by the timeout is
    /// closed, however busy; one call that authenticates keeps it.
    @Test func aConnectionMustAuthenticateACallInTime() {
        run([
            Row(.start(1, .accept), [.cancel(.idle)]),
            Row(.fired(.authentication), [.close]),
        ])
        run([
            Row(.start(1, .accept), [.cancel(.idle)]),
            Row(.authenticated, [.cancel(.authentication), .authenticated]),
            Row(.start(2, .accept)),
            Row(.authenticated),
            Row(.fired(.authentication)),
        ])
    }

    /// Only bytes that arrived are charged: a length alone borrows nothing.
    @Test func beyondItsWindowAConnectionBorrowsWhatArrivedAndReadsOnlyWhatItWasLent() {
        run([
            Row(.header(length: 496, body: 0), [.arm(.partialFrame, .seconds(30))]),  // 4 bytes held, within the window of 100
            Row(.body(96)),
            // 200 held: 100 beyond the window. Until lent, reading stops and the timer with it.
            Row(.body(100), [.borrow(100), .cancel(.partialFrame), .pauseReading]),
            Row(.fired(.partialFrame)),
            Row(.lent(100), [.arm(.partialFrame, .seconds(30)), .resumeReading]),
            Row(.body(300), [.cancel(.partialFrame), .borrow(300), .pauseReading]),
            Row(.lent(300), [.resumeReading]),
            Row(.consumed(500), [.giveBack(400)]),
        ])
    }

    @Test func aConnectionThePoolCannotServeWaitsAndAsksAgain() {
        run([
            Row(.header(length: 496, body: 496), [.borrow(400), .pauseReading]),
            Row(.poolFreed, [.borrow(400)]),
            Row(.poolFreed, [.borrow(400)]),
            Row(.lent(400), [.resumeReading]),
            Row(.closed, [.cancel(.handshake), .cancel(.authentication), .cancel(.partialFrame), .cancel(.idle), .giveBack(400)]),
            Row(.lent(50), [.giveBack(50)]),  // lent as it closed
            Row(.poolFreed),
        ])
    }

    @Test func aConnectionHoldingAFrameItsCallsHaveNotTakenStopsReading() {
        run([
            Row(.header(length: 596, body: 596)),
            Row(.header(length: 596, body: 596), [.pauseReading]),
            Row(.consumed(600), [.resumeReading]),
            Row(.consumed(600)),
        ], settings: Self.settings(window: 10_000, maximumHeld: 1000))
    }

    /// A client that does not take what the server writes stops being read:
    /// statuses of ended or refused calls count as open calls until written,
    /// and responses being written count against the connection.
    @Test func aClientThatDoesNotReadStopsBeingRead() {
        run([
            Row(.start(1, .accept), [.cancel(.idle)]),
            Row(.end(1), [.arm(.idle, .seconds(300))]),
            Row(.start(2, .accept), [.cancel(.idle)]),
            Row(.start(3, .refuse(RPCError(.resourceExhausted, "a connection may have 2 calls open at once"))), [.pauseReading]),
            Row(.statusWritten, [.resumeReading]),
            Row(.statusWritten),
            Row(.start(3, .accept)),
            Row(.writing(600)),
            Row(.writing(600), [.pauseReading]),
            Row(.wrote(600), [.resumeReading]),
        ], settings: Self.settings(maximumOpenCalls: 2))
    }
}

/// The controller and gate on a channel: the machine's timers are real.
@Suite struct ConnectionControllerTests {
    @Test func aFrameLeftHalfSentClosesTheConnection() throws {
        let loop = EmbeddedEventLoop()
        let channel = EmbeddedChannel(loop: loop)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        var settings = ConnectionStateMachineTests.settings()
        settings.limits.authenticationTimeout = .seconds(100)
        let controller = ConnectionController(channel: channel, settings: settings, pool: ReceivePool(bytes: 1 << 20, perPeer: 1 << 20), peer: "p")
        try channel.pipeline.syncOperations.addHandler(ReceiveGate(controller: controller))
        controller.handshakeCompleted()
        loop.run()
        var bytes = ByteBuffer()
        bytes.writeInteger(UInt32(100))
        bytes.writeRepeatingByte(7, count: 50)
        try channel.writeInbound(bytes)
        loop.advanceTime(by: .seconds(29))
        #expect(channel.isActive)
        loop.advanceTime(by: .seconds(2))
        #expect(!channel.isActive)
    }

    @Test func thePoolLendsWithinItsSizeAndEachPeersShare() {
        let pool = ReceivePool(bytes: 100, perPeer: 60)
        let borrower = ObjectIdentifier(pool)
        #expect(pool.borrow(60, peer: "a", borrower: borrower) {})
        #expect(!pool.borrow(1, peer: "a", borrower: borrower) {})
        #expect(pool.borrow(40, peer: "b", borrower: borrower) {})
        #expect(!pool.borrow(1, peer: "c", borrower: borrower) {})
        pool.giveBack(60, peer: "a")
        #expect(pool.available == 60)
        #expect(pool.borrow(20, peer: "b", borrower: borrower) {})
    }
}
