import NIOCore

/// Runs one connection's `ConnectionStateMachine` against its channel. Every
/// event reaches the machine on the channel's event loop, in order, and
/// every action is carried out there: timers, the shared receive pool,
/// reading resumed, the channel closed.
final class ConnectionController: ConnectionGovernor {
    private typealias Machine = ConnectionStateMachine

    private let channel: any Channel
    private let pool: ReceivePool
    private let peer: String
    private let onAuthenticated: @Sendable () -> Void
    private let machine: NIOLoopBoundBox<Machine>
    private let timers: NIOLoopBoundBox<[Machine.Timer: Scheduled<Void>]>
    /// Call starts waiting for the client to take the server's answers.
    private let heldStarts: NIOLoopBoundBox<[(UInt32, CheckedContinuation<Machine.CallDecision, Never>)]>

    /// Call on the channel's event loop, as it is set up.
    /// `onAuthenticated` hears when the connection first makes a call that authenticates.
    init(channel: any Channel, settings: ConnectionStateMachine.Settings, pool: ReceivePool, peer: String,
         onAuthenticated: @escaping @Sendable () -> Void = {}) {
        self.channel = channel
        self.pool = pool
        self.peer = peer
        self.onAuthenticated = onAuthenticated
        self.machine = NIOLoopBoundBox(Machine(settings: settings), eventLoop: channel.eventLoop)
        self.timers = NIOLoopBoundBox([:], eventLoop: channel.eventLoop)
        self.heldStarts = NIOLoopBoundBox([], eventLoop: channel.eventLoop)
        handle { $0.accepted() }
        channel.closeFuture.whenComplete { _ in
            self.handle { $0.closed() }
            self.pool.forget(ObjectIdentifier(self))
        }
    }

    /// Whether the connection reads from its socket now; on the event loop.
    var isReading: Bool { machine.value.isReading }

    /// Bytes arrived from the client, before framing; on the event loop.
    func received(_ bytes: ByteBuffer) {
        handle { $0.received(bytes) }
    }

    func handshakeCompleted() {
        onLoop { $0.handshakeCompleted() }
    }

    /// Decides on a call's start; while the client is not taking the
    /// server's answers the start waits, so frames already read cannot pile
    /// up refusals it will not read either.
    func callStarted(_ id: UInt32) async -> ConnectionStateMachine.CallDecision {
        await withCheckedContinuation { decided in
            channel.eventLoop.execute {
                self.heldStarts.value.append((id, decided))
                self.startHeldCalls()
            }
        }
    }

    /// Decides the held starts, in order, as far as the client takes answers; on the event loop.
    private func startHeldCalls() {
        while let (id, decided) = heldStarts.value.first,
              machine.value.clientTakesAnswers || machine.value.phase == .closed {
            heldStarts.value.removeFirst()
            let (decision, actions) = machine.value.callStarted(id)
            perform(actions)
            decided.resume(returning: decision)
        }
    }

    /// The connection now speaks HTTP; its timers and borrowed bytes go.
    func handedOver() {
        onLoop { $0.handedOver() }
    }

    func callEnded(_ id: UInt32) {
        onLoop { $0.callEnded(id) }
    }

    func statusWritten() {
        onLoop { $0.statusWritten() }
    }

    func callAuthenticated() {
        onLoop { $0.callAuthenticated() }
    }

    func writing(_ bytes: Int) {
        onLoop { $0.writing(bytes) }
    }

    func wrote(_ bytes: Int) {
        onLoop { $0.wrote(bytes) }
    }

    func consumed(_ bytes: Int) {
        onLoop { $0.consumed(bytes) }
    }

    func gracefulShutdown() {
        onLoop { $0.gracefulShutdown() }
    }

    private func onLoop(_ event: @escaping @Sendable (inout Machine) -> [Machine.Action]) {
        channel.eventLoop.execute { self.handle(event) }
    }

    private func handle(_ event: (inout Machine) -> [Machine.Action]) {
        perform(event(&machine.value))
        if !heldStarts.value.isEmpty { startHeldCalls() }
    }

    private func perform(_ actions: [Machine.Action]) {
        for action in actions {
            switch action {
            case .arm(let timer, let duration):
                let scheduled = channel.eventLoop.scheduleTask(in: TimeAmount(duration)) {
                    self.handle { $0.timerFired(timer) }
                }
                timers.value.updateValue(scheduled, forKey: timer)?.cancel()
            case .cancel(let timer):
                timers.value.removeValue(forKey: timer)?.cancel()
            case .pauseReading:
                break  // ReceiveGate withholds the next read
            case .resumeReading:
                channel.read()
            case .borrow(let bytes):
                let granted = pool.borrow(bytes, peer: peer, borrower: ObjectIdentifier(self)) {
                    self.onLoop { $0.poolFreed() }
                }
                if granted { handle { $0.lent(bytes) } }
            case .giveBack(let bytes):
                pool.giveBack(bytes, peer: peer)
            case .authenticated:
                onAuthenticated()
            case .close:
                channel.close(promise: nil)
            }
        }
    }
}

/// Sits in the pipeline just above TLS: tells the controller of every byte
/// that arrives and withholds reads from the socket while the controller
/// has stopped reading, so a client's frames wait in TCP, not in memory.
final class ReceiveGate: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = Any
    typealias OutboundOut = Any

    private let controller: ConnectionController

    init(controller: ConnectionController) {
        self.controller = controller
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        controller.received(unwrapInboundIn(data))
        context.fireChannelRead(data)
    }

    func read(context: ChannelHandlerContext) {
        if controller.isReading { context.read() }
    }
}
