import BackupWire
import NIOCore

/// The life of one RPC connection as a pure state machine: events in,
/// actions out, with no I/O, clock or lock, so that every rule about time,
/// count and memory is a row in a table test. `ConnectionController` feeds
/// it from the channel and the calls and carries out what it returns.
///
///     handshaking ──handshake done──▶ open ──graceful shutdown──▶ draining
///          │                           │  ▲ call opened / ended       │
///          │ handshake timer           │  │ (idle timer armed        │ last status written
///          │ graceful shutdown         │  │  while none is open)     │
///          ▼                           ▼                              ▼
///        closed ◀── idle, partial-frame or authentication timer, ── closed
///                   peer gone
///
/// A connection must make a call that authenticates within the
/// authentication timeout of its handshake; until it has, it is the first
/// to go when the server is full (`ConnectionAdmission`).
///
/// Memory: every byte received is charged to the connection until the call
/// its frame belongs to has taken the message (`consumed`). A connection
/// holds up to `receiveWindow` bytes on its own; beyond that it borrows from
/// a pool shared by all connections, and stops reading while the pool has
/// nothing to lend, once it holds a whole frame's worth
/// (`maximumHeldBytes`) that its calls have not taken, or while the client
/// is not taking what the server writes (as many statuses waiting to be
/// written as calls may be open, or a frame's worth of responses). Reading
/// stopped means TCP back-pressure on the client, and on the other calls of
/// the same connection (head-of-line), never growth of the server's memory.
struct ConnectionStateMachine: Sendable {
    enum Timer: Hashable, Sendable, CaseIterable {
        case handshake, authentication, partialFrame, idle
    }

    enum Action: Equatable, Sendable {
        case arm(Timer, Duration)
        case cancel(Timer)
        case pauseReading
        case resumeReading
        /// Ask the shared pool for this many bytes; answer with `lent` or leave it waiting until `poolFreed`.
        case borrow(Int)
        /// Give this many bytes back to the shared pool.
        case giveBack(Int)
        /// The connection has made an authenticated call: it is no longer the first to go when the server is full.
        case authenticated
        case close
    }

    /// What becomes of a call's start frame.
    enum CallDecision: Equatable, Sendable {
        case accept
        /// The call ends at once with this status; the connection goes on.
        case refuse(RPCError)
        /// The client broke the protocol: the connection ends with this status.
        case violation(RPCError)
    }

    enum Phase: Equatable, Sendable {
        case handshaking, open, draining, closed
    }

    struct Settings: Sendable {
        var limits = ConnectionLimits()
        /// Bytes of unconsumed frames at which the connection stops reading.
        var maximumHeldBytes = defaultMaxFrameBytes
    }

    let settings: Settings
    private(set) var phase = Phase.handshaking
    private var openCalls: Set<UInt32> = []
    /// Statuses of ended or refused calls not yet written.
    private var statusesToWrite = 0
    /// Bytes of responses being written.
    private var outboundBytes = 0
    private var isAuthenticated = false
    private var boundaries = FrameBoundaries()
    /// Bytes received and not yet consumed by their calls.
    private var heldBytes = 0
    /// The part of `heldBytes` borrowed from the shared pool.
    private var borrowedBytes = 0
    private var waitingForPool = false
    private(set) var isReading = true
    private var partialFrameTimerArmed = false

    init(settings: Settings) {
        self.settings = settings
    }

    private var limits: ConnectionLimits { settings.limits }

    // MARK: Life

    mutating func accepted() -> [Action] {
        [.arm(.handshake, limits.handshakeTimeout)]
    }

    mutating func handshakeCompleted() -> [Action] {
        guard phase == .handshaking else { return [] }
        phase = .open
        return [.cancel(.handshake), .arm(.authentication, limits.authenticationTimeout), .arm(.idle, limits.idleTimeout)]
    }

