import BackupRules
import BackupWire
import Logging
import NIOCore
import Synchronization

/// Serves the RPC protocol over in-memory frame streams instead of a TLS
/// socket: the same `RPCConnection`, dispatcher and connection state
/// machine, without sockets or processes. Tests use it to call handlers
/// through the typed client (grpc-swift-2's in-process transport is the
/// model). There is no handshake and no half-sent frame in process, so only
/// the machine's rules for calls and memory apply; its timers do not run.
/// Handed to a `BackupServer` among its transports, it serves once the
/// server runs; a connection asked for before then waits for that.
public final class InProcessTransport: ServerTransport {
    private struct Served {
        let connection: RPCConnection
        let settings: ConnectionStateMachine.Settings
    }

    private struct State {
        var served: Served?
        var waiting: [CheckedContinuation<Served, Never>] = []
    }

    private let state = Mutex(State())

    public init() {}

    /// Serves the server's dispatcher from now on.
    public func serve(_ server: ServedEndpoints) async throws {
        let served = Served(connection: RPCConnection(dispatcher: server.dispatcher, logger: server.logger),
                            settings: ConnectionStateMachine.Settings(limits: server.limits, maximumHeldBytes: server.maxFrameBytes))
        let waiting = state.withLock { state in
            state.served = served
            defer { state.waiting = [] }
            return state.waiting
        }
        waiting.forEach { $0.resume(returning: served) }
    }

    /// Memory has no certificate: a reload reads nothing for it.
    public func prepareReload() throws(BackupError) -> PreparedReload? { nil }

    /// What the server serves, once it does.
    private func served() async -> Served {
        await withCheckedContinuation { continuation in
            let served = state.withLock { state in
                if state.served == nil { state.waiting.append(continuation) }
                return state.served
            }
            if let served { continuation.resume(returning: served) }
        }
    }

    /// Opens a connection for as long as `body` runs. `body` gets the frames
    /// the server sends and a function that sends frames to it; sending
    /// waits while the connection has stopped reading (back-pressure).
    public func withConnection<T: Sendable>(
        _ body: (AsyncThrowingStream<Frame, any Error>, @escaping @Sendable ([Frame]) async throws -> Void) async throws -> T
    ) async throws -> T {
        let served = await served()
        let (toServer, toServerContinuation) = AsyncThrowingStream<ReceivedFrame, any Error>.makeStream()
        let (toClient, toClientContinuation) = AsyncThrowingStream<Frame, any Error>.makeStream()
        let governor = InProcessGovernor(settings: served.settings) { toServerContinuation.finish() }
        let send: @Sendable ([Frame]) async throws -> Void = { frames in
            for frame in frames {
                var bytes = ByteBuffer()
                FrameEncoder().encode(data: frame, out: &bytes)
                try await governor.received(bytes)
                toServerContinuation.yield(ReceivedFrame(frame: frame, charge: bytes.readableBytes))
            }
        }
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                await served.connection.serve(toServer, write: { toClientContinuation.yield($0) }, governor: governor, origin: .inProcess)
                toClientContinuation.finish()
            }
            // However `body` ends, the client's side closes, so the connection ends and the group with it.
            defer {
                toServerContinuation.finish()
                governor.close()
            }
            return try await body(toClient, send)
        }
    }
}

/// Runs a connection's state machine for the in-process transport: call
/// decisions and receive accounting as on a socket, with sending held back
/// while the machine has stopped reading, and no timers.
private final class InProcessGovernor: ConnectionGovernor {
    private struct State {
        var machine: ConnectionStateMachine
        var waitingToSend: [CheckedContinuation<Void, any Error>] = []
        var closed = false
    }

    private let state: Mutex<State>
    private let onClose: @Sendable () -> Void

    init(settings: ConnectionStateMachine.Settings, onClose: @escaping @Sendable () -> Void) {
        var machine = ConnectionStateMachine(settings: settings)
        _ = machine.accepted()
        _ = machine.handshakeCompleted()
        self.state = Mutex(State(machine: machine))
        self.onClose = onClose
    }

    /// Accounts for a frame the client sends, once the connection reads again.
    func received(_ bytes: ByteBuffer) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let ready: Result<Void, any Error>? = state.withLock { state in
                if state.closed { return .failure(RPCError(.unavailable, "the connection is closed")) }
                guard state.machine.isReading else {
                    state.waitingToSend.append(continuation)
                    return nil
                }
                return .success(())
            }
            if let ready { continuation.resume(with: ready) }
        }
        handle { $0.received(bytes) }
    }

    func callStarted(_ id: UInt32) async -> ConnectionStateMachine.CallDecision {
        var decision = ConnectionStateMachine.CallDecision.accept
        handle { machine in
            let (decided, actions) = machine.callStarted(id)
            decision = decided
            return actions
        }
        return decision
    }

    func callEnded(_ id: UInt32) { handle { $0.callEnded(id) } }
    func callAuthenticated() { handle { $0.callAuthenticated() } }
    func writing(_ bytes: Int) { handle { $0.writing(bytes) } }
    func wrote(_ bytes: Int) { handle { $0.wrote(bytes) } }
    func statusWritten() { handle { $0.statusWritten() } }
    func consumed(_ bytes: Int) { handle { $0.consumed(bytes) } }
    func gracefulShutdown() { handle { $0.gracefulShutdown() } }

    func close() {
        let waiting = state.withLock { state in
            state.closed = true
            defer { state.waitingToSend.removeAll() }
            return state.waitingToSend
        }
        waiting.forEach { $0.resume(throwing: RPCError(.unavailable, "the connection is closed")) }
    }

    private func handle(_ event: (inout ConnectionStateMachine) -> [ConnectionStateMachine.Action]) {
        var toWake: [CheckedContinuation<Void, any Error>] = []
        var closing = false
        state.withLock { state in
            var pending = event(&state.machine)
            while !pending.isEmpty {
                let action = pending.removeFirst()
                switch action {
                case .borrow(let bytes):
                    // No shared pool in process: the client is the test itself.
                    pending += state.machine.lent(bytes)
                case .resumeReading:
                    toWake += state.waitingToSend
                    state.waitingToSend.removeAll()
                case .close:
                    closing = true
                case .arm, .cancel, .pauseReading, .giveBack, .authenticated:
                    break
                }
            }
        }
        toWake.forEach { $0.resume() }
        if closing { onClose() }
    }
}
