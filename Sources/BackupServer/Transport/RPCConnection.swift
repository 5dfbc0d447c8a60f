import BackupWire
import Logging
import NIOConcurrencyHelpers
import NIOCore
import ServiceLifecycle

/// Serves the RPC protocol on one connection: demultiplexes frames into
/// calls by call_id, runs each call as a child task, and writes its
/// responses and final status. Frames of different calls interleave. What
/// a connection may do (open calls, time, memory) is its
/// `ConnectionController`'s to decide.
///
/// Ends the connection on an oversized or undecodable frame, a call using
/// call_id 0 or an id already open: every open call first ends with its own
/// single status (CANCELLED), then the connection-level status goes out on
/// call_id 0 as the connection's last frame. On graceful shutdown it refuses
/// new calls with UNAVAILABLE and closes once the open ones have ended.
struct RPCConnection {
    let dispatcher: RPCDispatcher
    let logger: Logger

    /// The client's half of an open call.
    private struct OpenCall {
        let requests: CallRequests.Continuation
        /// Yields why the call is cancelled, as its CANCELLED status says.
        let cancel: AsyncStream<String>.Continuation
    }

    private typealias Calls = NIOLockedValueBox<[UInt32: OpenCall]>

    /// Serves a TLS connection until it closes. Frames go out through the
    /// channel itself, not an async writer: one counts as written once it is
    /// in the socket, not when NIO has taken it, so the controller sees a
    /// client that takes nothing.
    func run(_ channel: NIOAsyncChannel<ReceivedFrame, Never>, controller: ConnectionController, origin: CallOrigin) async {
        do {
            try await channel.executeThenClose { inbound, _ in
                let underlying = channel.channel
                await serve(inbound, write: { try await underlying.writeAndFlush($0).get() }, governor: controller, origin: origin)
            }
        } catch {
            logger.debug("connection closed with error", metadata: ["error": "\(error)"])
        }
    }

    /// Serves a connection over any carrier of frames: `inbound` is what the
    /// client sends, `write` sends it a frame, awaiting back-pressure;
    /// `origin` is where its calls come from.
    func serve<Inbound: AsyncSequence<ReceivedFrame, any Error>>(
        _ inbound: Inbound, write send: @escaping @Sendable (Frame) async throws -> Void, governor: some ConnectionGovernor,
        origin: CallOrigin
    ) async {
        let calls = Calls([:])
        // What waits to be written counts against the connection: a client that does not read stops being read.
        let write: @Sendable (Frame) async throws -> Void = { frame in
            let bytes = frame.outboundCharge
            governor.writing(bytes)
            defer { governor.wrote(bytes) }
            do {
                try await send(frame)
            } catch {
                // The client is gone: its calls end CANCELLED, not INTERNAL, and nothing is logged as an error.
                throw RPCError(.cancelled, "the connection closed while the call was answering")
            }
        }
        let violation: RPCError? = await withGracefulShutdownHandler {
            await withDiscardingTaskGroup(returning: RPCError?.self) { group in
                var violation: RPCError?
                do {
                    for try await received in inbound {
                        try await accept(received, calls: calls, governor: governor, origin: origin, group: &group, write: write)
                    }
                } catch let error as FrameError {
                    violation = error.rpcError
                } catch let error as RPCError {
                    violation = error
                } catch {
                    logger.debug("connection ended", metadata: ["error": "\(error)"])
                }
                // The client is gone or broke the protocol: end its calls, each with its one status saying which.
                let reason = violation.map { "the connection is being closed because the client broke the protocol: \($0.message)" }
                    ?? "the connection closed"
                for call in calls.withLockedValue({ Array($0.values) }) {
                    // A handler reading its requests hears the same reason as the call's cancellation says.
                    call.cancel.yield(reason)
                    call.requests.finish(throwing: RPCError(.cancelled, reason))
                }
                return violation
            }
        } onGracefulShutdown: {
            governor.gracefulShutdown()
        }
        // Every call has its status by now: the connection's own comes last.
        if let violation {
            logger.info("closing connection", metadata: ["reason": "\(violation)"])
            try? await write(Frame(callID: 0, .status(CallStatus(violation))))
        }
    }