    mutating func timerFired(_ timer: Timer) -> [Action] {
        let stillDue = switch timer {
        case .handshake: phase == .handshaking
        case .authentication: !isAuthenticated && phase != .closed
        case .idle: phase == .open && openCalls.isEmpty
        case .partialFrame: partialFrameTimerArmed && phase != .closed
        }
        return stillDue ? close() : []
    }

    mutating func gracefulShutdown() -> [Action] {
        switch phase {
        case .handshaking: return close()
        case .open where isQuiet: return close()
        case .open:
            phase = .draining
            return []
        case .draining, .closed: return []
        }
    }

    /// The channel closed, for whatever reason: timers go, borrowed bytes go back.
    mutating func closed() -> [Action] {
        phase = .closed
        var actions = Timer.allCases.map(Action.cancel)
        if borrowedBytes > 0 { actions.append(.giveBack(borrowedBytes)) }
        borrowedBytes = 0
        heldBytes = 0
        partialFrameTimerArmed = false
        return actions
    }

    /// The connection turned out to speak HTTP (a download), whose endpoint
    /// governs it from here: the machine lets go as if it had closed.
    mutating func handedOver() -> [Action] {
        closed()
    }

    private mutating func close() -> [Action] {
        phase = .closed
        return [.close]
    }

    // MARK: Calls

    mutating func callStarted(_ id: UInt32) -> (CallDecision, [Action]) {
        guard id != 0 else { return (.violation(RPCError(.invalidArgument, "call_id 0 is reserved for the connection's own status")), []) }
        guard !openCalls.contains(id) else { return (.violation(RPCError(.invalidArgument, "call_id \(id) is already open on this connection")), []) }
        guard phase == .open else { return refuse(RPCError(.unavailable, "the server is shutting down")) }
        // A call counts until its status is written: a client that does not read cannot pile up ended calls.
        guard openCalls.count + statusesToWrite < limits.maximumOpenCalls else {
            return refuse(RPCError(.resourceExhausted, "a connection may have \(limits.maximumOpenCalls) calls open at once"))
        }
        openCalls.insert(id)
        return (.accept, openCalls.count == 1 ? [.cancel(.idle)] : [])
    }

    /// A refusal is a status to write like any other (`statusWritten` follows).
    private mutating func refuse(_ error: RPCError) -> (CallDecision, [Action]) {
        statusesToWrite += 1
        return (.refuse(error), balance())
    }

    /// One of the connection's calls got past authentication.
    mutating func callAuthenticated() -> [Action] {
        guard !isAuthenticated, phase != .closed else { return [] }
        isAuthenticated = true
        return [.cancel(.authentication), .authenticated]
    }

    /// A call has its status and the connection is about to write it: the
    /// id is free again from here, and the connection may close once the
    /// status is out (`statusWritten`).
    mutating func callEnded(_ id: UInt32) -> [Action] {
        guard openCalls.remove(id) != nil else { return [] }
        statusesToWrite += 1
        return (phase == .open && openCalls.isEmpty ? [.arm(.idle, limits.idleTimeout)] : []) + balance()
    }

    mutating func statusWritten() -> [Action] {
        statusesToWrite -= 1
        return phase == .draining && isQuiet ? close() : balance()
    }

    /// A response of `bytes` is being written; `wrote` follows once it is out.
    mutating func writing(_ bytes: Int) -> [Action] {
        outboundBytes += bytes
        return balance()
    }

    mutating func wrote(_ bytes: Int) -> [Action] {
        outboundBytes -= bytes
        return phase == .closed ? [] : balance()
    }

    /// Whether the client takes what the server writes: fewer statuses
    /// waiting to be written than calls may be open, and less than a frame's
    /// worth of responses. While it does not, the connection reads nothing
    /// and starts no call (`ConnectionController` holds starts back).
    var clientTakesAnswers: Bool {
        statusesToWrite < limits.maximumOpenCalls && outboundBytes < settings.maximumHeldBytes
    }

    /// No call open and no status left to write.
    private var isQuiet: Bool { openCalls.isEmpty && statusesToWrite == 0 }

    // MARK: Bytes

    /// Bytes arrived, before framing: each is charged to the connection (a
    /// frame's length promises nothing), and the partial-frame timer runs
    /// from the first byte of a frame to its last.
    mutating func received(_ bytes: ByteBuffer) -> [Action] {
        guard phase != .closed else { return [] }
        let completedAFrame = boundaries.scan(bytes)
        heldBytes += bytes.readableBytes
        var actions: [Action] = []
        // The frame the timer ran for is complete: a frame still under way began in this read.
        if partialFrameTimerArmed && (completedAFrame || !boundaries.isPartial) {
            partialFrameTimerArmed = false
            actions.append(.cancel(.partialFrame))
        }
        return actions + balance()
    }

    /// A call took (or the connection discarded) a frame of this many bytes.
    mutating func consumed(_ bytes: Int) -> [Action] {
        guard phase != .closed else { return [] }
        heldBytes -= bytes
        return balance()
    }

    /// The pool lent what the last `borrow` asked for.
    mutating func lent(_ bytes: Int) -> [Action] {
        guard phase != .closed else { return [.giveBack(bytes)] }
        waitingForPool = false
        borrowedBytes += bytes
        return balance()
    }

    /// The pool has bytes again: a connection waiting on it asks anew.
    mutating func poolFreed() -> [Action] {
        guard waitingForPool, phase != .closed else { return [] }
        waitingForPool = false
        return balance()
    }

    /// Borrows what the held bytes need beyond the window, gives back what
    /// they no longer need, and sets reading and the partial-frame timer to match.
    private mutating func balance() -> [Action] {
        var actions: [Action] = []
        let needed = max(0, heldBytes - limits.receiveWindow) - borrowedBytes
        if needed > 0 && !waitingForPool {
            waitingForPool = true
            actions.append(.borrow(needed))
        } else if needed < 0 {
            borrowedBytes += needed
            actions.append(.giveBack(-needed))
        }
        // While the server holds a frame back, its sender is not the one who is slow.
        let timerDue = boundaries.isPartial && !waitingForPool && clientTakesAnswers
        if timerDue != partialFrameTimerArmed {
            partialFrameTimerArmed = timerDue
            actions.append(timerDue ? .arm(.partialFrame, limits.partialFrameTimeout) : .cancel(.partialFrame))
        }
        let reading = !waitingForPool && clientTakesAnswers && (boundaries.isPartial || heldBytes < settings.maximumHeldBytes)
        if reading != isReading {
            isReading = reading
            actions.append(reading ? .resumeReading : .pauseReading)
        }
        return actions
    }
}

/// Follows the framing of a byte stream (a 4-byte big-endian length, then
/// the body) without buffering any of it.
struct FrameBoundaries: Sendable {
    private var lengthBytes: [UInt8] = []
    private var bodyRemaining = 0

    /// Whether a frame has begun and not ended.
    var isPartial: Bool { bodyRemaining > 0 || !lengthBytes.isEmpty }

    /// Follows `buffer`; returns whether any frame ended in it.
    mutating func scan(_ buffer: ByteBuffer) -> Bool {
        var bytes = buffer
        var completedAFrame = false
        while bytes.readableBytes > 0 {
            if bodyRemaining > 0 {
                let skipped = min(bodyRemaining, bytes.readableBytes)
                bytes.moveReaderIndex(forwardBy: skipped)
                bodyRemaining -= skipped
                completedAFrame = completedAFrame || bodyRemaining == 0
            } else if let byte = bytes.readInteger(as: UInt8.self) {
                lengthBytes.append(byte)
                if lengthBytes.count == 4 {
                    bodyRemaining = lengthBytes.reduce(0) { $0 << 8 | Int($1) }
                    lengthBytes.removeAll()
                    completedAFrame = completedAFrame || bodyRemaining == 0
                }
            }
        }
        return completedAFrame
    }
}