    private func accept(
        _ received: ReceivedFrame, calls: Calls, governor: some ConnectionGovernor, origin: CallOrigin, group: inout DiscardingTaskGroup,
        write: @escaping @Sendable (Frame) async throws -> Void
    ) async throws {
        let id = received.frame.callID
        switch received.frame.kind {
        case .start(let start):
            governor.consumed(received.charge)
            switch await governor.callStarted(id) {
            case .violation(let error):
                throw error
            case .refuse(let refusal):
                group.addTask {
                    try? await write(Frame(callID: id, .status(CallStatus(refusal))))
                    governor.statusWritten()
                }
            case .accept:
                let (requests, requestContinuation) = CallRequests.makeStream(onTaken: governor.consumed)
                let (cancelled, cancelContinuation) = AsyncStream<String>.makeStream()
                calls.withLockedValue { $0[id] = OpenCall(requests: requestContinuation, cancel: cancelContinuation) }
                group.addTask {
                    let status = await dispatcher.handle(start, requests: requests, cancelled: cancelled, origin: origin,
                                                         authenticated: governor.callAuthenticated) { bytes in
                        try await write(Frame(callID: id, .message(bytes)))
                    }
                    calls.withLockedValue { $0.removeValue(forKey: id) }?.requests.end()
                    governor.callEnded(id)
                    try? await write(Frame(callID: id, .status(status)))
                    governor.statusWritten()
                }
            }
        case .message(let bytes):
            if let call = calls.withLockedValue({ $0[id] }) {
                call.requests.yield(bytes, charge: received.charge)
            } else {
                governor.consumed(received.charge)
            }
        case .halfClose:
            governor.consumed(received.charge)
            calls.withLockedValue { $0[id] }?.requests.finish()
        case .cancel:
            governor.consumed(received.charge)
            calls.withLockedValue { $0[id] }?.cancel.yield("the client cancelled the call")
        case .status, nil:
            throw RPCError(.invalidArgument, "a client sends start, message, half_close or cancel frames; call_id \(id) sent another kind")
        }
    }
}

/// What a connection asks of whatever governs it (its state machine, on a
/// socket or in process): whether a call may open, and what has become of
/// the calls and of the bytes received.
protocol ConnectionGovernor: Sendable {
    func callStarted(_ id: UInt32) async -> ConnectionStateMachine.CallDecision
    func callEnded(_ id: UInt32)
    func statusWritten()
    /// One of the connection's calls got past authentication.
    func callAuthenticated()
    /// A response of `bytes` is being written; `wrote` follows once it is out.
    func writing(_ bytes: Int)
    func wrote(_ bytes: Int)
    /// A call took a frame of `bytes` (as charged when its length arrived), or the connection discarded it.
    func consumed(_ bytes: Int)
    func gracefulShutdown()
}

extension Frame {
    /// What a frame being written is counted as: its message, or a little for any other kind.
    var outboundCharge: Int {
        if case .message(let bytes) = kind { bytes.count + 16 } else { 64 }
    }
}

/// A frame as received, with the bytes it was charged when its length
/// arrived (its length field and body), which go back once it is consumed.
struct ReceivedFrame: Sendable {
    let frame: Frame
    let charge: Int
}

/// `FrameDecoder`, reporting what each frame took of the stream.
struct ReceivedFrameDecoder: NIOSingleStepByteToMessageDecoder {
    var frames: FrameDecoder

    mutating func decode(buffer: inout ByteBuffer) throws -> ReceivedFrame? {
        let before = buffer.readableBytes
        return try frames.decode(buffer: &buffer).map { ReceivedFrame(frame: $0, charge: before - buffer.readableBytes) }
    }

    mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> ReceivedFrame? {
        try decode(buffer: &buffer)
    }
}
